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

This module is the method (:class:`WordNetRelaxMethod`: its config, checks, stages and the run); its
parts live by concern beside it: :mod:`~kdkit_wordnet_relax.embeddings` (CLIP image embeddings of the
splits, cached), :mod:`~kdkit_wordnet_relax.multimodal` (T_x: relaxed-text masks, model, training,
logit table, T_x as a teacher of the student stage), :mod:`~kdkit_wordnet_relax.evaluation` (top-1
and entropy of image classifiers) and :mod:`~kdkit_wordnet_relax.report` (results table, sweep files).
The names they had here (``relax_mask``, ``entropy``, ``image_eval``, ``clip_image_embeddings``,
``results_table``, ``write_sweep``, ...) are still importable from here.
"""
from __future__ import annotations

import os
from pathlib import Path

import kdkit  # kdkit.atomic_write_text is looked up when called: it imports torch
from kdkit import ConfigError, DataError
from kdkit.distill import LogitsTeacher, StudentStage

from kdkit_wordnet_relax import multimodal
from kdkit_wordnet_relax.config import default_config
from kdkit_wordnet_relax.embeddings import Embeddings, clip_image_embeddings, targets, unwrap
from kdkit_wordnet_relax.evaluation import entropy, image_eval
from kdkit_wordnet_relax.multimodal import relax_mask
from kdkit_wordnet_relax.report import results_table, summary_json, sweep_markdown, write_sweep

__all__ = ["WordNetRelaxMethod", "RELAXER_KEYS_METHOD",
           # the names of the parts, importable from here as before the split
           "relax_mask", "entropy", "image_eval", "clip_image_embeddings", "results_table", "sweep_markdown",
           "write_sweep", "summary_json"]

#: keys of the ``relax`` section the method reads itself; the others are the text relaxer's options
RELAXER_KEYS_METHOD = ("relaxer", "ratio", "tau", "sweep", "cache", "cache_dir")


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
        relax, dist = config.relax, config.distill
        sweep = relax.sweep
        if len(set(sweep)) != len(sweep):
            raise ConfigError(f"config key relax.sweep: duplicate ratios in {sweep}")
        if not config.teachers and not dist.use_multimodal:
            raise ConfigError("config: no teacher (teachers is empty and distill.use_multimodal is false)")
        StudentStage.check_config(config, cls.default_config()["distill"], registry,
                                  extra_teachers=int(bool(dist.use_multimodal)))
        if relax.pool == "file" and not relax.pool_file:
            raise ConfigError("config key relax.pool=file needs relax.pool_file (a file with one noun per line)")
        if registry is not None:  # names used after the teachers trained: checked now
            registry("text_relaxers").get(relax.relaxer)
            backbone, teachers = config.tx.backbone, registry("teachers")
            if backbone != "mlp" and backbone not in teachers:
                raise ConfigError(f"config key tx.backbone: unknown backbone {backbone!r}; valid choices: mlp, "
                                  f"{', '.join(teachers.names())}")

    @staticmethod
    def ratios(cfg: dict) -> list[float]:
        """The relaxation ratios to train at: ``relax.sweep``, or ``[relax.ratio]``."""
        return [float(r) for r in cfg.relax.sweep] or [float(cfg.relax.ratio)]

    @staticmethod
    def lambdas(tx: dict) -> tuple[float, float]:
        """``(lambda_hier, lambda_cosreg)`` of the ``tx`` section (:func:`kdkit_wordnet_relax.multimodal.lambdas`)."""
        return multimodal.lambdas(tx)

    @staticmethod
    def cache_dir(cfg: dict) -> Path | None:
        """Where CLIP embeddings and the relaxed vocabulary are cached (``relax.cache_dir``), ``None``
        when ``relax.cache`` is off."""
        from kdkit_wordnet_relax.paths import cache_root

        relax = cfg.relax
        if not relax.cache:
            return None
        if not relax.cache_dir:  # null (or empty): the default cache root
            return cache_root() / "wordnet_relax"
        return Path(os.path.expanduser(relax.cache_dir))  # Path.expanduser raises for an unknown ~user

    # --- data -------------------------------------------------------------------------------
    def _splits(self, ctx, augment: str | None, test):
        """``(train, val)`` of the training split with ``augment``, split like the engine does."""
        overrides = {} if augment is None else {"augment": augment}
        return ctx.selection_splits(ctx.build_dataset(None, "train", **overrides), test)

    # --- stages -----------------------------------------------------------------------------
    @classmethod
    def stages(cls, config) -> list[str]:
        """The trained T_m teachers, ``baseline`` (``baseline.enabled``), then per ratio T_x
        (``multimodal``, with ``distill.use_multimodal``) and ``student`` (``.r<ratio>`` under ``relax.sweep``)."""
        teachers = [name for tcfg, name in zip(config.teachers, cls.teacher_stage_names(config.teachers))
                    if tcfg.train]
        per_ratio = []
        for ratio in cls.ratios(config):
            suffix = f".r{ratio:g}" if config.relax.sweep else ""
            per_ratio += (["multimodal" + suffix] if config.distill.use_multimodal else []) + ["student" + suffix]
        return teachers + (["baseline"] if config.baseline.enabled else []) + per_ratio

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
        return StudentStage(ctx, self.default_config()["distill"], self.teacher_stage_names(cfg.teachers),
                            model_options=self.teacher_model_options,
                            extra_teachers=int(bool(cfg.distill.use_multimodal)))

    def train_unimodal_teachers(self, ctx, test, num_classes, stage: StudentStage | None = None):
        """T_m: each teacher trained on its own augmentation of the training split (or loaded)."""
        cfg = ctx.config
        stage = stage if stage is not None else self.student_stage(ctx)
        trained = stage.train_teachers(num_classes, test,
                                       data=lambda tcfg: self._splits(ctx, tcfg.augment, test), eval_fn=image_eval)
        models, summary = [], {}
        for tcfg, sname, (model, r) in zip(cfg.teachers, stage.teacher_names, trained):
            key = "unimodal_" + sname.split(".", 1)[1].replace(".", "_")
            if r["stage"]:
                summary[key] = {"top1": r.get("top1"), "val_top1": r["val_top1"], "entropy": r.get("entropy"),
                                "best_epoch": r["best_epoch"], "name": tcfg.name, "augment": tcfg.augment,
                                "stage": sname}
            else:
                summary[key] = {"top1": r["top1"], "entropy": r["entropy"], "name": tcfg.name,
                                "pretrained": tcfg.pretrained, "stage": None}
            models.append(model)
        return models, summary

    def build_tx_model(self, ctx, embed_dim: int, num_classes: int, stage_name: str):
        """T_x's network (:func:`kdkit_wordnet_relax.multimodal.build_tx_model`)."""
        return multimodal.build_tx_model(ctx, embed_dim, num_classes, stage_name)

    def train_multimodal(self, ctx, ratio, stage_name, vocab, class_emb, emb, data, num_classes):
        """Train T_x at ``ratio``; returns ``(model, bank, summary)`` (both frozen;
        :func:`kdkit_wordnet_relax.multimodal.train_tx`, with this method's ``build_tx_model`` and ``lambdas``)."""
        return multimodal.train_tx(ctx, ratio, stage_name, vocab, class_emb, emb, data, num_classes,
                                   build_model=self.build_tx_model, weights=self.lambdas(ctx.config.tx))

    def tx_table(self, ctx, model, bank, v_train, y_train, mask_train):
        """T_x logits for every training sample, with the text used at distillation
        (:func:`kdkit_wordnet_relax.multimodal.tx_table`)."""
        return multimodal.tx_table(ctx, model, bank, v_train, y_train, mask_train)

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
        return {**st.summary, "name": cfg.student.name, "stage": stage_name,
                "teacher_weights": st.teacher_weights, "terms": st.terms, "teacher_agreement": st.agreement}

    def tx_teacher(self, ctx, tx_parts, encoder, to_pixels) -> LogitsTeacher:
        """T_x as the student stage sees it (:func:`kdkit_wordnet_relax.multimodal.tx_teacher`)."""
        return multimodal.tx_teacher(ctx, tx_parts, encoder, to_pixels)

    # --- run --------------------------------------------------------------------------------
    def run(self, ctx) -> dict:
        from kdkit import build_clip

        from kdkit_wordnet_relax.relaxer import TEMPLATES

        cfg = ctx.config
        ratios = self.ratios(cfg)
        stage = self.student_stage(ctx)  # the objective is built (and checked) before anything trains
        relax = cfg.relax
        sweep = bool(relax.sweep)
        templates = list(relax.templates or TEMPLATES)  # null: the authors' templates

        # data: the student's view defines the splits and the class names
        train, val, test, classes = ctx.classification_data()
        if not classes:
            raise DataError(f"dataset {cfg.data.name!r} exposes no class names ('classes'); "
                            f"wordnet_relax needs them for the text side")
        classes = [str(c).replace("_", " ") for c in classes]
        num_classes = len(classes)
        stage.check_taps(num_classes)  # wrong module paths: fail before training
        ctx.log(f"wordnet_relax: {cfg.data.name} with {num_classes} classes; train {len(train)}, "
                f"val {len(val) if val is not None else 0}, test {len(test)}; ratio(s) "
                f"{', '.join(f'{r:g}' for r in ratios)}")

        # CLIP: image embeddings (cached), exact class-name embeddings
        cache_dir = self.cache_dir(cfg)
        clip_device = cfg.clip.device or str(ctx.device)  # null: the run's device
        encoder = build_clip(cfg.clip, device=clip_device, log_fn=ctx.log)
        data_key = {k: v for k, v in cfg.data.items() if k not in ("augment", "num_workers", "val_fraction")}
        train_base, _ = unwrap(train)
        test_base, _ = unwrap(test)
        v_train_full = clip_image_embeddings(encoder, train_base, {**data_key, "split": "train"}, cache_dir, ctx.log)
        v_test = clip_image_embeddings(encoder, test_base, {**data_key, "split": "test"}, cache_dir, ctx.log)
        emb = Embeddings(v_train_full, v_test)
        class_emb = encoder.encode_words(classes, templates)

        # the relaxed vocabulary from the training images only
        relaxer_options = {k: v for k, v in relax.items() if k not in RELAXER_KEYS_METHOD}
        relaxer_options["templates"] = templates
        relaxer_options.setdefault("seed", ctx.seed)
        relaxer = ctx.registry("text_relaxers").build(relax.relaxer, **relaxer_options)
        v_train = emb.of(train)
        vocab = relaxer.build(classes, v_train, encoder, cache_dir=cache_dir, log=ctx.log)
        if ctx.is_main:
            kdkit.atomic_write_text(ctx.run_dir / "relaxed_nouns.txt", "\n".join(vocab.words) + "\n")

        # unimodal teachers and the no-KD baseline (independent of the ratio)
        tm_models, teacher_summary = self.train_unimodal_teachers(ctx, test, num_classes, stage)
        summary: dict = {"method": "wordnet_relax", "teachers": dict(teacher_summary)}
        if cfg.baseline.enabled:
            summary["baseline"] = {**stage.fit_baseline(num_classes, train, val, test, eval_fn=image_eval),
                                   "name": cfg.student.name}

        y_train = targets(train)
        to_pixels = getattr(train_base, "to_pixels", None)
        if cfg.distill.tx_clip == "online" and to_pixels is None:
            raise DataError(f"distill.tx_clip=online: dataset {type(train_base).__name__} has no to_pixels(images) "
                            "to undo its normalisation for CLIP; use distill.tx_clip=cached")
        use_tx = bool(cfg.distill.use_multimodal)
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
                references[tx_summary["stage"]] = tx_summary["val_top1" if cfg.distill.tx_text == "protocol"
                                                             else "val_top1_relaxed"]
            st = self.train_student(ctx, "student" + suffix, train, val, test, tm_models, tx_parts, num_classes,
                                    encoder, to_pixels, references, stage=stage)
            rows.append({"ratio": ratio, "teacher_top1": tx_summary["top1"] if tx_summary else None,
                         "teacher_top1_relaxed": tx_summary["top1_relaxed"] if tx_summary else None,
                         "teacher_entropy": tx_summary["entropy"] if tx_summary else None,
                         "student_top1": st["top1"], "tx": tx_summary, "student": st})

        main_row = next((r for r in rows if r["ratio"] == float(relax.ratio)), rows[-1])
        if main_row["tx"] is not None:
            summary["teachers"]["multimodal"] = main_row["tx"]
        summary["student"] = main_row["student"]
        summary["ratio"] = main_row["ratio"]
        info = {k: v for k, v in vocab.info.items() if not isinstance(v, list) and k != "cache_hit"}
        for k, v in vocab.info.items():
            if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                info[f"{k}_min"], info[f"{k}_max"] = min(v), max(v)
        summary["relax"] = {"ratio": main_row["ratio"], "tau": float(relax.tau), "relaxer": relax.relaxer,
                            "nouns": len(vocab.words), "examples": vocab.words[:20], **info}
        summary["clip_pretrained"] = bool(encoder.info.pretrained)
        summary["clip"] = {"model": encoder.info.model, "weights": encoder.info.weights,
                           "pretrained": bool(encoder.info.pretrained), "image_size": encoder.info.image_size,
                           "embed_dim": encoder.embed_dim}
        summary["distill"] = {k: cfg.distill[k] for k in ("alpha", "temperature", "loss", "combine", "tx_text",
                                                             "tx_clip", "use_multimodal")}
        summary["selection"] = {"select_on": cfg.checkpoint.select_on, "metric": "top1 (test, best epoch)"}
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
        loader = DataLoader(test, batch_size=int(cfg.train.eval_batch_size), shuffle=False)
        out: dict = {"teachers": {}}
        for tcfg, sname in zip(cfg.teachers, self.teacher_stage_names(cfg.teachers)):
            if (ctx.run_dir / "checkpoints" / sname / "best.pt").exists():
                build_cfg = {k: v for k, v in tcfg.items() if k not in ("augment", "pretrained")}
                model = ctx.build_model("teachers", build_cfg, num_classes, seed_tag=sname)
                ctx.load_best(sname, model)
                out["teachers"][sname] = image_eval(model.eval(), loader)
        for sname in sorted(p.name for p in (ctx.run_dir / "checkpoints").glob("*")
                            if p.name == "baseline" or p.name.startswith("student")):
            model = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
            ctx.load_best(sname, model)
            out[sname] = image_eval(model.eval(), loader)
        return out
