"""The ``soda`` method: semantic-cohesive two-stage knowledge distillation for cross-modal hashing.

Stage 1 (``teacher.<bits>``): an image hash head and a label-prompt hash head, trained together so
that images and the prompts of their labels share an L-bit Hamming space.  Stage 2
(``student.<bits>``): the teacher's image codes are frozen (``sign`` of the image head on the
training images) and a text hash head is fitted to them.  The comparison ``baseline.<bits>``
trains an image head and a text head jointly, without label prompts and without frozen codes.

SODA's code and hyper-parameters are not public (arXiv 2510.09664): every default below is a
documented choice from the method family (DCMH, DCHMT, MITH), not the paper's value.  See
``docs/soda.md`` for the loss terms.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import kdkit
from kdkit import ConfigError, ConfigKey, KdkitError, base_config, lazy_import, train_section

from .data import make_splits

#: the options of a cross-modal dataset that choose its query/train split (declared by soda's datasets)
SPLIT_KEYS = ("split_preset", "query_size", "train_size", "split_seed")

# torch and the training pieces load when a run starts, not when kdkit registers the plugin
torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")
features = lazy_import("kdkit_soda.features")
hashing = lazy_import("kdkit_soda.hashing")


# --- the method ------------------------------------------------------------------------------

class SodaMethod(kdkit.Method):
    """Two-stage SODA; ``run`` returns ``{"map": {bits: {"i2t", "t2i"}}, "baseline": ..., ...}``."""

    @classmethod
    def default_config(cls) -> dict:
        cfg = base_config()
        cfg["data"] = {"name": "soda_scenes", "root": None, "val_fraction": 0.1, "num_workers": 0}
        cfg["train"] = train_section(epochs=20, batch_size=128, eval_batch_size=4096, optimizer="adam", lr=1e-3,
                                     momentum=0.9, weight_decay=1e-5, scheduler="cosine", amp=False)
        epochs = {"type": int, "range": "[1, inf)"}
        cfg["soda"] = {
            "bits": ConfigKey([16, 32, 64, 128], "code lengths (multiples of 8): a teacher, student and "
                                                 "baseline per length", items=int, range="[8, inf)"),
            "alpha": ConfigKey(0.1, "stage 1: weight of the binarisation penalty", range="[0, inf)"),
            "beta": ConfigKey(0.1, "stage 2: weight of the binarisation penalty", range="[0, inf)"),
            "intra_weight": ConfigKey(1.0, "stage 1 / baseline: weight of the intra-modal image<->image term",
                                      range="[0, inf)"),
            "fit_weight": ConfigKey(1.0, "stage 2: weight of ||h_text - b_image||^2 / L on the paired sample",
                                    range="[0, inf)"),
            "student_intra_weight": ConfigKey(0.0, "stage 2: weight of the text<->text term (not in the paper)",
                                              range="[0, inf)"),
            "balance_weight": ConfigKey(0.0, "weight of the bit-balance term ||mean(h)||^2", range="[0, inf)"),
            "theta_scale": ConfigKey(0.5, "theta = scale * <h_a, h_b> (DCMH: 0.5)", range="(0, inf)"),
            "similarity": ConfigKey("hard", "pair similarity: hard (share >= 1 label) | cosine (of label vectors)",
                                    choices=("hard", "cosine")),
            "feature_norm": ConfigKey("standardize", "CLIP features: z-score with training-split statistics, "
                                                     "l2, or none", choices=("standardize", "l2", "none")),
            "head_hidden": ConfigKey(512, "0: Linear->Dropout->tanh (the family's head); >0: one hidden layer",
                                     range="[0, inf)"),
            "dropout": ConfigKey(0.2, "dropout of the hashing heads", range="[0, 1)"),
            "teacher_epochs": ConfigKey(None, "stage 1 epochs (null: train.epochs)", **epochs),
            "student_epochs": ConfigKey(None, "stage 2 epochs (null: train.epochs)", **epochs),
            "baseline": ConfigKey(True, "also train the no-distillation baseline"),
            "baseline_epochs": ConfigKey(None, "baseline epochs (null: teacher_epochs + student_epochs, the same "
                                               "budget)", **epochs),
            "eval_k": ConfigKey(None, "null: mAP@all; k: mAP@k in eval_variant", **epochs),
            "eval_variant": ConfigKey("truncated", "mAP@k: truncated (DCMH top-k) | dchmt (first min(k, R) "
                                                   "relevant)", choices=("truncated", "dchmt")),
        }
        cfg["clip"] = {
            "model": ConfigKey("tiny", "open_clip architecture (ViT-B-32: the method family's), or tiny"),
            "pretrained": ConfigKey(None, "null: random init; an open_clip tag or a local checkpoint file", type=str),
            "context_length": ConfigKey(None, "text context length (null: the model's)", type=int, range="[1, inf)"),
            "batch_size": ConfigKey(128, "CLIP encoding batch size", range="[1, inf)"),
            "cache_dir": ConfigKey(None, "feature cache directory (null: the run's cache directory)", type=str),
        }
        cfg["prompt"] = {
            "template": ConfigKey("An image of {}.", "prompt of a sample; {} receives its label names"),
            "sep": ConfigKey(", ", "between label names"),
            "last_sep": ConfigKey(" and ", "before the last label name"),
            "mode": ConfigKey("joined", "joined: one prompt naming every label | mean: the mean of one prompt per "
                                        "label", choices=("joined", "mean")),
        }
        return cfg

    @classmethod
    def check_config(cls, config: dict, registry=None) -> None:
        """Rules beyond the declared keys, checked when the config is resolved."""
        for b in config.soda.bits:
            if b % 8:
                raise ConfigError(f"config key soda.bits: {b} is not a multiple of 8 (codes are packed bytes)")

    # --- data -----------------------------------------------------------------------------

    def _prepare(self, ctx):
        cfg = ctx.config
        t0 = time.perf_counter()
        ds = ctx.build_dataset(None, "all")
        data = getattr(ds, "data", None)
        if data is None:
            raise ConfigError(f"dataset {cfg.data.name!r} is not a cross-modal dataset (images, texts, "
                              "multi-hot labels); use soda_scenes, mirflickr25k, nuswide or crossmodal_jsonl")
        family = getattr(ds, "family", "scenes")
        dcfg = cfg.data
        undeclared = [k for k in SPLIT_KEYS if k not in dcfg]
        if undeclared:  # soda's datasets declare them (kdkit_soda.DATASETS); a third-party one has to as well
            raise ConfigError(f"dataset {dcfg.name!r} declares no data.{undeclared[0]}: soda splits a cross-modal "
                              f"dataset by the options {', '.join(SPLIT_KEYS)} (declare them when registering it)")
        splits = make_splits(len(data), family, *(dcfg[k] for k in SPLIT_KEYS), float(dcfg.val_fraction),
                             val_seed=int(cfg.seed))
        ctx.log(f"[soda] dataset {data.name}: {len(data)} samples, {len(data.classes)} labels "
                f"({data.source}); loaded in {time.perf_counter() - t0:.1f}s")
        for problem, count in sorted(data.notes.items()):
            ctx.log(f"[soda] data handling: {problem} = {count}")
        sizes = splits.sizes()
        ctx.log(f"[soda] split preset {splits.preset!r}, seed {splits.seed}: query {sizes['query']}, train "
                f"{sizes['train']} (fit {sizes['fit']} + validation {sizes['val']}, val seed {cfg.seed}), "
                f"retrieval database {sizes['retrieval']}")
        cache = Path(cfg.clip.cache_dir or ctx.cache_dir)  # null: the run's cache directory
        feats = features.compute_features(data, cfg.clip, cfg.prompt, cache, ctx.device, log=ctx.log,
                                          seed=int(cfg.seed))
        labels = torch.from_numpy(np.asarray(data.labels, np.float32))
        feats = hashing.normalize_features(feats, splits.fit, cfg.soda.feature_norm)
        self._stats = feats.pop("_stats", None)
        return data, splits, feats, labels

    # --- run ------------------------------------------------------------------------------

    @classmethod
    def stages(cls, config) -> list[str]:
        """Per code length: ``teacher.BITS``, ``student.BITS``, then ``baseline.BITS`` (``soda.baseline``)."""
        return [f"{kind}.{int(bits)}" for bits in config.soda.bits
                for kind in ("teacher", "student", *(("baseline",) if config.soda.baseline else ()))]

    def run(self, ctx) -> dict:
        cfg = ctx.config
        soda = cfg.soda
        bits_list = [int(b) for b in soda.bits]
        select_on = cfg.checkpoint.select_on
        data, splits, feats, labels = self._prepare(ctx)
        query = hashing.FeatureDataset(feats, labels, splits.query)
        fit_ds, val_q = ctx.selection_splits(
            hashing.FeatureDataset(feats, labels, splits.train), query,
            hold_out=lambda: (hashing.FeatureDataset(feats, labels, splits.fit),
                              hashing.FeatureDataset(feats, labels, splits.val)))
        if select_on == "test":
            ctx.log("[soda] checkpoint.select_on=test: the best epoch is chosen ON THE QUERY (TEST) SET, as "
                    "DCMH/DCHMT/MITH do — numbers are optimistic")
        retrieval = hashing.FeatureDataset(feats, labels, splits.retrieval)
        k, variant = soda.eval_k, soda.eval_variant
        summary = {"map": {}, "baseline": {}, "teacher": {}, "stages": {},
                   "protocol": {"metric": "mAP@all" if k is None else f"mAP@{k}", "variant": variant,
                                "ranking": "(hamming distance, database index)", "relevance": "share >= 1 label",
                                "query": "query split", "database": "retrieval split (all but query)",
                                "model_selection": select_on},
                   "data": {"name": data.name, "samples": len(data), "labels": len(data.classes),
                            "split": splits.preset, "split_seed": splits.seed, "sizes": splits.sizes(),
                            "handling": dict(data.notes)},
                   "clip": {"model": cfg.clip.model, "pretrained": cfg.clip.pretrained}}
        t_all = time.perf_counter()
        for bits in bits_list:
            teacher = self.train_teacher(ctx, bits, fit_ds, val_q)
            student = self.train_student(ctx, bits, teacher, fit_ds, val_q)
            img_q = hashing.pack(hashing.encode_features(teacher.a, query.image, ctx.device))
            img_db = hashing.pack(hashing.encode_features(teacher.a, retrieval.image, ctx.device))
            txt_q = hashing.pack(hashing.encode_features(student, query.text, ctx.device))
            txt_db = hashing.pack(hashing.encode_features(student, retrieval.text, ctx.device))
            lab_db = hashing.pack(hashing.encode_features(teacher.b, retrieval.label_feat, ctx.device))
            summary["map"][str(bits)] = {
                "i2t": hashing.mean_average_precision(img_q, txt_db, query.labels, retrieval.labels, k, variant),
                "t2i": hashing.mean_average_precision(txt_q, img_db, query.labels, retrieval.labels, k, variant),
            }
            summary["teacher"][str(bits)] = {
                "i2label": hashing.mean_average_precision(img_q, lab_db, query.labels, retrieval.labels, k, variant)}
            if soda.baseline:
                base = self.train_baseline(ctx, bits, fit_ds, val_q)
                bq_i = hashing.pack(hashing.encode_features(base.a, query.image, ctx.device))
                bd_i = hashing.pack(hashing.encode_features(base.a, retrieval.image, ctx.device))
                bq_t = hashing.pack(hashing.encode_features(base.b, query.text, ctx.device))
                bd_t = hashing.pack(hashing.encode_features(base.b, retrieval.text, ctx.device))
                summary["baseline"][str(bits)] = {
                    "i2t": hashing.mean_average_precision(bq_i, bd_t, query.labels, retrieval.labels, k, variant),
                    "t2i": hashing.mean_average_precision(bq_t, bd_i, query.labels, retrieval.labels, k, variant),
                }
            line = (f"[soda] {bits} bits: SODA i2t {summary['map'][str(bits)]['i2t']:.4f} "
                    f"t2i {summary['map'][str(bits)]['t2i']:.4f}")
            if str(bits) in summary["baseline"]:
                line += (f" | baseline i2t {summary['baseline'][str(bits)]['i2t']:.4f} "
                         f"t2i {summary['baseline'][str(bits)]['t2i']:.4f}")
            ctx.log(line)
        summary["seconds"] = round(time.perf_counter() - t_all, 1)
        if ctx.is_main:
            print(format_table(summary))
            self._write_codes_meta(ctx, splits)
        return summary

    def _write_codes_meta(self, ctx, splits) -> None:
        meta = {"query": splits.query.tolist(), "retrieval": splits.retrieval.tolist(),
                "train": splits.train.tolist(), "val": splits.val.tolist(), "seed": splits.seed,
                "preset": splits.preset}
        kdkit.atomic_write_text(Path(ctx.run_dir) / "splits.json", json.dumps(meta))

    # --- stages ---------------------------------------------------------------------------

    def _opt(self, ctx) -> dict:
        return dict(ctx.config.train)

    def _epochs(self, key: str, ctx) -> int:
        v = ctx.config.soda[key]
        return int(v) if v is not None else int(ctx.config.train.epochs)

    def train_teacher(self, ctx, bits: int, fit_ds, val_q) -> hashing.PairHashModel:
        """Stage 1: image head ``a`` and label-prompt head ``b`` in one Hamming space."""
        return self._train_pair(ctx, f"teacher.{bits}", bits, fit_ds, val_q, "label_feat", seed_offset=0,
                                intra_b=False, keys=("i2label", "label2i"),
                                epochs=self._epochs("teacher_epochs", ctx))

    def train_student(self, ctx, bits: int, teacher: hashing.PairHashModel, fit_ds, val_q) -> hashing.HashHead:
        soda = ctx.config.soda
        torch.manual_seed(int(ctx.config.seed) * 1000 + bits + 1)
        student = hashing.HashHead(fit_ds.text.shape[1], bits, int(soda.head_hidden), float(soda.dropout))
        # the frozen stage-1 image codes of the training set: the student's targets
        frozen = nn.Module()
        image_codes = hashing.sign_codes(hashing.encode_features(teacher.a, fit_ds.image, ctx.device))
        frozen.register_buffer("codes", image_codes)
        frozen.register_buffer("labels", fit_ds.labels.clone())
        frozen = frozen.to(ctx.device)
        scale, beta, fit_w = float(soda.theta_scale), float(soda.beta), float(soda.fit_weight)
        s_intra = float(soda.student_intra_weight)
        bal, kind = float(soda.balance_weight), soda.similarity

        def step(m, batch):
            pos, _, ft, _, y = batch
            ht = m(ft)
            sim = hashing.similarity(y, frozen.labels, kind)
            inter = hashing.pairwise_nll(ht, frozen.codes, sim, scale)
            fit = ((ht - frozen.codes[pos]) ** 2).mean()
            pen = hashing._penalty(ht)
            loss = inter + fit_w * fit + beta * pen
            if s_intra or bal:  # terms over the whole batch: gathered from every rank under DDP
                ht_all, y_all = kdkit.all_gather_with_grad(ht), kdkit.all_gather_with_grad(y)
                if s_intra:
                    sim_all = hashing.similarity(y_all, y_all, kind)
                    loss = loss + s_intra * hashing.pairwise_nll(ht_all, ht_all, sim_all, scale)
                if bal:
                    loss = loss + bal * hashing._balance(ht_all)
            return loss, {"inter": inter.detach(), "fit": fit.detach(), "penalty": pen.detach()}

        def evaluate(m, val):
            val = getattr(val, "dataset", val)  # the trainer wraps datasets in a DataLoader
            db_txt = hashing.pack(hashing.encode_features(m, fit_ds.text, ctx.device))
            db_img = hashing.pack(frozen.codes.cpu())
            q_img = hashing.pack(hashing.encode_features(teacher.a, val.image, ctx.device))
            q_txt = hashing.pack(hashing.encode_features(m, val.text, ctx.device))
            i2t = hashing.mean_average_precision(q_img, db_txt, val.labels, fit_ds.labels)
            t2i = hashing.mean_average_precision(q_txt, db_img, val.labels, fit_ds.labels)
            return {"map": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i}

        ctx.fit(kdkit.Stage(name=f"student.{bits}", model=student, train_data=fit_ds, val_data=val_q, step_fn=step,
                      eval_fn=evaluate, epochs=self._epochs("student_epochs", ctx), optimizer=self._opt(ctx),
                      select_metric="map", select_mode="max"))
        return kdkit.freeze(student)

    def train_baseline(self, ctx, bits: int, fit_ds, val_q) -> hashing.PairHashModel:
        """No distillation: image and text heads trained jointly, with the teacher's and the
        student's training budget together."""
        soda = ctx.config.soda
        epochs = soda.baseline_epochs
        if epochs is None:
            epochs = self._epochs("teacher_epochs", ctx) + self._epochs("student_epochs", ctx)
        return self._train_pair(ctx, f"baseline.{bits}", bits, fit_ds, val_q, "text", seed_offset=2,
                                intra_b=True, keys=("i2t", "t2i"), epochs=int(epochs))

    def _train_pair(self, ctx, stage: str, bits: int, fit_ds, val_q, b_feature: str, seed_offset: int,
                    intra_b: bool, keys: tuple, epochs: int) -> hashing.PairHashModel:
        """Train image head ``a`` and head ``b`` (on ``fit_ds.<b_feature>``) jointly:
        inter-modal NLL + intra_weight * intra-modal NLL (image<->image, plus b<->b when ``intra_b``)
        + alpha * binarisation penalty (+ optional bit balance); selected on validation mAP."""
        soda = ctx.config.soda
        torch.manual_seed(int(ctx.config.seed) * 1000 + bits + seed_offset)
        model = hashing.PairHashModel(fit_ds.image.shape[1], getattr(fit_ds, b_feature).shape[1], bits,
                              int(soda.head_hidden), float(soda.dropout))
        scale, alpha, intra = float(soda.theta_scale), float(soda.alpha), float(soda.intra_weight)
        bal, kind = float(soda.balance_weight), soda.similarity
        b_slot = {"text": 2, "label_feat": 3}[b_feature]  # batches are (index, image, text, label_feat, labels)

        def step(m, batch):
            fi, fb, y = batch[1], batch[b_slot], batch[4]
            hi_own, hb_own = m(fi, fb)
            # the pairs of the whole batch: under DDP every rank's half-batch is gathered, so the loss
            # (and, with DDP's averaging, the gradient) is the single-process one
            gather = kdkit.all_gather_with_grad
            hi, hb, y = gather(hi_own), gather(hb_own), gather(y)
            sim = hashing.similarity(y, y, kind)
            inter = hashing.pairwise_nll(hi, hb, sim, scale)
            intra_l = hashing.pairwise_nll(hi, hi, sim, scale)
            if intra_b:
                intra_l = intra_l + hashing.pairwise_nll(hb, hb, sim, scale)
            pen = hashing._penalty(hi_own) + hashing._penalty(hb_own)  # per sample: this rank's rows
            loss = inter + intra * intra_l + alpha * pen
            if bal:
                loss = loss + bal * (hashing._balance(hi) + hashing._balance(hb))
            return loss, {"inter": inter.detach(), "intra": intra_l.detach(), "penalty": pen.detach()}

        def evaluate(m, val):
            val = getattr(val, "dataset", val)  # the trainer wraps datasets in a DataLoader
            db_b = hashing.pack(hashing.encode_features(m.b, getattr(fit_ds, b_feature), ctx.device))
            db_a = hashing.pack(hashing.encode_features(m.a, fit_ds.image, ctx.device))
            q_a = hashing.pack(hashing.encode_features(m.a, val.image, ctx.device))
            q_b = hashing.pack(hashing.encode_features(m.b, getattr(val, b_feature), ctx.device))
            a2b = hashing.mean_average_precision(q_a, db_b, val.labels, fit_ds.labels)
            b2a = hashing.mean_average_precision(q_b, db_a, val.labels, fit_ds.labels)
            return {"map": (a2b + b2a) / 2, keys[0]: a2b, keys[1]: b2a}

        ctx.fit(kdkit.Stage(name=stage, model=model, train_data=fit_ds, val_data=val_q, step_fn=step,
                      eval_fn=evaluate, epochs=int(epochs), optimizer=self._opt(ctx),
                      select_metric="map", select_mode="max"))
        return kdkit.freeze(model)

    # --- kdkit encode ---------------------------------------------------------------------

    def encode(self, ctx, modality: str, bits: int, split: str = "retrieval", texts=None) -> tuple:
        """Codes of a finished run: ``(uint8 (N, L/8) codes, dataset indices or None, metadata)``.

        ``modality``: ``image`` (teacher image head) or ``text`` (student text head); ``split``:
        ``query``, ``retrieval``, ``train``, ``all``.  ``texts``: encode these strings instead.
        """
        cfg = ctx.config
        if int(bits) not in [int(b) for b in cfg.soda.bits]:
            raise KdkitError(f"--bits {bits}: the run trained {', '.join(map(str, cfg.soda.bits))} bits")
        data, splits, feats, labels = None, None, None, None
        soda = cfg.soda
        if texts is not None:
            if modality != "text":
                raise KdkitError("--text-file encodes texts: use --modality text")
            enc = features.clip_encoder(cfg.clip, ctx.device, seed=int(cfg.seed))
            self._prepare(ctx)  # the normalisation statistics of the run's training split
            x = enc.encode_texts(texts, normalize=False)
            if self._stats and "text" in self._stats:
                mu, sd = self._stats["text"]
                x = (x - mu) / sd
            elif soda.feature_norm == "l2":
                x = F.normalize(x, dim=1)
            indices = None
        else:
            data, splits, feats, labels = self._prepare(ctx)
            idx = {"query": splits.query, "retrieval": splits.retrieval, "train": splits.train,
                   "all": np.arange(len(data))}.get(split)
            if idx is None:
                raise KdkitError(f"--split {split!r}: expected query, retrieval, train or all")
            indices = np.asarray(idx)
            x = feats["image" if modality == "image" else "text"][torch.as_tensor(indices)]
        if modality == "image":
            model = hashing.PairHashModel(feats["image"].shape[1], feats["label"].shape[1], bits,
                                          int(soda.head_hidden), float(soda.dropout))
            ctx.load_best(f"teacher.{bits}", model)
            head = model.a
        elif modality == "text":
            head = hashing.HashHead(x.shape[1], bits, int(soda.head_hidden), float(soda.dropout))
            ctx.load_best(f"student.{bits}", head)
        else:
            raise KdkitError(f"--modality {modality!r}: expected image or text")
        codes = hashing.pack(hashing.encode_features(head, x, ctx.device)).numpy()
        meta = {"modality": modality, "bits": int(bits), "split": None if texts is not None else split,
                "dataset": cfg.data.name}
        if labels is not None:
            meta["labels"] = labels[torch.as_tensor(indices)].numpy().astype(np.uint8)
        return codes, indices, meta

    def evaluate(self, ctx) -> dict:
        """``kdkit eval --run DIR``: recompute mAP of the saved best heads on the query/retrieval split."""
        soda = ctx.config.soda
        data, splits, feats, labels = self._prepare(ctx)
        query = hashing.FeatureDataset(feats, labels, splits.query)
        retrieval = hashing.FeatureDataset(feats, labels, splits.retrieval)
        out = {"map": {}}
        for bits in [int(b) for b in soda.bits]:
            t = hashing.PairHashModel(feats["image"].shape[1], feats["label"].shape[1], bits, int(soda.head_hidden),
                              float(soda.dropout))
            ctx.load_best(f"teacher.{bits}", t)
            st = hashing.HashHead(feats["text"].shape[1], bits, int(soda.head_hidden), float(soda.dropout))
            ctx.load_best(f"student.{bits}", st)
            def codes(head, x):
                return hashing.pack(hashing.encode_features(head, x, ctx.device))

            iq, idb = codes(t.a, query.image), codes(t.a, retrieval.image)
            tq, tdb = codes(st, query.text), codes(st, retrieval.text)
            mean_ap = hashing.mean_average_precision
            out["map"][str(bits)] = {
                "i2t": mean_ap(iq, tdb, query.labels, retrieval.labels, soda.eval_k, soda.eval_variant),
                "t2i": mean_ap(tq, idb, query.labels, retrieval.labels, soda.eval_k, soda.eval_variant),
            }
        return out


def format_table(summary: dict) -> str:
    """The printed result table: SODA vs the no-distillation baseline per bit length."""
    proto = summary.get("protocol", {})
    lines = [f"SODA on {summary['data']['name']} ({proto.get('metric')}, variant {proto.get('variant')}, "
             f"ranking by {proto.get('ranking')}; CLIP {summary['clip']['model']} "
             f"{summary['clip']['pretrained'] or '(random init)'})",
             f"{'bits':>5} | {'SODA I->T':>9} {'SODA T->I':>9} | {'base I->T':>9} {'base T->I':>9} | "
             f"{'teacher I->Label':>16}"]
    for bits, m in summary["map"].items():
        b = summary["baseline"].get(bits, {})
        lines.append(f"{bits:>5} | {m['i2t']:9.4f} {m['t2i']:9.4f} | "
                     f"{b.get('i2t', float('nan')):9.4f} {b.get('t2i', float('nan')):9.4f} | "
                     f"{summary['teacher'][bits]['i2label']:16.4f}")
    return "\n".join(lines)
