"""The ``wordnet_relax`` method: crossmodal KD with WordNet-relaxed CLIP text (arXiv 2503.24017).

Stages (each checkpointed and resumable by the engine):

* ``teacher.<augment>`` — the unimodal teachers T_m (default: a strong- and a weak-augmentation
  image classifier);
* ``baseline`` — the student trained without distillation (``baseline.enabled``);
* ``multimodal`` — T_x on ``[CLIP image embedding || text embedding]``, the text being the soft
  retrieval over the relaxed WordNet nouns for a share ``relax.ratio`` of the training samples
  and the exact class name for the others (label leakage);
* ``student`` — image-only, ``alpha * CE + (1 - alpha) * KD`` towards the teachers combined by
  ``distill.combine`` (default: the average of the teachers' logits).

With ``relax.sweep: [r1, r2, ...]`` the T_m teachers and the baseline are trained once and
``multimodal.r<r>`` / ``student.r<r>`` once per ratio; ``sweep.csv``, ``sweep.md`` and
``sweep.png`` (the paper's Figure 2) are written to the run directory.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
from pathlib import Path

import kdkit  # kdkit.atomic_write_text is looked up when called: it imports torch
from kdkit import ConfigError, DataError, KdkitError
from kdkit.distill import LogitsTeacher, StudentStage

from kdkit_wordnet_relax.config import LAMBDA_PRESETS, default_config
RELAXER_KEYS_METHOD = ("relaxer", "ratio", "tau", "sweep", "cache", "cache_dir")


# --- small helpers ------------------------------------------------------------------------------

def _unwrap(dataset):
    """``(base dataset, indices into it or None)`` through nested ``Subset`` wrappers."""
    indices = None
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        idx = list(dataset.indices)
        indices = idx if indices is None else [idx[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _targets(dataset):
    import torch

    base, idx = _unwrap(dataset)
    targets = getattr(base, "targets", None)
    if targets is None:
        targets = [int(base[i][1]) for i in range(len(base))]
    t = torch.as_tensor(list(targets), dtype=torch.long)
    return t if idx is None else t[torch.as_tensor(idx, dtype=torch.long)]


def relax_mask(n: int, ratio: float, seed: int, tag: str):
    """Boolean mask of the ``round(ratio * n)`` samples that get relaxed text (seeded choice).

    The permutation depends only on ``(seed, tag, n)``, so the relaxed sets of increasing
    ratios are nested.
    """
    import torch
    from kdkit import derive_seed

    k = int(round(float(ratio) * n))
    g = torch.Generator().manual_seed(derive_seed(seed, "relax-mask", tag, n) % (2 ** 63))
    perm = torch.randperm(n, generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[:k]] = True
    return mask


def entropy(logits):
    """Mean entropy (nats) of ``softmax(logits)``."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean().item()) if logits.numel() else float("nan")


def image_eval(model, loader) -> dict:
    """``{"top1", "loss", "entropy"}`` of an image classifier over ``loader`` (the engine's
    classification evaluation with the softmax entropy the paper reports)."""
    from kdkit import classification_eval

    return classification_eval(model, loader, entropy=True)


def _content_key(dataset) -> dict:
    """What identifies a dataset's images cheaply (a digest of in-memory images or file paths)."""
    from kdkit_wordnet_relax.paths import digest, tensor_digest

    import torch

    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return {"images": tensor_digest(images)}
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples:
        return {"samples": digest([str(s[0]) if isinstance(s, (tuple, list)) else str(s) for s in samples])}
    return {}


