"""Internal default plugin: the built-in ``kd`` method (Hinton et al., 2015), one or more teachers.

Stages: ``teacher.<name>`` for every teacher with ``train: true`` (a teacher with
``train: false`` must have ``pretrained`` weights), optionally ``baseline`` (the student trained
without distillation, ``baseline.enabled``), then ``student``::

    loss = alpha * CE(s, y) + (1 - alpha) * L_kd

``L_kd`` comes from the losses registry (``distill.loss``, default ``kl`` =
``T^2 * KL_batchmean(log_softmax(s/T) || softmax(t/T))``) and several teachers are combined by
``distill.combine`` (see :class:`TeacherCombiner`).

The stages are those of :class:`kdkit.distill.StudentStage`, the student stage every distillation
method runs; :class:`KDMethod` adds the data, the teachers' summary and the results table.  A method
that is kd with other ``distill`` defaults subclasses it and overrides ``default_config`` (the
presets of ``kdkit_methods`` do); ``build_teachers`` and ``student_stage`` are the other seams.
"""
from __future__ import annotations

import re
from pathlib import Path

import kdkit
from kdkit.config import ConfigKey, base_config, train_section
from kdkit.distill.stage import StudentStage
from kdkit.distill.terms import distill_section
from kdkit.methodspec import Method



def stage_name_part(model_name: str) -> str:
    """``model_name`` as one path component of a stage name (stage names are checkpoint folders):
    a registered name as it is; a model source's ``prefix:PATH`` by its prefix and the path's last part
    (``hf:/models/tiny-bert/`` -> ``hf-tiny-bert``, ``torchvision:resnet18`` -> ``torchvision-resnet18``)."""
    if ":" not in model_name and "/" not in model_name:
        return model_name
    prefix, _, rest = model_name.partition(":")
    return re.sub(r"[^\w.-]+", "-", f"{prefix}-{Path(rest.rstrip('/')).name or rest}").strip("-")

class KDMethod(Method):
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
        StudentStage.check_config(config, cls.default_config()["distill"], registry)

    @classmethod
    def stages(cls, config) -> list[str]:
        """The trained teachers' stages, ``baseline`` (``baseline.enabled``), then ``student``."""
        return cls.teacher_stages(config) + (["baseline"] if config.baseline.enabled else []) + ["student"]

    @classmethod
    def teacher_stages(cls, config) -> list[str]:
        """The stages of the teachers trained here (``train: true``; a loaded teacher has none)."""
        return [name for tcfg, name in zip(config.teachers, cls.teacher_stage_names(config.teachers)) if tcfg.train]

    # --- pieces subclasses may override ---------------------------------------------------

    @staticmethod
    def teacher_stage_names(teachers: list[dict]) -> list[str]:
        names = [stage_name_part(t["name"]) for t in teachers]
        return [f"teacher.{n}" if names.count(n) == 1 else f"teacher.{n}.{i}" for i, n in enumerate(names)]

    def student_stage(self, ctx) -> StudentStage:
        """The run's :class:`~kdkit.distill.StudentStage` (this method's ``distill`` defaults, its teachers' names)."""
        return StudentStage(ctx, self.default_config()["distill"], self.teacher_stage_names(ctx.config.teachers))

    def build_teachers(self, ctx, train, val, test, num_classes, stage: StudentStage | None = None) -> tuple[list, dict]:
        """Train (or load) every teacher; returns ``(frozen models, summary per stage)``."""
        stage = stage if stage is not None else self.student_stage(ctx)
        models, summary = [], {}
        for sname, (model, r) in zip(stage.teacher_names,
                                     stage.train_teachers(num_classes, test, lambda tcfg: (train, val))):
            summary[sname] = ({"top1": r.get("top1"), "val_top1": r["val_top1"], "best_epoch": r["best_epoch"],
                               **({"stopped_epoch": r["stopped_epoch"]} if "stopped_epoch" in r else {})}
                              if r["stage"] else {"top1": r["top1"], "pretrained": r["pretrained"]})
            models.append(model)
        return models, summary

    def run(self, ctx) -> dict:
        cfg = ctx.config
        dcfg = cfg.distill
        stage = self.student_stage(ctx)  # the objective is built (and checked) before anything trains

        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        method = cfg.method
        ctx.log(f"{method}: {cfg.data.name} with {num_classes} classes; train {len(train)}, "
                f"val {len(val) if val is not None else 0}, test {len(test)}; seed {cfg.seed}")
        stage.check_taps(num_classes)  # wrong module paths: fail before training
        teachers, teacher_summary = self.build_teachers(ctx, train, val, test, num_classes, stage)

        summary: dict = {"method": method, "teachers": teacher_summary}
        if cfg.baseline.enabled:
            summary["baseline"] = stage.fit_baseline(num_classes, train, val, test)

        student = stage.distil(num_classes, teachers, train, val, test,
                               references={name: s.get("val_top1", s.get("top1")) for name, s in teacher_summary.items()})
        distiller = student.distiller
        summary["student"] = {**student.summary, "name": cfg.student.name}
        summary["distill"] = {"combine": dcfg.combine, "loss": dcfg.loss, "alpha": distiller.ce_weight,
                              "temperature": distiller.temperature, "teacher_cache": student.cached,
                              "teacher_cache_mode": student.cache_mode, "teacher_cache_reason": student.cache_reason,
                              "terms": student.terms, "teacher_weights": student.teacher_weights,
                              "teacher_agreement": student.agreement}
        summary["selection"] = {"select_on": cfg.checkpoint.select_on, "metric": "top1 (test, best epoch)"}
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
        for tcfg, sname in zip(cfg.teachers, self.teacher_stage_names(cfg.teachers)):
            if (ctx.run_dir / "checkpoints" / sname / "best.pt").exists():
                model = ctx.build_model("teachers", {**tcfg, "pretrained": None} if "pretrained" in tcfg else tcfg,
                                        num_classes, seed_tag=sname)
                ctx.load_best(sname, model)
                out["teachers"][sname] = ctx.evaluate(model, test)
        names = ["student"] + (["baseline"] if cfg.baseline.enabled else [])
        for sname in names:
            model = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
            ctx.load_best(sname, model)
            out[sname] = ctx.evaluate(model, test)
        return out


@kdkit.hookimpl
def kdkit_register_methods(register):
    register("kd", KDMethod, description="Hinton knowledge distillation (alpha*CE + (1-alpha)*T^2*KL), "
                                         "one or more teachers, four combination rules")
