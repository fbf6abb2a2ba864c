"""The distillation objective: ``alpha * CE + sum_i weight_i * term_i``, one place for every method.

Every term receives one :class:`DistillInputs`, so new kinds of terms (features, sample indices,
schedules over epochs) never change the loss signature.  :class:`Distiller` builds the terms from
their :class:`~kdkit.distill.terms.TermSpec`, routes logit terms through the
:class:`~kdkit.distill.TeacherCombiner` and hands feature terms their tapped tensors.  It is an
``nn.Module``: give it to the stage as an extra module and the terms' trainable parts (a FitNet
regressor, ...) train with the student, are checkpointed with the stage and stay out of the
student's exported weights.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit.distill.combine import TeacherCombiner
from kdkit.distill.taps import unwrap_model
from kdkit.distill.terms import TermSpec
from kdkit.errors import ConfigError

__all__ = ["DistillInputs", "Distiller", "FeaturePair", "build_term_loss", "logit_term", "resolve_module"]


class FeaturePair(NamedTuple):
    """One (student, teacher) feature pair of a term (:meth:`DistillInputs.feature_pairs`).

    :ivar student: the student's tensor, float32 (gradients flow through it).
    :ivar teacher: the teacher's tensor, float32 and detached.
    :ivar where: ``""`` when the term names one module path per side, ``" (pair i of n)"`` when it
        names lists — to append to a method's own error messages ("student feature (2, 8){where}").
    """

    student: torch.Tensor
    teacher: torch.Tensor
    where: str


def _shape(x: torch.Tensor) -> tuple:
    return tuple(x.shape)


@dataclasses.dataclass(frozen=True)
class DistillInputs:
    """What one distillation term sees for one batch.

    :ivar student_logits: ``B x C``.
    :ivar teacher_logits: the teacher this evaluation is for — one teacher's logits, or the mean
        of all teachers' under ``distill.combine: avg_logits``; ``None`` if there are none.
    :ivar teacher_index: which teacher ``teacher_logits`` belongs to (``None``: the mean).
    :ivar all_teacher_logits: every teacher's logits, in config order.
    :ivar student_feature: the output of the student modules the term names (``student:`` paths): a
        tensor for one path, a list of tensors (in the term's order) for a list of paths, ``None``
        for logit terms.
    :ivar teacher_feature: the same for the teacher (``teacher:`` paths).
    :ivar student_features: every tapped output of the student (``{path: tensor}``).
    :ivar teacher_features: every tapped output of each teacher (one ``{path: tensor}`` per teacher).
    :ivar labels: the batch's labels.
    :ivar indices: the batch's sample indices (position in the training split).
    :ivar temperature: ``distill.temperature``.
    :ivar epoch: the 0-based epoch.
    :ivar step: the optimiser step.
    :ivar num_samples: the size of the training split (``indices`` lie in ``[0, num_samples)``),
        e.g. for a memory bank keyed by sample index; ``None`` when unknown.
    :ivar student_model: the student module being trained (a DDP wrapper looked through), for a term
        that needs one of its submodules (:meth:`student_module`); ``None`` when the caller gave none.
    :ivar teacher_models: each teacher's frozen module, in config order — also when its outputs come
        from a teacher cache — and ``None`` for a teacher that is not a network
        (:class:`~kdkit.distill.LogitsTeacher`); read them with :meth:`teacher_module`.

    A feature term reads its features through :meth:`feature_pairs` — ``[(student, teacher,
    where)]``, float32, the teacher detached — which raises the one-line :class:`kdkit.ConfigError`
    for a missing side, a list on one side only, lists of different lengths, an entry that is not a
    ``B x ...`` tensor, or different batch sizes; the method then checks what only it needs
    (4-D maps, spatial sizes, one pair only, ...).

    A term that needs a module of a model — the teacher's classifier applied to student features
    (SRRL), the classifiers' weights (CAT-KD) — reads it with :meth:`teacher_module` /
    :meth:`student_module` by its dotted path (``fc``, ``head.fc``; the names ``kdkit layers``
    lists); a path that does not resolve is a one-line :class:`kdkit.ConfigError` naming the nearest
    paths.  Teachers are frozen (``requires_grad`` off, eval mode): a teacher module applied to student
    tensors passes gradients to those tensors and never updates the teacher.  A term must not keep
    the module it gets as a submodule of its own (it would be checkpointed and trained with the
    stage): look it up on each call, it is cheap.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_index: int | None = None
    all_teacher_logits: Sequence[torch.Tensor] = ()
    student_feature: Any = None
    teacher_feature: Any = None
    student_features: dict = dataclasses.field(default_factory=dict)
    teacher_features: Sequence[dict] = ()
    labels: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    temperature: float = 1.0
    epoch: int = 0
    step: int = 0
    num_samples: int | None = None
    student_model: Any = None
    teacher_models: Sequence = ()

    def student_module(self, path: str, loss: str = "") -> nn.Module:
        """The submodule ``path`` of the student being trained (``""``: the student itself).

        :param loss: the loss's registered name, for the error messages.
        :raises kdkit.ConfigError: (one line) when the student was not handed to the term or has no
            module ``path`` (naming the nearest valid paths).
        """
        who = f"loss {loss}" if loss else "a distill term"
        if self.student_model is None:
            raise ConfigError(f"{who} needs the student's module {path!r}, but no student model was handed to the "
                              "term (DistillInputs.student_model is None; Distiller.forward takes student_model=)")
        return resolve_module(self.student_model, path, "student", who)

    def teacher_module(self, path: str, index: int | None = None, loss: str = "") -> nn.Module:
        """The submodule ``path`` of teacher ``index`` (``""``: the teacher itself), frozen.

        :param index: which teacher (config order); default :attr:`teacher_index`, or the only
            teacher when the term sees the teachers' mean.
        :param loss: the loss's registered name, for the error messages.
        :raises kdkit.ConfigError: (one line) when the teacher is not a network (a
            :class:`~kdkit.distill.LogitsTeacher`), no teacher models were handed to the term, the
            index is out of range or ambiguous, or the teacher has no module ``path`` (naming the
            nearest valid paths).
        """
        who = f"loss {loss}" if loss else "a distill term"
        models = list(self.teacher_models)
        if not models:
            raise ConfigError(f"{who} needs a teacher's module {path!r}, but no teacher models were handed to the "
                              "term (DistillInputs.teacher_models is empty; Distiller.forward takes teacher_models=)")
        if index is None:
            index = self.teacher_index
        if index is None:
            if len(models) != 1:
                raise ConfigError(f"{who} needs a teacher's module {path!r} but sees the mean of {len(models)} "
                                  "teachers; set distill.combine=mean_loss (the term on each teacher), or tap "
                                  "features and give the term a teacher_index")
            index = 0
        if not 0 <= index < len(models):
            raise ConfigError(f"{who}: teacher_index {index}, but there are {len(models)} teachers (0-based)")
        model = models[index]
        if model is None:
            raise ConfigError(f"{who} needs module {path!r} of teacher {index}, but that teacher is not a network "
                              "(a LogitsTeacher: a logit table or a model on other inputs); use a teacher network")
        return resolve_module(model, path, f"teacher {index}", who)

    def feature_pairs(self, loss: str, example: str | None = None) -> list[FeaturePair]:
        """The term's (student, teacher) feature pairs: one for one module path per side, one per
        path (in the term's order) for lists of paths.

        :param loss: the loss's registered name, for the error messages ("loss <loss> needs a
            student feature: ...").
        :param example: the term to suggest when a side has no feature (default
            ``{loss: <loss>, student: layer3, teacher: layer3}``).
        :returns: ``[FeaturePair(student, teacher, where)]`` (:class:`FeaturePair`): both sides
            float32 (``.float()``, whatever the autocast or input dtype), the teacher detached;
            ``where`` is ``""`` for single tensors and ``" (pair i of n)"`` for lists.
        :raises kdkit.ConfigError: (one line) when either side is ``None`` (the term names no path),
            one side is a list and the other a tensor, the lists differ in length or are empty, an
            entry is ``None`` or not a tensor, a tensor has fewer than 2 dimensions (features are
            ``B x D`` vectors or ``B x C x H x W`` maps), or a pair differs in batch size (naming
            both shapes and the pair).
        """
        student, teacher = self.student_feature, self.teacher_feature
        for which, value in (("student", student), ("teacher", teacher)):
            if value is None:
                hint = example or f"{{loss: {loss}, student: layer3, teacher: layer3}}"
                raise ConfigError(f"loss {loss} needs a {which} feature: give the term a {which}: module path or list "
                                  f"of paths (e.g. {hint})")
        s_list, t_list = isinstance(student, (list, tuple)), isinstance(teacher, (list, tuple))
        if s_list != t_list:
            s_desc = f"a list of {len(student)} tensors" if s_list else "one tensor"
            t_desc = f"a list of {len(teacher)} tensors" if t_list else "one tensor"
            raise ConfigError(f"loss {loss}: the student feature is {s_desc} but the teacher feature is {t_desc}; "
                              "give student: and teacher: the same number of module paths")
        students, teachers = (list(student), list(teacher)) if s_list else ([student], [teacher])
        if len(students) != len(teachers):
            raise ConfigError(f"loss {loss}: {len(students)} student features but {len(teachers)} teacher features; "
                              "give student: and teacher: the same number of module paths (they are paired in order)")
        if not students:
            raise ConfigError(f"loss {loss}: the term's student: and teacher: lists are empty; name at least one "
                              "module path on each side")
        pairs = []
        for i, (s, t) in enumerate(zip(students, teachers)):
            where = f" (pair {i + 1} of {len(students)})" if s_list else ""
            for which, value in (("student", s), ("teacher", t)):
                if value is None:
                    raise ConfigError(f"loss {loss}: the {which} feature{where} is missing; check that the term's "
                                      f"{which}: paths name modules that run in the forward pass")
                if not isinstance(value, torch.Tensor):
                    raise ConfigError(f"loss {loss}: the {which} feature{where} is a {type(value).__name__}, not a "
                                      "tensor; tap a module whose output is a tensor")
                if value.dim() < 2:
                    raise ConfigError(f"loss {loss}: the {which} feature{where} has shape {_shape(value)}; expected "
                                      "B x D vectors or B x C x H x W maps")
            if s.shape[0] != t.shape[0]:
                raise ConfigError(f"loss {loss}: student feature {_shape(s)} and teacher feature {_shape(t)}{where} "
                                  "differ in batch size; both must come from the same batch")
            pairs.append(FeaturePair(s.float(), t.detach().float(), where))
        return pairs


def resolve_module(model: nn.Module, path: str, owner: str = "model", who: str = "") -> nn.Module:
    """The submodule of ``model`` at the dotted ``path`` (as ``model.named_modules()`` spells it; a
    DDP / DataParallel wrapper is looked through and its ``module.`` prefix accepted; ``""`` is the
    model itself).

    :param owner: how the error names the model (``"student"``, ``"teacher 0"``).
    :param who: what asked (``"loss srrl"``), at the start of the error.
    :raises kdkit.ConfigError: (one line) naming the nearest valid paths.
    """
    model = unwrap_model(model)
    name = path.removeprefix("module.")
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    valid = [n for n, _ in model.named_modules() if n]
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    if not near:  # fall back to the paths that share the first component, then to the first paths
        head = name.split(".")[0]
        near = [n for n in valid if n.split(".")[0] == head][:5] or valid[:5]
    start = f"{who}: " if who else ""
    raise ConfigError(f"{start}{owner} ({type(model).__name__}) has no module {path!r}; nearest valid paths: "
                      f"{', '.join(near) if near else '(the model has no submodules)'} "
                      "(`kdkit layers MODEL` lists every path)")


def _legacy_positional(fn) -> bool:
    """Does ``fn`` take the pre-DistillInputs ``(student_logits, teacher_logits, temperature)``?"""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def build_term_loss(registry, spec: TermSpec) -> Callable:
    """The loss callable of ``spec`` from the losses registry.

    A loss written for the old contract ``loss(student_logits, teacher_logits, temperature)`` still
    works for logit terms (with one warning); it cannot see features, labels or indices.
    """
    fn = registry.build(spec.loss, **spec.options)
    if not callable(fn):
        raise ConfigError(f"loss {spec.loss!r}: its factory returned {type(fn).__name__}, not a callable loss")
    if not isinstance(fn, nn.Module) and _legacy_positional(fn):
        if spec.uses_features:
            raise ConfigError(f"loss {spec.loss!r} takes (student_logits, teacher_logits, temperature): it cannot "
                              "be a feature term; its plugin must move to loss(inputs)")
        warnings.warn(f"loss {spec.loss!r} uses the old signature (student_logits, teacher_logits, temperature); "
                      "kdkit adapts it, but it should move to loss(inputs) (kdkit.distill.DistillInputs)",
                      DeprecationWarning, stacklevel=2)
        return functools.partial(_call_legacy, fn)
    return fn


def _call_legacy(legacy: Callable, inputs: DistillInputs):
    """A loss of the old contract called with the parts of ``inputs`` it takes."""
    return legacy(inputs.student_logits, inputs.teacher_logits, inputs.temperature)


def logit_term(fn: Callable, base: DistillInputs, logits: torch.Tensor, index: int | None):
    """A logit term's loss ``fn`` on one teacher's ``logits`` (``index``: its position) or on the
    teachers' mean (``index`` ``None``); :class:`~kdkit.distill.TeacherCombiner` calls it, bound to the
    term's ``fn`` and the batch's ``base`` inputs, as ``term(logits, index)``."""
    return fn(dataclasses.replace(base, teacher_logits=logits, teacher_index=index))


def _reaches(value: torch.Tensor, params: Sequence[torch.Tensor]) -> bool:
    """Does the autograd graph of ``value`` lead to one of the leaf tensors ``params`` — what
    ``torch.autograd.grad(value, params, allow_unused=True)`` answers with a non-``None`` gradient?

    A walk over ``grad_fn.next_functions`` rather than that extra backward: it runs no backward node
    (no DDP reducer hook, no ``.grad`` written) and keeps the graph intact, which a ``torch.compile``'d
    student needs (its compiled backward donates buffers: it may run once, without ``retain_graph``)."""
    targets = {id(p) for p in params}
    if value.grad_fn is None:  # a leaf
        return id(value) in targets
    seen, stack = set(), [value.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if id(getattr(node, "variable", None)) in targets:  # AccumulateGrad of a parameter
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _select(features: dict, paths):
    """A term's tapped feature(s): one tensor for a path, a list for a list of paths."""
    if paths is None:
        return None
    if isinstance(paths, str):
        return features.get(paths)
    return [features.get(p) for p in paths]


class Distiller(nn.Module):
    """``ce_weight * CE(student_logits, labels) + sum_i weight_i * term_i(inputs)``.

    :param specs: the terms (:func:`kdkit.distill.terms.distill_terms`).
    :param losses: one loss callable per term (:func:`build_term_loss`); ``nn.Module`` losses are
        registered as submodules (``terms.<name>``).
    :param combiner: how logit terms combine several teachers.
    :param ce_weight: the cross-entropy weight (``distill.alpha``).
    :param temperature: ``distill.temperature``, passed to every term.

    ``forward`` returns ``(loss, logs)`` with ``logs = {"ce": ..., <term name>: ...}`` (unweighted
    values, detached) — the form a stage's ``step_fn`` returns.  Its keyword arguments
    ``student_model`` (the student being trained) and ``teacher_models`` (each teacher's frozen
    module, ``None`` for a :class:`~kdkit.distill.LogitsTeacher`) reach every term as
    :attr:`DistillInputs.student_model` / :attr:`DistillInputs.teacher_models`
    (:meth:`DistillInputs.teacher_module`); :class:`~kdkit.distill.step.DistillStep` passes both.

    The first call with gradients on (the first training step, not :meth:`materialize` nor
    validation) checks that every term of non-zero weight reaches the student: its value requires
    grad and some gradient of it reaches a trainable parameter of ``student_model`` (when given).
    A term that does not (a constant, a detached tensor, something of the teachers only) is a
    one-line :class:`kdkit.ConfigError`: it would train nothing.
    """

    def __init__(self, specs: Sequence[TermSpec], losses: Sequence[Callable], combiner: TeacherCombiner,
                 ce_weight: float, temperature: float):
        super().__init__()
        if len(specs) != len(losses):
            raise ValueError("Distiller: one loss per term")
        self.specs = list(specs)
        self.losses = list(losses)
        self.combiner = combiner
        self.terms = nn.ModuleDict({s.name: fn for s, fn in zip(self.specs, self.losses) if isinstance(fn, nn.Module)})
        self.ce_weight = float(ce_weight)
        self.temperature = float(temperature)
        #: the training split's size, handed to every term (``DistillInputs.num_samples``)
        self.num_samples: int | None = None
        #: set by the first call with gradients on, which checked that every weighted term reaches the student
        self._grad_paths_checked = False

    @property
    def has_modules(self) -> bool:
        """Do some terms own modules (which :meth:`materialize` must build before training)?"""
        return len(self.terms) > 0

    def student_paths(self) -> list[str]:
        """The module paths to tap on the student (each once)."""
        return list(dict.fromkeys(p for s in self.specs for p in TermSpec.path_list(s.student)))

    def teacher_paths(self, num_teachers: int) -> list[list[str]]:
        """The module paths to tap on each teacher (config order)."""
        paths: list[list[str]] = [[] for _ in range(num_teachers)]
        for s in self.specs:
            if s.uses_features and s.teacher_index >= num_teachers:
                raise ConfigError(f"config key distill.terms ({s.name}): teacher_index {s.teacher_index}, but there "
                                  f"are {num_teachers} teachers (0-based)")
            for p in TermSpec.path_list(s.teacher):
                if p not in paths[s.teacher_index]:
                    paths[s.teacher_index].append(p)
        return paths

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None, student_features: dict | None = None,
                teacher_features: Sequence[dict] | None = None, epoch: int = 0, step: int = 0,
                student_model: nn.Module | None = None, teacher_models: Sequence[nn.Module | None] | None = None):
        teacher_logits = list(teacher_logits)
        student_features = student_features or {}
        teacher_features = list(teacher_features or [{} for _ in teacher_logits])
        base = DistillInputs(student_logits=student_logits, all_teacher_logits=teacher_logits,
                             student_features=student_features, teacher_features=teacher_features, labels=labels,
                             indices=indices, temperature=self.temperature, epoch=epoch, step=step,
                             num_samples=self.num_samples, student_model=student_model,
                             teacher_models=tuple(teacher_models or ()))
        ce = F.cross_entropy(student_logits, labels)
        loss = self.ce_weight * ce
        logs = {"ce": ce.detach()}
        # once, at the first training step: a term that cannot train the student is a config error, not a quiet no-op
        check = not self._grad_paths_checked and torch.is_grad_enabled() and student_logits.requires_grad
        weights = None
        if teacher_logits and any(not s.uses_features for s in self.specs):
            weights = self.combiner.teacher_weights(teacher_logits, labels)  # once per batch (EMA)
        for spec, fn in zip(self.specs, self.losses):
            if spec.uses_features:
                i = spec.teacher_index
                value = fn(dataclasses.replace(
                    base, teacher_logits=teacher_logits[i] if i < len(teacher_logits) else None, teacher_index=i,
                    student_feature=_select(student_features, spec.student),
                    teacher_feature=_select(teacher_features[i], spec.teacher) if i < len(teacher_features)
                    else None))
            else:
                if not teacher_logits:
                    raise ConfigError(f"distill term {spec.name} ({spec.loss}) distils logits, but there is no teacher")
                value = self.combiner(teacher_logits, labels, functools.partial(logit_term, fn, base), weights)
            if not isinstance(value, torch.Tensor):  # weight 0 or not: its value is logged as a tensor
                raise ConfigError(f"config key distill.terms ({spec.name}, loss {spec.loss}): the loss returned a "
                                  f"{type(value).__name__}, not a tensor; a loss returns a scalar torch tensor "
                                  "computed from its inputs")
            if check and spec.weight != 0:
                self._check_reaches_student(spec, value, student_model)
            loss = loss + spec.weight * value
            logs[spec.name] = value.detach()
        if check:
            self._grad_paths_checked = True
        return loss, logs

    def _check_reaches_student(self, spec: TermSpec, value, student_model: nn.Module | None) -> None:
        """Raise the one-line :class:`kdkit.ConfigError` when the term's ``value`` has no gradient path
        to the student (to its trainable parameters when ``student_model`` is given)."""
        why = None
        if not value.requires_grad:  # (a value that is no tensor was refused before)
            why = "its value does not require grad: a constant or a detached tensor"
        elif student_model is not None:
            params = [p for p in student_model.parameters() if p.requires_grad]
            if params and not _reaches(value, params):
                why = ("its gradient reaches none of the student's trainable parameters: it is computed from "
                       "the teachers or the term's own modules only")
        if why is not None:
            raise ConfigError(f"config key distill.terms ({spec.name}, loss {spec.loss}): the loss does not depend "
                              f"on the student's outputs or features ({why}), so the term would train nothing; "
                              "compute it from inputs.student_logits or the student's features "
                              "(inputs.feature_pairs), or give the term weight: 0 or remove it")

    @torch.no_grad()
    def materialize(self, *args, **kwargs) -> None:
        """Call every term once on one batch (same arguments as ``forward``) so that terms owning
        modules build them now, before the optimiser and checkpoints are set up.  Run it with the
        RNG seeded (module initialisation draws from it) and the student in eval mode."""
        was = self.training
        self.eval()
        try:
            self.forward(*args, **kwargs)
        finally:
            self.train(was)