def clip_image_embeddings(encoder, dataset, data_key: dict, cache_dir: Path | None, log) -> "object":
    """L2-normalised CLIP embeddings of every image of ``dataset`` (a base dataset, no Subset),
    un-augmented, cached on disk under a key of the CLIP identity and the data."""
    import torch
    from kdkit_wordnet_relax.paths import digest, load_keyed, save_keyed

    n = len(dataset)
    key = {"kind": "image-embeddings", "v": 1, "clip": encoder.identity, "data": data_key, "n": n,
           "content": _content_key(dataset)}
    path = Path(cache_dir) / f"images-{digest(key)}.pt" if cache_dir is not None else None
    if path is not None:
        cached = load_keyed(path, key)
        if cached is not None:
            log(f"wordnet_relax: CLIP image embeddings of {n} {data_key.get('split')} images from cache")
            return cached
    stored = getattr(dataset, "images", None)
    if isinstance(stored, torch.Tensor) and stored.dtype == torch.uint8 and stored.dim() == 4:
        # the stored images at their native size: CLIP's preprocessing resizes them once, and a
        # resized copy of the whole set (e.g. CIFAR at 224 px: 7.5 GB) is never materialised
        fetch = lambda a, b: stored[a:b]  # noqa: E731
    elif hasattr(dataset, "get_uint8"):
        fetch = lambda a, b: torch.stack([dataset.get_uint8(i) for i in range(a, b)])  # noqa: E731
    else:
        raise DataError(f"dataset {type(dataset).__name__} has no get_uint8(i): wordnet_relax needs the "
                        f"un-normalised images for CLIP (kdkit's datasets provide it)")
    log(f"wordnet_relax: encoding {n} {data_key.get('split')} images with CLIP {encoder.info.model} "
        f"at {encoder.info.image_size} px")
    bs = max(1, encoder.batch_size)
    out = []
    report = max(bs, (n // 10) // bs * bs)
    for start in range(0, n, bs):
        out.append(encoder.encode_images(fetch(start, min(n, start + bs))).cpu())
        if n > 20000 and (start + bs) % report < bs:
            log(f"wordnet_relax:   {min(n, start + bs)}/{n} images")
    emb = torch.cat(out) if out else torch.zeros(0, encoder.embed_dim)
    if path is not None:
        save_keyed(path, key, emb)
    return emb


class _Embeddings:
    """CLIP embeddings of the train and test splits, looked up for any (Subset of a) split."""

    def __init__(self, train, test):
        self.tables = {"train": train, "test": test}

    def of(self, dataset):
        import torch

        base, idx = _unwrap(dataset)
        split = getattr(base, "split", None)
        if split not in self.tables:
            raise KdkitError(f"cannot tell which split {type(base).__name__} is (no 'split' attribute)")
        table = self.tables[split]
        return table if idx is None else table[torch.as_tensor(idx, dtype=torch.long)]


# --- the method ---------------------------------------------------------------------------------

class WordNetRelaxMethod(kdkit.Method):
    """Crossmodal KD with WordNet-relaxed text embeddings (see the module docstring)."""

    component_sections: dict = {}

    @classmethod
    def default_config(cls) -> dict:
        return default_config()

    # --- checks -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: dict, registry=None) -> None:
        """Rules beyond the declared keys, checked when the config is resolved (before a run directory exists)."""
        relax, dist = config["relax"], config["distill"]
        sweep = relax["sweep"]
        if len(set(sweep)) != len(sweep):
            raise ConfigError(f"config key relax.sweep: duplicate ratios in {sweep}")
        if not config["teachers"] and not dist["use_multimodal"]:
            raise ConfigError("config: no teacher (teachers is empty and distill.use_multimodal is false)")
        StudentStage.check_config(config, cls.default_config()["distill"], registry,
                                  extra_teachers=int(bool(dist["use_multimodal"])))
        if relax["pool"] == "file" and not relax["pool_file"]:
            raise ConfigError("config key relax.pool=file needs relax.pool_file (a file with one noun per line)")
        if registry is not None:  # names used after the teachers trained: checked now
            registry("text_relaxers").get(relax["relaxer"])
            backbone, teachers = config["tx"]["backbone"], registry("teachers")
            if backbone != "mlp" and backbone not in teachers:
                raise ConfigError(f"config key tx.backbone: unknown backbone {backbone!r}; valid choices: mlp, "
                                  f"{', '.join(teachers.names())}")

    @staticmethod
    def ratios(cfg: dict) -> list[float]:
        """The relaxation ratios to train at: ``relax.sweep``, or ``[relax.ratio]``."""
        return [float(r) for r in cfg["relax"]["sweep"]] or [float(cfg["relax"]["ratio"])]

    @staticmethod
    def lambdas(tx: dict) -> tuple[float, float]:
        lh, lc = LAMBDA_PRESETS[tx["preset"]]
        if tx["lambda_hier"] is not None:
            lh = float(tx["lambda_hier"])
        if tx["lambda_cosreg"] is not None:
            lc = float(tx["lambda_cosreg"])
        return lh, lc

    @staticmethod
    def cache_dir(cfg: dict) -> Path | None:
        from kdkit_wordnet_relax.paths import cache_root

        relax = cfg["relax"]
        if not relax["cache"]:
            return None
        if not relax["cache_dir"]:  # null (or empty): the default cache root
            return cache_root() / "wordnet_relax"
        return Path(os.path.expanduser(relax["cache_dir"]))  # Path.expanduser raises for an unknown ~user

    # --- data -------------------------------------------------------------------------------
    def _splits(self, ctx, augment: str | None, test):
        """``(train, val)`` of the training split with ``augment``, split like the engine does."""
        overrides = {} if augment is None else {"augment": augment}
        return ctx.selection_splits(ctx.build_dataset(None, "train", **overrides), test)

    # --- stages -----------------------------------------------------------------------------
    @staticmethod
    def teacher_stage_names(teachers: list[dict]) -> list[str]:
        tags = [str(t["augment"]) for t in teachers]
        names = []
        for i, (t, tag) in enumerate(zip(teachers, tags)):
            names.append(f"teacher.{tag}" if tags.count(tag) == 1 else f"teacher.{tag}.{i}")
        return names

    @staticmethod
    def teacher_model_options(tcfg: dict) -> dict:
        """A T_m teacher's section for its factory: its config without ``augment`` (and without an unset
        ``pretrained``)."""
        return {k: v for k, v in tcfg.items() if k != "augment" and not (k == "pretrained" and v is None)}

    def student_stage(self, ctx) -> StudentStage:
        """The run's student stage: the T_m teachers of ``teachers``, then T_x (``distill.use_multimodal``)."""
        cfg = ctx.config
        return StudentStage(ctx, self.default_config()["distill"], self.teacher_stage_names(cfg["teachers"]),
                            model_options=self.teacher_model_options,
                            extra_teachers=int(bool(cfg["distill"]["use_multimodal"])))

    def train_unimodal_teachers(self, ctx, test, num_classes, stage: StudentStage | None = None):
        """T_m: each teacher trained on its own augmentation of the training split (or loaded)."""
        cfg = ctx.config
        stage = stage if stage is not None else self.student_stage(ctx)
        trained = stage.train_teachers(num_classes, test,
                                       data=lambda tcfg: self._splits(ctx, tcfg["augment"], test), eval_fn=image_eval)
        models, summary = [], {}
        for tcfg, sname, (model, r) in zip(cfg["teachers"], stage.teacher_names, trained):
            key = "unimodal_" + sname.split(".", 1)[1].replace(".", "_")
            if r["stage"]:
                summary[key] = {"top1": r.get("top1"), "val_top1": r["val_top1"], "entropy": r.get("entropy"),
                                "best_epoch": r["best_epoch"], "name": tcfg["name"], "augment": tcfg["augment"],
                                "stage": sname}
            else:
                summary[key] = {"top1": r["top1"], "entropy": r["entropy"], "name": tcfg["name"],
                                "pretrained": tcfg["pretrained"], "stage": None}
            models.append(model)
        return models, summary

    def build_tx_model(self, ctx, embed_dim: int, num_classes: int, stage_name: str):
        from kdkit import derive_seed, seed_everything

        from kdkit_wordnet_relax.models import MLPHead, MultimodalTeacher

        tx = ctx.config["tx"]
        if tx["backbone"] == "mlp":
            seed_everything(derive_seed(ctx.seed, "init", "multimodal", stage_name))
            head = MLPHead(2 * embed_dim, num_classes, int(tx["hidden"]), float(tx["dropout"]),
                           input_norm=bool(tx["input_norm"]))
            return MultimodalTeacher(head, spatial=False)
        section = {**tx["backbone_options"], "name": tx["backbone"], "in_channels": 2 * embed_dim}
        backbone = ctx.build_model("teachers", section, num_classes, seed_tag=stage_name)
        return MultimodalTeacher(backbone, spatial=True)

    def train_multimodal(self, ctx, ratio, stage_name, vocab, class_emb, emb, data, num_classes):
        """Train T_x at ``ratio``; returns ``(model, bank, summary)`` (both frozen)."""
        import torch
        import torch.nn.functional as F
        from kdkit import Stage, freeze, to_device
        from torch.utils.data import TensorDataset

        from kdkit_wordnet_relax.models import NounBank

        cfg = ctx.config
        tx, relax = cfg["tx"], cfg["relax"]
        tau = float(relax["tau"])
        lh, lc = self.lambdas(tx)
        train, val, test = data
        seed = ctx.seed

        def tensors(ds, tag):
            if ds is None:
                return None
            v = emb.of(ds)
            y = _targets(ds)
            return TensorDataset(v, y, relax_mask(len(y), ratio, seed, tag))

        train_t, val_t, test_t = tensors(train, "train"), tensors(val, "val"), tensors(test, "test")
        model = self.build_tx_model(ctx, class_emb.shape[1], num_classes, stage_name)
        bank = NounBank(vocab.embeddings, class_emb, mode=tx["embedding"], seed=seed)

        def step_fn(m, batch):
            v, y, mask = batch
            t = bank.text_for(v, y, mask, tau)
            logits = m(v, t)
            ce = F.cross_entropy(logits, y)
            hier = (1.0 - F.cosine_similarity(bank.class_emb[y], t, dim=-1)).mean()
            logs = {"ce": ce.detach(), "hier": hier.detach()}
            loss = ce
            if bank.learnable:
                reg = bank.cosreg()
                loss = ce + lh * hier + lc * reg
                logs["cosreg"] = reg.detach()
            return loss, logs

        def eval_fn(m, loader):
            device = bank.class_emb.device
            n = correct = correct_rel = correct_exact = 0
            loss_sum = ent = ent_rel = 0.0
            for batch in loader:
                v, y, mask = to_device(batch, device)
                proto = m(v, bank.text_for(v, y, mask, tau)).float()
                rel = m(v, bank.retrieve(v, tau)).float()
                exact = m(v, bank.class_emb[y]).float()
                loss_sum += F.cross_entropy(proto, y, reduction="sum").item()
                lp, lr_ = torch.log_softmax(proto, -1), torch.log_softmax(rel, -1)
                ent += float(-(lp.exp() * lp).sum().item())
                ent_rel += float(-(lr_.exp() * lr_).sum().item())
                correct += (proto.argmax(1) == y).sum().item()
                correct_rel += (rel.argmax(1) == y).sum().item()
                correct_exact += (exact.argmax(1) == y).sum().item()
                n += y.numel()
            n = max(n, 1)
            return {"top1": 100.0 * correct / n, "top1_relaxed": 100.0 * correct_rel / n,
                    "top1_exact": 100.0 * correct_exact / n, "loss": loss_sum / n, "entropy": ent / n,
                    "entropy_relaxed": ent_rel / n}

        def param_groups(m, extra):
            groups = [{"params": [p for p in m.parameters() if p.requires_grad]}]
            if bank.learnable:
                g = {"params": [bank.nouns], "weight_decay": float(tx["noun_weight_decay"])}
                if tx["noun_lr"] is not None:
                    g["lr"] = float(tx["noun_lr"])
                groups.append(g)
            return groups

        ctx.log(f"wordnet_relax: T_x ({tx['backbone']}, embedding {tx['embedding']}) at relax.ratio={ratio:g}: "
                f"{int(train_t.tensors[2].sum())}/{len(train_t)} training samples get relaxed text; "
                f"lambda_hier={lh:g}, lambda_cosreg={lc:g}")
        res = ctx.fit(Stage(name=stage_name, model=model, train_data=train_t, val_data=val_t, test_data=test_t,
                            step_fn=step_fn, eval_fn=eval_fn, optimizer=tx["train"],
                            extra_modules={"nouns": bank}, param_groups=param_groups,
                            after_step_fn=lambda trainer, step: bank.renormalize()))
        freeze(model)
        freeze(bank)
        tm = res.test_metrics
        summary = {"top1": tm.get("top1"), "top1_relaxed": tm.get("top1_relaxed"), "top1_exact": tm.get("top1_exact"),
                   "entropy_test": tm.get("entropy"), "val_top1": res.best_metrics.get("top1"),
                   "val_top1_relaxed": res.best_metrics.get("top1_relaxed"),
                   "best_epoch": res.best_epoch, "backbone": tx["backbone"], "embedding": tx["embedding"],
                   "lambda_hier": lh, "lambda_cosreg": lc, "ratio": ratio, "stage": stage_name,
                   "relaxed_train_samples": int(train_t.tensors[2].sum()), "train_samples": len(train_t)}
        if bank.learnable:
            with torch.no_grad():
                drift = (1.0 - F.cosine_similarity(bank.nouns.float(), bank.anchor, dim=-1)).mean().item()
            summary["noun_drift"] = drift
        return model, bank, summary

    def tx_table(self, ctx, model, bank, v_train, y_train, mask_train):
        """T_x logits for every training sample, with the text used at distillation."""
        import torch

        tau = float(ctx.config["relax"]["tau"])
        protocol = ctx.config["distill"]["tx_text"] == "protocol"
        out = []
        device = bank.class_emb.device
        with torch.no_grad():
            for s in range(0, len(v_train), 1024):
                v = v_train[s:s + 1024].to(device)
                y = y_train[s:s + 1024].to(device)
                m = mask_train[s:s + 1024].to(device)
                t = bank.text_for(v, y, m, tau) if protocol else bank.retrieve(v, tau)
                out.append(model(v, t).float())
        return torch.cat(out)

    def train_student(self, ctx, stage_name, train, val, test, tm_models, tx_parts, num_classes, encoder,
                      to_pixels, teacher_references: dict, stage: StudentStage | None = None):
        """The image-only student, distilled from the T_m teachers and T_x by the student stage;
        ``to_pixels`` maps a training batch back to ``[0, 1]`` images for CLIP (``tx_clip: online``);
        ``teacher_references``: name -> held-out top-1 of every teacher (T_m in order, then T_x) for
        the teacher-agreement check."""
        cfg = ctx.config
        stage = stage if stage is not None else self.student_stage(ctx)
        teachers = list(tm_models)
        if tx_parts is not None:
            teachers.append(self.tx_teacher(ctx, tx_parts, encoder, to_pixels))
        # the T_m teachers run on the student's batches (never cached); T_x has no image feature maps,
        # so feature terms tap T_m teachers only
        st = stage.distil(num_classes, teachers, train, val, test, references=teacher_references, name=stage_name,
                          eval_fn=image_eval, cache=False, seed_tag=stage_name)
        return {**st.summary, "name": cfg["student"]["name"], "stage": stage_name,
                "teacher_weights": st.teacher_weights, "terms": st.terms, "teacher_agreement": st.agreement}

    def tx_teacher(self, ctx, tx_parts, encoder, to_pixels) -> LogitsTeacher:
        """T_x as the student stage sees it: on a training batch, its row of the logit table (``tx_clip:
        cached``) or CLIP run on the batch's images (``online``), with the text of ``distill.tx_text``;
        on the held-out split, the validation images' CLIP embeddings with retrieved text."""
        dist = ctx.config["distill"]
        tau = float(ctx.config["relax"]["tau"])
        online = dist["tx_clip"] == "online"
        protocol = dist["tx_text"] == "protocol"
        tx_model, bank, table, mask_train, v_val = tx_parts
        table = table.to(ctx.device)
        mask_train = mask_train.to(ctx.device)

        def logits(x, y, idx):
            if not online:
                return table[idx]
            v = encoder.encode_images(to_pixels(x)).to(bank.class_emb.device)
            t = bank.text_for(v, y, mask_train[idx], tau) if protocol else bank.retrieve(v, tau)
            return tx_model(v, t).float()

        def validation_logits(x, y, start):  # the validation images' CLIP embeddings, in the same order
            v = v_val[start:start + len(y)].to(ctx.device)
            return tx_model(v, bank.retrieve(v, tau))

        return LogitsTeacher(logits, validation_logits)

    # --- run --------------------------------------------------------------------------------
    def run(self, ctx) -> dict:
        from kdkit import build_clip

        from kdkit_wordnet_relax.relaxer import TEMPLATES

        cfg = ctx.config
        ratios = self.ratios(cfg)
        stage = self.student_stage(ctx)  # the objective is built (and checked) before anything trains
        relax = cfg["relax"]
        sweep = bool(relax["sweep"])
        templates = list(relax["templates"] or TEMPLATES)  # null: the authors' templates

        # data: the student's view defines the splits and the class names
        train, val, test, classes = ctx.classification_data()
        if not classes:
            raise DataError(f"dataset {cfg['data']['name']!r} exposes no class names ('classes'); "
                            f"wordnet_relax needs them for the text side")
        classes = [str(c).replace("_", " ") for c in classes]
        num_classes = len(classes)
        stage.check_taps(num_classes)  # wrong module paths: fail before training
        ctx.log(f"wordnet_relax: {cfg['data']['name']} with {num_classes} classes; train {len(train)}, "
                f"val {len(val) if val is not None else 0}, test {len(test)}; ratio(s) "
                f"{', '.join(f'{r:g}' for r in ratios)}")

        # CLIP: image embeddings (cached), exact class-name embeddings
        cache_dir = self.cache_dir(cfg)
        clip_device = cfg["clip"]["device"] or str(ctx.device)  # null: the run's device
        encoder = build_clip(cfg["clip"], device=clip_device, log_fn=ctx.log)
        data_key = {k: v for k, v in cfg["data"].items() if k not in ("augment", "num_workers", "val_fraction")}
        train_base, _ = _unwrap(train)
        test_base, _ = _unwrap(test)
        v_train_full = clip_image_embeddings(encoder, train_base, {**data_key, "split": "train"}, cache_dir, ctx.log)
        v_test = clip_image_embeddings(encoder, test_base, {**data_key, "split": "test"}, cache_dir, ctx.log)
        emb = _Embeddings(v_train_full, v_test)
        class_emb = encoder.encode_words(classes, templates)

        # the relaxed vocabulary from the training images only
        relaxer_options = {k: v for k, v in relax.items() if k not in RELAXER_KEYS_METHOD}
        relaxer_options["templates"] = templates
        relaxer_options.setdefault("seed", ctx.seed)
        relaxer = ctx.registry("text_relaxers").build(relax["relaxer"], **relaxer_options)
        v_train = emb.of(train)
        vocab = relaxer.build(classes, v_train, encoder, cache_dir=cache_dir, log=ctx.log)
        if ctx.is_main:
            kdkit.atomic_write_text(ctx.run_dir / "relaxed_nouns.txt", "\n".join(vocab.words) + "\n")

        # unimodal teachers and the no-KD baseline (independent of the ratio)
        tm_models, teacher_summary = self.train_unimodal_teachers(ctx, test, num_classes, stage)
        summary: dict = {"method": "wordnet_relax", "teachers": dict(teacher_summary)}
        if cfg["baseline"]["enabled"]:
            summary["baseline"] = {**stage.fit_baseline(num_classes, train, val, test, eval_fn=image_eval),
                                   "name": cfg["student"]["name"]}

        y_train = _targets(train)
        to_pixels = getattr(train_base, "to_pixels", None)
        if cfg["distill"]["tx_clip"] == "online" and to_pixels is None:
            raise DataError(f"distill.tx_clip=online: dataset {type(train_base).__name__} has no to_pixels(images) "
                            "to undo its normalisation for CLIP; use distill.tx_clip=cached")
        use_tx = bool(cfg["distill"]["use_multimodal"])
        rows = []
        for ratio in ratios:
            suffix = f".r{ratio:g}" if sweep else ""
            tx_parts, tx_summary = None, None
            if use_tx:
                tx_model, bank, tx_summary = self.train_multimodal(
                    ctx, ratio, "multimodal" + suffix, vocab, class_emb, emb, (train, val, test), num_classes)
                mask_train = relax_mask(len(y_train), ratio, ctx.seed, "train")
                table = self.tx_table(ctx, tx_model, bank, v_train, y_train, mask_train)
                tx_summary["entropy"] = entropy(table)
                tx_summary["train_top1_distill"] = 100.0 * float((table.argmax(1).cpu() == y_train).float().mean())
                v_val = emb.of(val) if val is not None else None
                tx_parts = (tx_model, bank, table, mask_train, v_val)
            # what each teacher scores on held-out data with the inputs it gets at distillation
            references = {s["stage"] or key: s.get("val_top1", s.get("top1")) for key, s in teacher_summary.items()}
            if tx_summary is not None:
                references[tx_summary["stage"]] = tx_summary["val_top1" if cfg["distill"]["tx_text"] == "protocol"
                                                             else "val_top1_relaxed"]
            st = self.train_student(ctx, "student" + suffix, train, val, test, tm_models, tx_parts, num_classes,
                                    encoder, to_pixels, references, stage=stage)
            rows.append({"ratio": ratio, "teacher_top1": tx_summary["top1"] if tx_summary else None,
                         "teacher_top1_relaxed": tx_summary["top1_relaxed"] if tx_summary else None,
                         "teacher_entropy": tx_summary["entropy"] if tx_summary else None,
                         "student_top1": st["top1"], "tx": tx_summary, "student": st})

        main_row = next((r for r in rows if r["ratio"] == float(relax["ratio"])), rows[-1])
        if main_row["tx"] is not None:
            summary["teachers"]["multimodal"] = main_row["tx"]
        summary["student"] = main_row["student"]
        summary["ratio"] = main_row["ratio"]
        info = {k: v for k, v in vocab.info.items() if not isinstance(v, list) and k != "cache_hit"}
        for k, v in vocab.info.items():
            if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                info[f"{k}_min"], info[f"{k}_max"] = min(v), max(v)
        summary["relax"] = {"ratio": main_row["ratio"], "tau": float(relax["tau"]), "relaxer": relax["relaxer"],
                            "nouns": len(vocab.words), "examples": vocab.words[:20], **info}
        summary["clip_pretrained"] = bool(encoder.info.pretrained)
        summary["clip"] = {"model": encoder.info.model, "weights": encoder.info.weights,
                           "pretrained": bool(encoder.info.pretrained), "image_size": encoder.info.image_size,
                           "embed_dim": encoder.embed_dim}
        summary["distill"] = {k: cfg["distill"][k] for k in ("alpha", "temperature", "loss", "combine", "tx_text",
                                                             "tx_clip", "use_multimodal")}
        summary["selection"] = {"select_on": cfg["checkpoint"]["select_on"], "metric": "top1 (test, best epoch)"}
        if sweep:
            summary["sweep"] = [{k: r[k] for k in ("ratio", "teacher_top1", "teacher_top1_relaxed", "teacher_entropy",
                                                   "student_top1")} for r in rows]
            if ctx.is_main:
                summary["sweep_files"] = write_sweep(ctx.run_dir, summary, ctx.log)
        if ctx.is_main:
            print(results_table(summary), flush=True)
        return summary

    # --- kdkit eval -------------------------------------------------------------------------
    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: the image models' best checkpoints on the test split (T_x needs CLIP and the
        vocabulary again; its test numbers are in summary.json)."""
        from torch.utils.data import DataLoader

        cfg = ctx.config
        test = ctx.build_dataset(None, "test")
        num_classes = len(test.classes)
        loader = DataLoader(test, batch_size=int(cfg["train"]["eval_batch_size"]), shuffle=False)
        out: dict = {"teachers": {}}
        for tcfg, sname in zip(cfg["teachers"], self.teacher_stage_names(cfg["teachers"])):
            if (ctx.run_dir / "checkpoints" / sname / "best.pt").exists():
                build_cfg = {k: v for k, v in tcfg.items() if k not in ("augment", "pretrained")}
                model = ctx.build_model("teachers", build_cfg, num_classes, seed_tag=sname)
                ctx.load_best(sname, model)
                out["teachers"][sname] = image_eval(model.eval(), loader)
        for sname in sorted(p.name for p in (ctx.run_dir / "checkpoints").glob("*")
                            if p.name == "baseline" or p.name.startswith("student")):
            model = ctx.build_model("students", cfg["student"], num_classes, seed_tag="student")
            ctx.load_best(sname, model)
            out[sname] = image_eval(model.eval(), loader)
        return out


# --- reporting ----------------------------------------------------------------------------------

def _fmt(v, width=7):
    return f"{v:{width}.2f}" if isinstance(v, (int, float)) and v is not None and not math.isnan(v) else \
        "-".rjust(width)


def results_table(summary: dict) -> str:
    """The results table printed at the end of a run."""
    rows = []
    for key, t in summary.get("teachers", {}).items():
        if key == "multimodal":
            continue
        rows.append((f"T_m {t.get('name')} ({t.get('augment') or 'pretrained'} aug)", t.get("top1"), None,
                     t.get("entropy")))
    tx = summary.get("teachers", {}).get("multimodal")
    if tx:
        rows.append((f"T_x {tx['backbone']} [CLIP img || text], ratio {tx['ratio']:g}", tx.get("top1"),
                     tx.get("top1_relaxed"), tx.get("entropy")))
    if "baseline" in summary:
        rows.append((f"baseline {summary['baseline']['name']} (no KD)", summary["baseline"].get("top1"), None, None))
    st = summary["student"]
    teachers = "T_m + T_x" if tx else "T_m"
    rows.append((f"student {st['name']} (KD from {teachers}, {summary['distill']['combine']})", st.get("top1"),
                 None, None))
    width = max(len(r[0]) for r in rows)
    lines = ["", f"wordnet_relax results: test top-1 % (checkpoint chosen on the "
                 f"{summary['selection']['select_on']} split)",
             f"  {'model'.ljust(width)}   top-1  relaxed  entropy"]
    for name, top1, relaxed, ent in rows:
        lines.append(f"  {name.ljust(width)} {_fmt(top1)}  {_fmt(relaxed)}  {_fmt(ent)}")
    relax = summary.get("relax", {})
    lines.append(f"  relax.ratio = {summary.get('ratio'):g}; {relax.get('nouns')} relaxed nouns"
                 + (f" (pool capped to {relax.get('pool_size_used')})" if relax.get("pool_capped") else "")
                 + f"; CLIP {summary['clip']['model']} "
                 + ("pretrained" if summary.get("clip_pretrained") else "RANDOM INIT (not pretrained)"))
    lines.append("  T_x top-1: text as in training (exact class names for the un-relaxed share); 'relaxed': "
                 "label-free retrieved text only")
    lines.append("  entropy (nats): T_x on its distillation inputs (the training images), T_m on the test split")
    if summary.get("sweep"):
        lines.append("")
        lines.append(sweep_markdown(summary["sweep"]))
    return "\n".join(lines)


def sweep_markdown(rows: list[dict]) -> str:
    lines = ["| ratio | T_x top-1 | T_x top-1 (relaxed text) | T_x entropy | student top-1 |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['ratio']:g} | {_fmt(r['teacher_top1'], 0)} | {_fmt(r['teacher_top1_relaxed'], 0)} | "
                     f"{_fmt(r['teacher_entropy'], 0)} | {_fmt(r['student_top1'], 0)} |")
    return "\n".join(lines)


def write_sweep(run_dir: Path, summary: dict, log=print) -> dict:
    """``sweep.csv``, ``sweep.md`` and (with matplotlib) ``sweep.png`` — the paper's Figure 2."""
    rows = summary["sweep"]
    run_dir = Path(run_dir)
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["ratio", "teacher_top1", "teacher_top1_relaxed", "teacher_entropy", "student_top1",
                "baseline_top1"])
    for r in rows:
        w.writerow([r["ratio"], r["teacher_top1"], r["teacher_top1_relaxed"], r["teacher_entropy"],
                    r["student_top1"], summary.get("baseline", {}).get("top1")])
    kdkit.atomic_write_text(run_dir / "sweep.csv", table.getvalue())
    kdkit.atomic_write_text(run_dir / "sweep.md", sweep_markdown(rows) + "\n")
    files = {"csv": str(run_dir / "sweep.csv"), "markdown": str(run_dir / "sweep.md")}
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib is an optional extra
        log("wordnet_relax: matplotlib is not installed; sweep.png not written (pip install matplotlib)")
        return files
    xs = [100 * r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, [r["teacher_top1"] for r in rows], "o-", label="teacher T_x")
    ax.plot(xs, [r["student_top1"] for r in rows], "s-", label="student")
    if summary.get("baseline", {}).get("top1") is not None:
        ax.axhline(summary["baseline"]["top1"], color="gray", ls="--", lw=1, label="student without KD")
    ax.set_xlabel("WordNet relaxation (% of training samples)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Label leakage vs WordNet relaxation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "sweep.png", dpi=120)
    plt.close(fig)
    files["png"] = str(run_dir / "sweep.png")
    log(f"wordnet_relax: sweep table and plot in {run_dir / 'sweep.md'}, {run_dir / 'sweep.png'}")
    return files


def summary_json(summary: dict) -> str:  # pragma: no cover - convenience
    return json.dumps(copy.deepcopy(summary), indent=2, sort_keys=True)
