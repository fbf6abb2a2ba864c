"""One distillation step for a student stage, shared by every method.

:class:`DistillStep` is a stage's ``step_fn``: it runs the student (its tapped features captured),
asks the method for the teachers' logits of the batch (online, from a cache keyed by the sample
index, from a table, ...), collects the teachers' features (from their taps when they ran, from
their :class:`~kdkit.distill.cache.TeacherCache` by the batch's sample indices when cached), lets the
:class:`~kdkit.distill.agreement.TeacherAgreement` guard look at the first batches and returns the
:class:`~kdkit.distill.Distiller`'s ``(loss, logs)``.  :func:`build_distiller` turns a ``distill``
config section into the objective.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit.distill.combine import TeacherCombiner
from kdkit.distill.distiller import Distiller, build_term_loss
from kdkit.distill.taps import FeatureTaps, unwrap_model
from kdkit.distill.terms import TermSpec, check_distill
from kdkit.errors import ConfigError

__all__ = ["DistillStep", "build_distiller", "check_taps"]


def build_distiller(registry, distill: dict, num_teachers: int, defaults: dict | None = None) -> Distiller:
    """The objective of a ``distill`` section (``alpha``, ``temperature``, ``combine``,
    ``ema_momentum``, ``terms`` or the classic ``loss`` / ``loss_options``) for ``num_teachers``."""
    specs = check_distill(distill, defaults)
    alpha, temperature = float(distill["alpha"]), float(distill["temperature"])
    combiner = TeacherCombiner(distill["combine"], num_teachers, float(distill["ema_momentum"]))
    return Distiller(specs, [build_term_loss(registry, s) for s in specs], combiner, alpha, temperature)


def _is_cached(teacher) -> bool:
    """Is ``teacher`` a :class:`~kdkit.distill.cache.TeacherCache` (features looked up by sample index) rather than
    a network to tap?"""
    from kdkit.distill.cache import TeacherCache

    return isinstance(teacher, TeacherCache)


def _module_of(teacher) -> nn.Module | None:
    """The network behind a teacher feature source: the module itself, a cache's model, ``None``
    for a teacher without one (a :class:`~kdkit.distill.LogitsTeacher`)."""
    if isinstance(teacher, nn.Module):
        return unwrap_model(teacher)
    if _is_cached(teacher):
        return unwrap_model(teacher.model)
    return None


def _taps(distiller: Distiller, student: nn.Module, teachers: Sequence):
    """``(student taps or None, [teacher feature source or None])`` for the module paths the terms
    name: a source is the :class:`FeatureTaps` of a teacher network, or a teacher's cache."""
    paths = distiller.student_paths()
    student_partners, teacher_partners = _partners(distiller, student, teachers)
    student_taps = FeatureTaps(student, paths, owner="student", partners=student_partners) if paths else None
    teacher_taps: list = []
    for i, (teacher, tpaths) in enumerate(zip(teachers, distiller.teacher_paths(len(teachers)))):
        if tpaths and teacher is None:
            raise ConfigError(f"config key distill.terms: teacher {i} has no feature maps to tap "
                              f"({', '.join(tpaths)}); feature terms need a teacher network")
        if not tpaths:
            teacher_taps.append(None)
        elif _is_cached(teacher):
            missing = [p for p in tpaths if p not in teacher.paths]
            if missing:
                held = ", ".join(teacher.paths) or "no module"
                raise ConfigError(f"teacher {i}: its cache holds the outputs of {held}, not of {', '.join(missing)}, "
                                  "which distill.terms taps; build the cache with those paths (TeacherCache(paths=...))")
            teacher_taps.append(teacher)
        else:
            teacher_taps.append(FeatureTaps(teacher, tpaths, detach=True, owner=f"teacher {i}",
                                            partners=teacher_partners[i]))
    return student_taps, teacher_taps


def _partners(distiller: Distiller, student: nn.Module, teachers: Sequence) -> tuple[dict, list[dict]]:
    """For a wrong path's hint: ``(student path -> (teacher, its paired path, name), [teacher path ->
    (student, its paired path, "student")] per teacher)``, from each feature term's paired paths."""
    student_side: dict = {}
    teacher_side: list[dict] = [{} for _ in teachers]
    for spec in distiller.specs:
        if not spec.uses_features or spec.teacher_index >= len(teachers):
            continue
        teacher = teachers[spec.teacher_index]
        for s_path, t_path in zip(TermSpec.path_list(spec.student), TermSpec.path_list(spec.teacher)):
            if isinstance(teacher, nn.Module):
                student_side.setdefault(s_path, (teacher, t_path, f"teacher {spec.teacher_index}"))
            teacher_side[spec.teacher_index].setdefault(t_path, (student, s_path, "student"))
    return student_side, teacher_side


def check_taps(distiller: Distiller, student: nn.Module, teachers: Sequence[nn.Module | None]) -> None:
    """Resolve every module path the terms name on fresh models, so that a wrong path is reported
    before any stage trains (the error lists the nearest valid paths)."""
    _taps(distiller, student, teachers)


