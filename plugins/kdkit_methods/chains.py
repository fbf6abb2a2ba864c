"""Chains of distillation steps: teacher-assistant KD (``takd``) and born-again networks (``born_again``).

Both are sequences of kd steps — a trained network frozen and distilled into the next one — built from
:class:`kdkit.distill.StudentStage` (teacher cache, agreement check, the ``distill`` objective, the
engine's training): ``StudentStage.distil(..., name=<stage>, student=<model>)`` trains the next network
of the chain, and its trained model, frozen, is the teacher of the step after it.

**TAKD** — Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, *Improved Knowledge Distillation
via Teacher Assistant*, AAAI 2020, arXiv:1902.03393 (imirzadeh/Teacher-Assistant-Knowledge-Distillation).
Stages ``teacher.<name>``, optionally ``baseline``, ``assistant.0``, ``assistant.1``, ..., ``student``:
each step ``(1 - lambda) * CE + lambda * T^2 * KL`` (the paper's Eq. 3; kdkit's ``distill.alpha`` is
``1 - lambda``).  The reference has no fixed ``T`` and ``lambda``: its NNI search space
(``search_space.json``) tunes them per pair over ``T in {1, 2, 5, 10, 15, 20}`` and
``lambda in {0.05, 0.10, ..., 1.0}``; kdkit keeps kd's defaults (``alpha 0.5``, ``T 4``).  The reference's
``nn.KLDivLoss()`` averages over batch *and* classes (PyTorch's ``reduction='mean'``), i.e. its KD term is
kdkit's ``batchmean`` KL divided by the number of classes; kdkit uses ``batchmean``, the paper's formula.

**Born-again networks** — Furlanello, Lipton, Tschannen, Itti & Anandkumar, *Born-Again Neural Networks*,
ICML 2018, arXiv:1805.04770.  Stages ``generation.0`` (the student's architecture trained on the labels),
then ``generation.k`` distilled from ``generation.k-1`` for ``k = 1 .. generations - 1``.  The default
objective is the paper's BAN: the teacher's output distribution alone (``distill.alpha 0``, no label
term) at temperature 1 (the paper matches the teacher's softmax output; it uses no temperature);
``--set distill.alpha=0.5`` gives its BAN+L variant (the label loss added, here with equal weights).  The
authors published no code: the defaults follow the paper's text.  The ensemble of the generations
(BANE, the mean of their softmax outputs) is evaluated at the end.  kdkit's KL has the same gradient as
the paper's cross-entropy to the teacher's distribution (they differ by the teacher's entropy, a
constant).  The paper's CWTM and DKPP variants are not implemented.
"""
from __future__ import annotations

from itertools import pairwise
from typing import ClassVar

import kdkit
from kdkit import ConfigError, ConfigKey, lazy_import
from kdkit.distill import KDMethod, StudentStage, distill_section
from kdkit_methods.pipelines import kd_defaults, log_data, results_table

nets = lazy_import("kdkit_methods.pipeline_nets")

__all__ = ["BornAgainMethod", "TAKDMethod"]


def _distill_summary(dcfg, result) -> dict:
    """The objective a chain step was trained with, as ``kd``'s summary gives it."""
    return {"combine": dcfg.combine, "loss": dcfg.loss, "alpha": result.distiller.ce_weight,
            "temperature": result.distiller.temperature, "teacher_cache": result.cached,
            "teacher_cache_mode": result.cache_mode, "terms": result.terms}


def _reference(summary: dict):
    """A trained (or loaded) network's held-out top-1, for the next step's agreement check."""
    return summary.get("val_top1", summary.get("top1"))


