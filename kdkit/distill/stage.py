"""The student stage — one for every distillation method (``kd``, its presets, ``wordnet_relax``).

:class:`StudentStage` owns what a distillation method does around its teachers and student:

1. *check* — the ``teachers`` and ``distill`` sections (:meth:`StudentStage.check_config`, from a
   method's ``check_config``, before a run directory exists), the objective built and every module
   path the terms tap resolved on fresh models (:meth:`StudentStage.check_taps`) before anything trains;
2. *teachers* — trained as stages of the run or loaded from their weights, frozen
   (:meth:`StudentStage.train_teachers`); the student alone as the ``baseline`` stage when asked for
   (:meth:`StudentStage.fit_baseline`);
3. *teacher cache* — the teachers' logits and tapped features computed once per sample index when
   their input is deterministic (``distill.teacher_cache``);
4. *agreement check* — :class:`~kdkit.distill.agreement.TeacherAgreement` on the first training samples;
5. *distil* — the objective of ``distill`` as the stage's step, trained by the engine (``ctx.fit``),
   and *evaluate* — the best epoch's student on the test split (:meth:`StudentStage.distil`).

A method brings what is its own: its teachers' data and names, teachers that are not image networks
(:class:`LogitsTeacher`: a logit table, a model on other inputs) and its summary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from kdkit.errors import ConfigError

if TYPE_CHECKING:
    import torch.nn as nn

    from kdkit.distill.distiller import Distiller
    from kdkit.engine.context import RunContext
    from kdkit.engine.trainer import StageResult

__all__ = ["StudentStage", "LogitsTeacher", "StudentResult"]


@dataclass(frozen=True)
class LogitsTeacher:
    """A teacher that is not an image network run on the student's batch — a table of precomputed
    logits, a model on other inputs: its logits come from functions, it has no feature maps to tap
    and is never cached.

    :param logits: ``logits(x, y, indices) -> B x C`` for a training batch (``indices``: the
        samples' positions in the training split), called under ``no_grad``.
    :param validation_logits: ``validation_logits(x, y, start) -> B x C`` for a batch of the
        held-out split whose first sample is at position ``start`` there; needed only when the
        teachers are weighed on it (``distill.combine: inv_val_loss``).
    """

    logits: Callable[..., Any]
    validation_logits: Callable[..., Any] | None = None


@dataclass(frozen=True)
class StudentResult:
    """What :meth:`StudentStage.distil` returns."""

    #: the stage name (``student``, ``student.r0.5``, ...)
    name: str
    #: the trained student, its best epoch's weights loaded
    model: "nn.Module"
    #: the engine's result of the stage (test metrics at the best epoch, ...)
    result: "StageResult"
    #: the objective the student was trained with (its terms, teacher weights, temperature ...)
    distiller: "Distiller"
    #: the teacher-agreement report (``None`` when the check is off)
    agreement: dict | None
    #: whether the teachers' outputs came from a teacher cache
    cached: bool
    #: where they were kept: ``memory``, ``disk`` or ``off`` (:class:`~kdkit.distill.cache.CachePlan`)
    cache_mode: str = "off"
    #: why (the log says it too)
    cache_reason: str = ""

    @property
    def summary(self) -> dict:
        """``{"top1": test top-1 at the best epoch, "val_top1": validation top-1 there, "best_epoch"}``."""
        return _top1_summary(self.result)

    @property
    def terms(self) -> list[dict]:
        """The objective's terms as plain dicts."""
        return [dataclasses.asdict(spec) for spec in self.distiller.specs]

    @property
    def teacher_weights(self) -> list[float]:
        """The teachers' weights at the end of training (``distill.combine``)."""
        return [float(w) for w in self.distiller.combiner.weights.tolist()]


def _top1_summary(result: "StageResult") -> dict:
    """A trained stage in a run summary: test top-1 at the best epoch, validation top-1 there, that epoch
    (and ``stopped_epoch`` when ``train.early_stop`` ended the stage early)."""
    out = {"top1": result.test_metrics.get("top1"), "val_top1": result.best_metrics.get("top1"),
           "best_epoch": result.best_epoch}
    if result.stopped_epoch is not None:
        out["stopped_epoch"] = result.stopped_epoch
    return out


def _plain_view(dataset):
    """The same samples as ``dataset`` without augmentation (index-aligned)."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        return Subset(_plain_view(dataset.dataset), dataset.indices)
    if hasattr(dataset, "with_augment"):
        return dataset.with_augment("none")
    return dataset


def _augmentation(dataset) -> str:
    """``augment=LEVEL`` of the base dataset behind ``Subset`` s ("" when it has none)."""
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    aug = getattr(dataset, "augment", None)
    return f"data.augment={aug}" if aug not in (None, "none", False) else ""


def _is_deterministic(dataset) -> bool:
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    aug = getattr(dataset, "augment", None)
    return aug in (None, "none", False)


class StudentStage:
    """The student stage of one run (see the module docs).

    :param ctx: the run's :class:`~kdkit.RunContext`; its config has the ``teachers``, ``teacher_train``,
        ``student``, ``train`` and ``distill`` sections of :class:`~kdkit.distill.KDMethod`.
    :param defaults: the method's declared ``distill`` section (``default_config()["distill"]``):
        ``distill.terms`` may not be combined with a ``distill.loss`` other than its default.
    :param teacher_names: the stage name of each ``teachers`` item (``teacher.<name>``, ...).
    :param model_options: ``model_options(teacher_config) -> section`` given to ``ctx.build_model``
        for a teacher (default: the teacher's config; keys that are the method's own go here).
    :param extra_teachers: how many teachers the method adds after the ``teachers`` items:
        :class:`LogitsTeacher` s, or networks the method trained itself (an assistant, the previous
        generation).
    :param distill: the ``distill`` section the objective is built from (default: the run config's);
        a method with a second objective — an initialisation stage before the main one — builds a
        second stage with its own section.
    :param teachers: the configured teacher items (default: the run config's ``teachers``); ``[]``
        for a method whose teachers are all its own (born-again generations: ``extra_teachers``).

    Building it builds the objective of ``distill``, so a section that cannot be built fails before
    anything trains.
    """

    def __init__(self, ctx: "RunContext", defaults: Mapping, teacher_names: Sequence[str],
                 model_options: Callable[[dict], dict] | None = None, extra_teachers: int = 0,
                 distill: Mapping | None = None, teachers: Sequence[Mapping] | None = None):
        from kdkit.config import plain_defaults

        self.ctx = ctx
        self.config = ctx.config
        self.defaults = plain_defaults(defaults)
        self.teachers = list(ctx.config.teachers if teachers is None else teachers)
        self.teacher_names = list(teacher_names)
        if len(self.teacher_names) != len(self.teachers):
            raise ValueError("StudentStage: one stage name per teachers item")
        self.model_options = model_options or (lambda tcfg: tcfg)
        self.num_teachers = len(self.teachers) + int(extra_teachers)
        self.distill_config = self.config.distill if distill is None else distill
        #: the objective: checked now, trained by the first :meth:`distil` (a later one builds its own)
        self.distiller = self.build_distiller()
        self._distiller_trained = False

    # --- checks -------------------------------------------------------------------------------

    @staticmethod
    def check_config(config: dict, defaults: Mapping, registry=None, extra_teachers: int = 0,
                     distill: Mapping | None = None, teachers: Sequence[Mapping] | None = None) -> None:
        """The rules of the ``teachers`` and ``distill`` sections, for a method's ``check_config``
        (before a run directory exists): at least one teacher, ``train: false`` only with
        ``pretrained`` weights, the terms' losses registered with the options they take, a feature
        term's ``teacher_index`` below the number of teachers (``teachers`` plus ``extra_teachers``).
        ``distill`` / ``teachers``: the section and teacher items to check instead of ``config``'s (as
        the constructor's)."""
        from kdkit.config import plain_defaults
        from kdkit.distill.teachers import check_teachers
        from kdkit.distill.terms import check_distill

        teachers = config.teachers if teachers is None else teachers
        num_teachers = len(teachers) + int(extra_teachers)
        if num_teachers == 0:
            raise ConfigError("config key teachers: at least one teacher is needed")
        check_teachers(teachers)
        check_distill(config.distill if distill is None else distill, plain_defaults(defaults), registry,
                      num_teachers)

    def build_distiller(self) -> "Distiller":
        """A new objective of the ``distill`` section (each student stage trains its own)."""
        from kdkit.distill.step import build_distiller

        return build_distiller(self.ctx.registry("losses"), self.distill_config, self.num_teachers, self.defaults)

    @property
    def uses_features(self) -> bool:
        """Does a term distil features (tapped modules) rather than logits only?"""
        return any(spec.uses_features for spec in self.distiller.specs)

    def check_taps(self, num_classes: int) -> None:
        """Build the student and each teacher once (without its ``pretrained`` weights) and resolve
        every module path the terms tap on them, so that a model that cannot be built (a ``py:``
        factory that raises, an ``hf:`` directory that does not load) or a wrong path fails before
        anything trains, with the nearest valid paths.

        Without feature terms the random state is restored afterwards (the run's numbers do not
        depend on this check); with them it is left as the tap check has always left it."""
        from kdkit.distill.step import check_taps
        from kdkit.seeding import capture_rng_state, restore_rng_state

        ctx = self.ctx
        state = None if self.uses_features else capture_rng_state()
        student = ctx.build_model("students", self.config.student, num_classes, seed_tag="student")
        teachers = [ctx.build_model("teachers", {k: v for k, v in self.model_options(tcfg).items() if k != "pretrained"},
                                    num_classes, seed_tag=name)
                    for tcfg, name in zip(self.teachers, self.teacher_names)]
        if state is not None:
            restore_rng_state(state)
            return
        check_taps(self.distiller, student, teachers + [None] * (self.num_teachers - len(teachers)))

    # --- teachers and baseline ----------------------------------------------------------------

    def train_teachers(self, num_classes: int, test, data: Callable[[dict], tuple],
                       eval_fn: Callable | None = None) -> list[tuple["nn.Module", dict]]:
        """Train (``train: true``, as the stage of its name, optimised by ``teacher_train``) or load
        (``train: false`` + ``pretrained``) every ``teachers`` item; frozen, in config order.

        :param data: ``data(teacher_config) -> (train, val)`` — each teacher's training data.
        :param eval_fn: the teacher stages' evaluation (default: top-1 and loss).

        Returns ``[(model, result)]``: ``result`` holds the test metrics (``top1``, ...), ``stage``
        (``None`` when loaded, then ``pretrained``), for trained teachers ``val_top1`` and ``best_epoch``.
        """
        from kdkit.distill.teachers import train_teachers

        return train_teachers(self.ctx, self.teachers, self.teacher_names, num_classes, test, data,
                              self.config.teacher_train, eval_fn=eval_fn, model_options=self.model_options)

    def fit_baseline(self, num_classes: int, train, val, test, eval_fn: Callable | None = None,
                     name: str = "baseline", model: "nn.Module | None" = None) -> dict:
        """The student trained without distillation (stage ``name``, default ``baseline``); returns
        ``{"top1", "val_top1", "best_epoch"}``.  ``model``: the network to train (default: a new
        ``student`` model of the config, built with ``seed_tag="student"``)."""
        from kdkit.engine import Stage

        if model is None:
            model = self.ctx.build_model("students", self.config.student, num_classes, seed_tag="student")
        res = self.ctx.fit(Stage(name=name, model=model, train_data=train, val_data=val, test_data=test,
                                 eval_fn=eval_fn))
        return _top1_summary(res)

    # --- the student ----------------------------------------------------------------------------

    def distil(self, num_classes: int, teachers: Sequence["nn.Module | LogitsTeacher"], train, val, test, *,
               references: Mapping[str, float | None], name: str = "student", eval_fn: Callable | None = None,
               cache: bool | None = None, seed_tag: str | None = None,
               student: "nn.Module | None" = None, optimizer: Mapping | None = None) -> StudentResult:
        """Distil ``teachers`` into a new student (stage ``name``): teacher cache, agreement check,
        the objective as the step, the engine's training and the test evaluation of the best epoch.

        :param teachers: in the order of the objective's teachers: frozen image networks (run on the
            student's batch, or cached) and :class:`LogitsTeacher` s.
        :param references: name -> held-out top-1 of each teacher, in the same order, for the
            agreement check (``None`` where unknown).
        :param eval_fn: the stage's evaluation (default: top-1 and loss).
        :param cache: cache the image teachers' outputs per sample index: ``None`` (default) as
            ``distill.teacher_cache`` says (its ``null``: when the training data is un-augmented and
            tapped features fit in memory), ``False``: run them on every batch, ``True``: always.
        :param seed_tag: the terms' own modules are initialised from ``derive_seed(seed, "init",
            "distill"[, seed_tag])``.
        :param student: the model to distil into (default: a new ``student`` model of the config,
            built with ``seed_tag="student"``) — an assistant of a teacher chain, the last generation of
            born-again networks, a student whose weights an earlier stage trained, a student wrapped
            with extra heads.  The caller builds it reproducibly (``ctx.build_model(..., seed_tag=...)``);
            it is trained in place and returned in :attr:`StudentResult.model`.
        :param optimizer: the stage's optimisation settings, a ``train`` section (default: the run
            config's ``train``; missing keys come from it), e.g. an initialisation stage's epochs.
        """
        from kdkit.distill.agreement import TeacherAgreement
        from kdkit.distill.cache import describe_caches
        from kdkit.distill.step import DistillStep
        from kdkit.distill.terms import agreement_samples
        from kdkit.engine import Stage, WithIndex
        from kdkit.seeding import derive_seed

        ctx, cfg, dcfg = self.ctx, self.config, self.distill_config
        teachers = list(teachers)
        if len(teachers) != self.num_teachers or len(references) != len(teachers):
            raise ValueError(f"StudentStage.distil: {self.num_teachers} teachers expected, got {len(teachers)} "
                             f"(and {len(references)} references)")
        method = cfg.method
        distiller = self.build_distiller() if self._distiller_trained else self.distiller
        self._distiller_trained = True

        # teacher outputs — the logits and the features the terms tap — cached once per sample index
        # when the teacher's input is deterministic: in memory, or in the disk store when they are large
        setting = dcfg.teacher_cache if cache is None else cache
        plan, caches = self._cache_plan(num_classes, teachers, train, distiller, setting,
                                        from_method=cache is not None)
        built = [c for c in caches if c is not None] if caches is not None else None
        if caches is not None:
            for c in built:
                c.build()
            ctx.log(f"{method}: {describe_caches(built)}")
            if not _is_deterministic(train):
                ctx.log(f"{method}: teacher cache ({plan.mode}) with augmented training data: the teachers see "
                        "un-augmented images")

        if student is None:
            student = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
        agreement = TeacherAgreement(list(references), list(references.values()), ctx.log, agreement_samples(dcfg))

        # feature terms read a cached teacher's features from its cache, an online teacher's from its taps
        sources = [None if isinstance(t, LogitsTeacher) else caches[i] if caches is not None else t
                   for i, t in enumerate(teachers)]
        outputs = StudentTeachers(teachers, caches, val, int(cfg.train.eval_batch_size), ctx.device)
        step = DistillStep(distiller, student, outputs.logits, sources, agreement,
                           outputs.validation if val is not None else None)
        train_indexed = WithIndex(train)
        batch_size = int((optimizer or {}).get("batch_size", cfg.train.batch_size))
        step.materialize(student, train_indexed, batch_size, ctx.device,
                         derive_seed(ctx.seed, "init", "distill", *(() if seed_tag is None else (seed_tag,))))

        res = ctx.fit(Stage(name=name, model=student, train_data=train_indexed, val_data=val,
                            test_data=test, step_fn=step, eval_fn=eval_fn, taps=step.taps,
                            optimizer=dict(optimizer or {}),
                            extra_modules={"distill": distiller, "agreement": agreement},
                            before_epoch_fn=step.before_epoch))
        agreement.finish()
        return StudentResult(name=name, model=student, result=res, distiller=distiller, agreement=agreement.report,
                             cached=caches is not None, cache_mode=plan.mode, cache_reason=plan.reason)

    def _cache_plan(self, num_classes: int, teachers: Sequence, train, distiller: "Distiller", setting,
                    from_method: bool) -> tuple:
        """``(CachePlan, caches)``: where the image teachers' outputs are kept (logged with the reason)
        and one cache per teacher (``None`` for a :class:`LogitsTeacher`; ``caches`` is ``None`` when
        the teachers run on every batch)."""
        from kdkit.distill.cache import CachePlan, DiskTeacherCache, TeacherCache, cache_mode, plan_cache
        from kdkit.distill.store import StoreOptions

        ctx, cfg = self.ctx, self.config
        method = cfg.method
        dcfg = self.distill_config

        def log(message: str) -> None:
            ctx.log(f"{method}: {message}")

        mode = cache_mode(setting)
        view = _plain_view(train)
        bs = int(cfg.train.eval_batch_size)
        paths = distiller.teacher_paths(len(teachers))
        caches = [None if isinstance(t, LogitsTeacher) else TeacherCache(t, view, ctx.device, bs, paths=p)
                  for t, p in zip(teachers, paths)] if mode != "off" else None
        options = None
        if mode in ("auto", "disk"):
            options = StoreOptions(dtype=dcfg.teacher_store_dtype, topk=int(dcfg.teacher_store_topk))
        if not any(not isinstance(t, LogitsTeacher) for t in teachers):
            plan = CachePlan("off", "no teacher is a network to cache (their logits come from tables or functions)")
        elif from_method and mode == "off":
            plan = CachePlan("off", f"the {method} method runs these teachers on every batch")
        else:
            plan = plan_cache([c for c in caches if c is not None] if caches else [], setting, num_classes, log,
                              deterministic=_is_deterministic(train), augmentation=_augmentation(train),
                              store_options=options)
        if plan.mode == "disk" and options.topk and options.topk >= num_classes:
            raise ConfigError(f"config key distill.teacher_store_topk: {options.topk} is not below the "
                              f"{num_classes} classes; 0 stores the dense logits")
        log(f"teacher cache: {plan.mode} ({plan.reason})" if plan.cached else
            f"teacher cache off: {plan.reason}; the teachers run on every batch")
        if plan.mode == "off":
            return plan, None
        if plan.mode == "memory":
            return plan, caches
        data = {k: v for k, v in cfg.data.items() if k != "augment"}  # the store holds the un-augmented view
        return plan, [None if isinstance(t, LogitsTeacher) else
                      DiskTeacherCache(t, view, ctx.device, bs, paths=p, options=options, root=ctx.cache_dir,
                                       identity={"teacher": self.teachers[i] if i < len(self.teachers) else i,
                                                 "data": data},
                                       log=log)
                      for i, (t, p) in enumerate(zip(teachers, paths))]


class StudentTeachers:
    """The teachers of one student stage as its step reads them (:class:`~kdkit.distill.step.DistillStep`'s
    ``teacher_logits`` and ``validation``), in the objective's order.

    :param teachers: frozen image networks and :class:`LogitsTeacher` s.
    :param caches: one :class:`~kdkit.distill.cache.TeacherCache` per image network (``None`` for a
        :class:`LogitsTeacher`), or ``None`` when the networks run on every batch.
    :param val: the held-out split (``None`` without one), batched by ``batch_size`` on ``device``.
    """

    def __init__(self, teachers: Sequence, caches: Sequence | None, val, batch_size: int, device):
        self.teachers = list(teachers)
        self.caches = caches
        self.val = val
        self.batch_size = batch_size
        self.device = device

    def logits(self, x, y, idx) -> list:
        """Each teacher's logits for a training batch (``idx``: the samples' positions in the
        training split): a :class:`LogitsTeacher`'s function, the cache's rows, or the network on ``x``."""
        out = []
        for i, t in enumerate(self.teachers):
            if isinstance(t, LogitsTeacher):
                out.append(t.logits(x, y, idx))
            elif self.caches is not None:
                out.append(self.caches[i][idx])
            else:
                out.append(t(x))
        return out

    def validation(self):
        """``(each teacher's logits, labels)`` per batch of the held-out split."""
        from kdkit.engine.data import make_eval_loader, to_device

        start = 0
        for b in make_eval_loader(self.val, self.batch_size):
            b = to_device(b, self.device)
            logits = [_validation_logits(t, i, b, start) for i, t in enumerate(self.teachers)]
            start += len(b[1])
            yield logits, b[1]


def _validation_logits(teacher, i: int, batch, start: int):
    if not isinstance(teacher, LogitsTeacher):
        return teacher(batch[0])
    if teacher.validation_logits is None:
        raise ConfigError(f"teacher {i} gives no logits on the held-out split, which distill.combine=inv_val_loss "
                          "weighs the teachers on; choose another distill.combine")
    return teacher.validation_logits(batch[0], batch[1], start)