class DistillStep:
    """A student stage's ``step_fn`` (see the module docs).

    :param distiller: the objective.
    :param student: the student (its ``distiller.student_paths()`` are tapped).
    :param teacher_logits: ``teacher_logits(x, y, indices) -> [B x C per teacher]``, called under
        ``no_grad``; teachers it runs on ``x`` fill their taps (the student stage passes
        :meth:`kdkit.distill.stage.StudentTeachers.logits`).
    :param teachers: where feature terms get each teacher's features (config order): the teacher
        module (tapped; its features come from the forward ``teacher_logits`` runs), a
        :class:`~kdkit.distill.cache.TeacherCache` built with the paths the terms tap (its features are looked up
        by the batch's sample indices, and the teacher does not run), or ``None`` for a teacher
        without image feature maps (e.g. a lookup table).  The module (a cache's ``model``) also
        reaches the terms as ``DistillInputs.teacher_models`` and the trained student as
        ``DistillInputs.student_model``.
    :param agreement: the :class:`~kdkit.distill.agreement.TeacherAgreement` guard, or ``None``.
    :param validation: ``validation() -> iterable of ([B x C per teacher], labels)`` over the
        held-out split (``None`` without one; the student stage passes
        :meth:`~kdkit.distill.stage.StudentTeachers.validation`): ``distill.combine: inv_val_loss``
        weighs the teachers by their cross-entropy there, recomputed before every epoch.

    ``taps`` goes to the stage (``Stage(taps=step.taps)``) and :meth:`before_epoch` is the stage's
    ``before_epoch_fn`` (or is called from it).
    """

    def __init__(self, distiller: Distiller, student: nn.Module, teacher_logits: Callable,
                 teachers: Sequence[nn.Module | None], agreement=None,
                 validation: Callable[[], Iterable] | None = None):
        self.distiller = distiller
        self.teacher_logits = teacher_logits
        self.agreement = agreement
        self.validation = validation
        self.student_taps, self.teacher_taps = _taps(distiller, student, teachers)
        #: each teacher's frozen module (``None`` for a teacher without one), for terms that read a
        #: module of it (:meth:`kdkit.distill.DistillInputs.teacher_module`), cached or not
        self.teacher_models = [_module_of(t) for t in teachers]
        self.epoch = 0
        self.step = 0

    @property
    def taps(self) -> list[FeatureTaps]:
        """The taps the stage attaches (the student's, the online teachers'; caches need none)."""
        return [t for t in [self.student_taps, *self.teacher_taps] if isinstance(t, FeatureTaps)]

    def before_epoch(self, trainer, epoch: int) -> None:
        self.epoch, self.step = epoch, trainer.step
        if self.agreement is not None and epoch > 0:
            self.agreement.finish()  # fewer training samples than agreement_samples
        combiner = self.distiller.combiner
        if combiner.rule == "inv_val_loss" and combiner.per_teacher:
            combiner.set_weights_from_losses(self.validation_losses())

    @torch.no_grad()
    def validation_losses(self) -> list[float]:
        """Each teacher's mean cross-entropy on the held-out split."""
        if self.validation is None:
            raise ConfigError("distill.combine=inv_val_loss needs a validation split (data.val_fraction > 0 "
                              "and checkpoint.select_on other than last)")
        totals: list[float] = []
        n = 0
        for logits, labels in self.validation():
            totals = totals or [0.0] * len(logits)
            for i, t in enumerate(logits):
                totals[i] += F.cross_entropy(t.float(), labels, reduction="sum").item()
            n += labels.numel()
        return [total / max(n, 1) for total in totals]

    def _outputs(self, model, batch):
        x, y, idx = batch[0], batch[1], batch[-1]
        # teachers first: their activations are freed before the student's graph is built, which spares
        # the allocator (benchmarks/train_step.py: +10-27 % images/s on CPU with glibc's default malloc)
        with torch.no_grad():
            t_logits = list(self.teacher_logits(x, y, idx))
        t_feats = [{} if t is None else t.pop() if isinstance(t, FeatureTaps) else t.features(idx)
                   for t in self.teacher_taps]
        s_logits = model(x)
        s_feats = self.student_taps.pop() if self.student_taps is not None else {}
        return s_logits, t_logits, y, idx, s_feats, t_feats

    def __call__(self, model, batch):
        s_logits, t_logits, y, idx, s_feats, t_feats = self._outputs(model, batch)
        if self.agreement is not None:
            self.agreement.observe(t_logits, y)
        out = self.distiller(s_logits, t_logits, y, idx, s_feats, t_feats, epoch=self.epoch, step=self.step,
                             student_model=unwrap_model(model), teacher_models=self.teacher_models)
        self.step += 1
        return out

    @torch.no_grad()
    def materialize(self, student: nn.Module, train_data, batch_size: int, device, seed: int) -> None:
        """Before the stage: let terms that own modules build them from the first batch of
        ``train_data`` (the stage's indexed training data), with the RNG seeded by ``seed`` (module
        initialisation draws from it) and the student in eval mode (neither BatchNorm statistics
        nor dropout change).  It also tells the terms the size of the training split
        (``DistillInputs.num_samples``); nothing else happens when no term owns modules."""
        self.distiller.num_samples = len(train_data)
        if not self.distiller.has_modules:
            return
        from kdkit.engine.data import make_eval_loader, to_device
        from kdkit.seeding import seed_everything

        seed_everything(seed)
        batch = to_device(next(iter(make_eval_loader(train_data, batch_size))), device)
        student.to(device)
        was = student.training
        student.eval()
        for taps in self.taps:
            taps.attach()
        try:
            s_logits, t_logits, y, idx, s_feats, t_feats = self._outputs(student, batch)
            self.distiller.materialize(s_logits, t_logits, y, idx, s_feats, t_feats, student_model=student,
                                       teacher_models=self.teacher_models)
        finally:
            for taps in self.taps:
                taps.remove()
            student.train(was)