class TAKDMethod(KDMethod):
    """Teacher-assistant KD: teacher -> assistant(s) -> student, plain KD at each step (see the module docs)."""

    component_sections: ClassVar[dict[str, str]] = {"assistants[]": "students"}

    @classmethod
    def default_config(cls) -> dict:
        cfg = super().default_config()
        # between kd's teacher (resnet14, width 16) and student (resnet8, width 8)
        cfg["assistants"] = [{"name": ConfigKey("resnet8", "an assistant: a name of the students registry, "
                                                           "the chain's order is the list's"), "width": 16}]
        return cfg

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        super().check_config(config, registry)
        if len(config.teachers) != 1:
            raise ConfigError(f"config key teachers: takd distils one teacher down a chain, got {len(config.teachers)} "
                              "teachers; keep one (several teachers: --method kd)")
        if not config.assistants:
            raise ConfigError("config key assistants: takd needs at least one assistant "
                              "(e.g. assistants=[{name: resnet8, width: 16}]); without one it is --method kd")

    @classmethod
    def stages(cls, config) -> list[str]:
        """kd's stages with the assistants' before the student's."""
        return [*super().stages(config)[:-1], *cls.assistant_stage_names(config.assistants), "student"]

    @staticmethod
    def assistant_stage_names(assistants) -> list[str]:
        return [f"assistant.{i}" for i in range(len(assistants))]

    def run(self, ctx) -> dict:
        cfg = ctx.config
        stage = self.student_stage(ctx)
        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        log_data(ctx, train, val, test, num_classes)
        stage.check_taps(num_classes)
        teachers, teacher_summary = self.build_teachers(ctx, train, val, test, num_classes, stage)

        summary: dict = {"method": cfg.method, "teachers": teacher_summary}
        if cfg.baseline.enabled:
            summary["baseline"] = stage.fit_baseline(num_classes, train, val, test)

        teacher, teacher_name = teachers[0], stage.teacher_names[0]
        reference = _reference(teacher_summary[teacher_name])
        assistants = []
        for acfg, name in zip(cfg.assistants, self.assistant_stage_names(cfg.assistants)):
            model = ctx.build_model("students", acfg, num_classes, seed_tag=name)
            result = stage.distil(num_classes, [teacher], train, val, test, references={teacher_name: reference},
                                  name=name, seed_tag=name, student=model)
            assistants.append({**result.summary, "name": acfg.name, "teacher": teacher_name})
            # the trained assistant, frozen, teaches the next step
            teacher, teacher_name, reference = kdkit.freeze(result.model), name, _reference(result.summary)
        student = stage.distil(num_classes, [teacher], train, val, test, references={teacher_name: reference})
        summary["assistants"] = assistants
        summary["student"] = {**student.summary, "name": cfg.student.name, "teacher": teacher_name}
        summary["distill"] = _distill_summary(cfg.distill, student)
        summary["selection"] = {"select_on": cfg.checkpoint.select_on, "metric": "top1 (test, best epoch)"}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary

    @staticmethod
    def results_table(summary: dict) -> str:
        rows = [(name, s.get("top1")) for name, s in summary["teachers"].items()]
        if "baseline" in summary:
            rows.append(("baseline (no KD)", summary["baseline"].get("top1")))
        rows += [(f"assistant.{i} ({a['name']}, from {a['teacher']})", a["top1"])
                 for i, a in enumerate(summary["assistants"])]
        rows.append((f"student (takd, from {summary['student']['teacher']})", summary["student"]["top1"]))
        return results_table(rows, summary["selection"]["select_on"])

    def stage_model(self, ctx, stage: str, num_classes: int):
        """``kdkit export``: the model of ``stage`` (a teacher, ``baseline``, an assistant or ``student``),
        its best checkpoint loaded, in eval mode."""
        cfg = ctx.config
        assistants = self.assistant_stage_names(cfg.assistants)
        teachers = self.teacher_stage_names(cfg.teachers)
        if stage in assistants:
            model = ctx.build_model("students", cfg.assistants[assistants.index(stage)], num_classes, seed_tag=stage)
        elif stage in teachers:
            tcfg = cfg.teachers[teachers.index(stage)]
            model = ctx.build_model("teachers", {**tcfg, "pretrained": None} if "pretrained" in tcfg else tcfg,
                                    num_classes, seed_tag=stage)
        elif stage in ("student", "baseline"):
            model = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
        else:
            raise kdkit.KdkitError(f"--stage {stage}: the stages of takd are {', '.join(teachers)}, baseline, "
                                   f"{', '.join(assistants)} and student")
        ctx.load_best(stage, model)
        return model.eval()

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: kd's stages and every assistant's best checkpoint on the test split."""
        out = super().evaluate(ctx)
        test = ctx.build_dataset(None, "test")
        for acfg, name in zip(ctx.config.assistants, self.assistant_stage_names(ctx.config.assistants)):
            model = ctx.build_model("students", acfg, len(test.classes), seed_tag=name)
            ctx.load_best(name, model)
            out[name] = ctx.evaluate(model, test)
        return out


# ------------------------------------------------------------------------------------------- BAN
class BornAgainMethod(kdkit.Method):
    """Born-again networks: generations of the student, each distilled from the last (see the module docs)."""

    @classmethod
    def default_config(cls) -> dict:
        cfg = kd_defaults()  # kd's data, train and student defaults
        for key in ("teachers", "teacher_train", "baseline"):
            del cfg[key]
        # the paper's BAN: the teacher's output distribution alone, no temperature
        cfg["distill"] = distill_section(alpha=0.0, temperature=1.0)
        cfg["generations"] = ConfigKey(3, "networks in the sequence: generation 0 on the labels, each next one "
                                          "distilled from the one before", range="[2, inf)")
        cfg["ensemble"] = ConfigKey(True, "also evaluate the ensemble of all generations (BANE: mean softmax)")
        return cfg

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        # no configured teacher: the one teacher of each generation is the previous generation (extra_teachers)
        StudentStage.check_config(config, cls.default_config()["distill"], registry, extra_teachers=1, teachers=[])

    @classmethod
    def stages(cls, config) -> list[str]:
        return cls.stage_names(config.generations)

    @staticmethod
    def stage_names(generations: int) -> list[str]:
        return [f"generation.{k}" for k in range(int(generations))]

    def run(self, ctx) -> dict:
        cfg = ctx.config
        stage = StudentStage(ctx, self.default_config()["distill"], [], extra_teachers=1, teachers=[])
        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        log_data(ctx, train, val, test, num_classes)
        names = self.stage_names(cfg.generations)
        if stage.uses_features:  # a wrong module path fails before generation 0 trains
            from kdkit.distill import FeatureTaps

            probe = ctx.build_model("students", cfg.student, num_classes, seed_tag=names[0])
            FeatureTaps(probe, stage.distiller.student_paths(), owner="student")
            FeatureTaps(probe, stage.distiller.teacher_paths(1)[0], owner="teacher (the previous generation)")

        model = ctx.build_model("students", cfg.student, num_classes, seed_tag=names[0])
        first = stage.fit_baseline(num_classes, train, val, test, name=names[0], model=model)
        generations = [{**first, "name": names[0], "teacher": None}]
        models = [kdkit.freeze(model)]
        result = None
        for previous, name in pairwise(names):
            model = ctx.build_model("students", cfg.student, num_classes, seed_tag=name)
            result = stage.distil(num_classes, [models[-1]], train, val, test,
                                  references={previous: _reference(generations[-1])}, name=name, seed_tag=name,
                                  student=model)
            generations.append({**result.summary, "name": name, "teacher": previous})
            models.append(kdkit.freeze(result.model))  # generation k, frozen, teaches generation k + 1

        summary: dict = {"method": cfg.method, "generations": generations, "student": generations[-1],
                         "distill": _distill_summary(cfg.distill, result),
                         "selection": {"select_on": cfg.checkpoint.select_on, "metric": "top1 (test, best epoch)"}}
        if cfg.ensemble:
            summary["ensemble"] = {**ctx.evaluate(nets.Ensemble(models), test), "members": names}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary

    @staticmethod
    def results_table(summary: dict) -> str:
        rows = [(f"{g['name']} ({'labels' if g['teacher'] is None else 'from ' + g['teacher']})", g["top1"])
                for g in summary["generations"]]
        if "ensemble" in summary:
            rows.append((f"ensemble of {len(summary['ensemble']['members'])} (BANE)", summary["ensemble"]["top1"]))
        return results_table(rows, summary["selection"]["select_on"])

    def stage_model(self, ctx, stage: str, num_classes: int):
        """``kdkit export``: generation ``k``'s network (stage ``generation.k``), best epoch, in eval mode."""
        names = self.stage_names(ctx.config.generations)
        if stage not in names:
            raise kdkit.KdkitError(f"--stage {stage}: the stages of born_again are {', '.join(names)}")
        model = ctx.build_model("students", ctx.config.student, num_classes, seed_tag=stage)
        ctx.load_best(stage, model)
        return model.eval()

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: every generation's best checkpoint on the test split, and their ensemble."""
        cfg = ctx.config
        test = ctx.build_dataset(None, "test")
        out: dict = {}
        models = []
        for name in self.stage_names(cfg.generations):
            model = ctx.build_model("students", cfg.student, len(test.classes), seed_tag=name)
            ctx.load_best(name, model)
            out[name] = ctx.evaluate(model, test)
            models.append(kdkit.freeze(model))
        if cfg.ensemble:
            out["ensemble"] = ctx.evaluate(nets.Ensemble(models), test)
        return out
