"""Internal default plugin: the built-in ``kd`` method (Hinton et al., 2015), one or more teachers.

Stages: ``teacher.<name>`` for every teacher with ``train: true`` (a teacher with
``train: false`` must have ``pretrained`` weights), optionally ``baseline`` (the student trained
without distillation, ``baseline.enabled``), then ``student``::

    loss = alpha * CE(s, y) + (1 - alpha) * L_kd

``L_kd`` comes from the losses registry (``distill.loss``, default ``kl`` =
``T^2 * KL_batchmean(log_softmax(s/T) || softmax(t/T))``) and several teachers are combined by
``distill.combine`` (see :class:`TeacherCombiner`).

It is the engine's reference method: paper plugins can subclass :class:`KDMethod` and override
``build_teachers`` / ``distill_step`` or reuse :class:`TeacherCombiner`.
"""
from __future__ import annotations

import dataclasses

import kdkit
from kdkit.config import ConfigKey, base_config, plain_defaults, train_section
from kdkit.distill.teachers import check_teachers
from kdkit.distill.terms import agreement_samples, check_distill, distill_section
from kdkit.errors import ConfigError


def _plain_view(dataset):
    """The same samples as ``dataset`` without augmentation (index-aligned)."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        return Subset(_plain_view(dataset.dataset), dataset.indices)
    if hasattr(dataset, "with_augment"):
        return dataset.with_augment("none")
    return dataset


def _is_deterministic(dataset) -> bool:
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    aug = getattr(dataset, "augment", None)
    return aug in (None, "none", False)


class KDMethod:
    """Hinton knowledge distillation from one or more teachers to a student."""

    component_sections: dict = {}

    @classmethod
    def default_config(cls) -> dict:
        cfg = base_config()
        # real images by default (Debian's dataset-fashion-mnist): a class-balanced 5,000-image subset of the
        # training split, the whole test split, no augmentation (teacher outputs cached); < 2 minutes on 2 cores
        cfg["data"].update({"name": "fashion_mnist", "train_per_class": 500, "test_per_class": None,
                            "augment": "none"})
        cfg["train"] = train_section(epochs=10, batch_size=64, lr=0.05, weight_decay=5e-4)
        cfg["teachers"] = [{
            "name": ConfigKey("resnet14", "teacher: a name of the teachers registry"),
            "train": ConfigKey(True, "train the teacher first (false: load its `pretrained` weights file)"),
        }]
        cfg["teacher_train"] = train_section(epochs=10, batch_size=64, lr=0.1, weight_decay=5e-4)
        cfg["student"] = {"name": ConfigKey("resnet8", "student: a name of the students registry"), "width": 8}
        cfg["distill"] = distill_section()
        cfg["baseline"] = {"enabled": ConfigKey(True, "also train the student without distillation (stage baseline)")}
        return cfg

    @classmethod
    def check_config(cls, config: dict, registry=None) -> None:
        """The method's own rules, checked when the config is resolved (before a run directory exists)."""
        dcfg = config["distill"]
        if not config["teachers"]:
            raise ConfigError("config key teachers: at least one teacher is needed")
        check_teachers(config["teachers"])
        check_distill(dcfg, plain_defaults(cls.default_config()["distill"]), registry, len(config["teachers"]))

    # --- pieces subclasses may override ---------------------------------------------------

    @staticmethod
    def teacher_stage_names(teachers: list[dict]) -> list[str]:
        names = [t["name"] for t in teachers]
        return [f"teacher.{n}" if names.count(n) == 1 else f"teacher.{n}.{i}" for i, n in enumerate(names)]

    def build_teachers(self, ctx, train, val, test, num_classes) -> tuple[list, dict]:
        """Train (or load) every teacher; returns ``(frozen models, summary per stage)``."""
        from kdkit.distill.teachers import train_teachers

        cfg = ctx.config
        models, summary = [], {}
        names = self.teacher_stage_names(cfg["teachers"])
        for sname, (model, r) in zip(names, train_teachers(ctx, cfg["teachers"], names, num_classes, test,
                                                           lambda tcfg: (train, val), cfg["teacher_train"])):
            summary[sname] = ({"top1": r.get("top1"), "val_top1": r["val_top1"], "best_epoch": r["best_epoch"]}
                              if r["stage"] else {"top1": r["top1"], "pretrained": r["pretrained"]})
            models.append(model)
        return models, summary

    def run(self, ctx) -> dict:
        from kdkit.distill.step import DistillStep, build_distiller, check_taps
        from kdkit.distill.agreement import TeacherAgreement
        from kdkit.distill.cache import TeacherCache, describe_caches, feature_caches_fit
        from kdkit.engine import Stage, WithIndex
        from kdkit.engine.data import make_eval_loader, to_device
        from kdkit.seeding import derive_seed

        cfg = ctx.config
        dcfg = cfg["distill"]
        distiller = build_distiller(ctx.registry("losses"), dcfg, len(cfg["teachers"]),
                                    plain_defaults(self.default_config()["distill"]))
        samples = agreement_samples(dcfg)

        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        method = cfg.get("method") or "kd"
        ctx.log(f"{method}: {cfg['data']['name']} with {num_classes} classes; train {len(train)}, "
                f"val {len(val) if val is not None else 0}, test {len(test)}; seed {cfg['seed']}")
        if any(spec.uses_features for spec in distiller.specs):  # wrong module paths: fail before training
            check_taps(distiller, ctx.build_model("students", cfg["student"], num_classes, seed_tag="student"),
                       [ctx.build_model("teachers", {k: v for k, v in t.items() if k != "pretrained"}, num_classes,
                                        seed_tag=name)
                        for t, name in zip(cfg["teachers"], self.teacher_stage_names(cfg["teachers"]))])
        teachers, teacher_summary = self.build_teachers(ctx, train, val, test, num_classes)

        summary: dict = {"method": method, "teachers": teacher_summary}
        if cfg["baseline"]["enabled"]:
            base_model = ctx.build_model("students", cfg["student"], num_classes, seed_tag="student")
            res = ctx.fit(Stage(name="baseline", model=base_model, train_data=train, val_data=val, test_data=test))
            summary["baseline"] = {"top1": res.test_metrics.get("top1"), "val_top1": res.best_metrics.get("top1"),
                                   "best_epoch": res.best_epoch}

        # teacher outputs — the logits and the features the terms tap — cached once per sample index
        # when the teacher's input is deterministic; null (auto) caches features only when they fit
        use_cache = dcfg["teacher_cache"]
        if use_cache is None:
            use_cache = _is_deterministic(train)
        caches = None
        if use_cache:
            view = _plain_view(train)
            bs = int(cfg["train"]["eval_batch_size"])
            paths = distiller.teacher_paths(len(teachers))
            caches = [TeacherCache(t, view, ctx.device, bs, paths=p) for t, p in zip(teachers, paths)]
            if any(paths) and not feature_caches_fit(caches, dcfg["teacher_cache"], lambda m: ctx.log(f"{method}: {m}")):
                caches = None  # teachers run online, their taps give the features
        if caches is not None:
            for c in caches:
                c.build()
            ctx.log(f"{method}: {describe_caches(caches)}")
            if not _is_deterministic(train):
                ctx.log(f"{method}: teacher_cache=true with augmented training data: teachers see un-augmented images")

        student = ctx.build_model("students", cfg["student"], num_classes, seed_tag="student")
        agreement = TeacherAgreement(list(teacher_summary),
                                     [s.get("val_top1", s.get("top1")) for s in teacher_summary.values()],
                                     ctx.log, samples)

        def teacher_logits(x, y, idx):
            if caches is not None:
                return [c[idx] for c in caches]
            return [t(x) for t in teachers]

        def validation():
            for b in make_eval_loader(val, int(cfg["train"]["eval_batch_size"])):
                b = to_device(b, ctx.device)
                yield [t(b[0]) for t in teachers], b[1]

        # feature terms read a cached teacher's features from its cache, an online teacher's from its taps
        step = DistillStep(distiller, student, teacher_logits, caches if caches is not None else teachers,
                           agreement, validation if val is not None else None)
        train_indexed = WithIndex(train)
        step.materialize(student, train_indexed, int(cfg["train"]["batch_size"]), ctx.device,
                         derive_seed(ctx.seed, "init", "distill"))

        res = ctx.fit(Stage(name="student", model=student, train_data=train_indexed, val_data=val,
                            test_data=test, step_fn=step, taps=step.taps,
                            extra_modules={"distill": distiller, "agreement": agreement},
                            before_epoch_fn=step.before_epoch))
        agreement.finish()
        summary["student"] = {"top1": res.test_metrics.get("top1"), "val_top1": res.best_metrics.get("top1"),
                              "best_epoch": res.best_epoch, "name": cfg["student"]["name"]}
        summary["distill"] = {"combine": dcfg["combine"], "loss": dcfg["loss"], "alpha": distiller.ce_weight,
                              "temperature": distiller.temperature, "teacher_cache": bool(caches is not None),
                              "terms": [dataclasses.asdict(s) for s in distiller.specs],
                              "teacher_weights": [float(w) for w in distiller.combiner.weights.tolist()],
                              "teacher_agreement": agreement.report}
        summary["selection"] = {"select_on": cfg["checkpoint"]["select_on"], "metric": "top1 (test, best epoch)"}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary

    @staticmethod
    def results_table(summary: dict) -> str:
        rows = [(name, s.get("top1")) for name, s in summary.get("teachers", {}).items()]
        if "baseline" in summary:
            rows.append(("baseline (no KD)", summary["baseline"].get("top1")))
        rows.append((f"student ({summary.get('method', 'kd')}, {summary['distill']['combine']})",
                     summary["student"].get("top1")))
        width = max(len(r[0]) for r in rows)
        lines = ["", "results: test top-1 % (best epoch chosen on the " +
                 f"{summary['selection']['select_on']} split)", f"  {'model'.ljust(width)}  top-1"]
        for name, top1 in rows:
            lines.append(f"  {name.ljust(width)}  {top1:6.2f}" if top1 is not None else f"  {name.ljust(width)}     -")
        return "\n".join(lines)

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: the best checkpoint of every trained stage on the test split."""
        from kdkit.engine import dataset_classes

        cfg = ctx.config
        test = ctx.build_dataset(None, "test")
        num_classes = len(dataset_classes(test))
        out: dict = {"teachers": {}}
        for tcfg, sname in zip(cfg["teachers"], self.teacher_stage_names(cfg["teachers"])):
            if (ctx.run_dir / "checkpoints" / sname / "best.pt").exists():
                model = ctx.build_model("teachers", {**tcfg, "pretrained": None} if "pretrained" in tcfg else tcfg,
                                        num_classes, seed_tag=sname)
                ctx.load_best(sname, model)
                out["teachers"][sname] = ctx.evaluate(model, test)
        names = ["student"] + (["baseline"] if cfg["baseline"]["enabled"] else [])
        for sname in names:
            model = ctx.build_model("students", cfg["student"], num_classes, seed_tag="student")
            ctx.load_best(sname, model)
            out[sname] = ctx.evaluate(model, test)
        return out


@kdkit.hookimpl
def kdkit_register_methods(register):
    register("kd", KDMethod, description="Hinton knowledge distillation (alpha*CE + (1-alpha)*T^2*KL), "
                                         "one or more teachers, four combination rules")
