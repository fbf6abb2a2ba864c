"""A stage's optimiser and learning-rate schedule, built from its ``train`` settings.

:func:`param_groups` gathers what trains (the model's and the extra modules' trainable parameters,
or the stage's own groups), :func:`build_optimizer` makes the ``train.optimizer`` and
:func:`build_scheduler` the per-step schedule (stepped after every optimiser step).

Class names.  ``train.optimizer`` may name any ``torch.optim`` class (``AdamW``, ``RMSprop``, ...),
built with ``lr``, ``weight_decay`` (when the class takes it) and ``train.optimizer_options``;
``train.scheduler`` any ``torch.optim.lr_scheduler`` class, built with ``train.scheduler_options``,
whose step counts are optimiser steps.  kdkit fills what it knows unless the options give it
(``kdkit.config.loop.FILLED_SCHEDULER_OPTIONS``): ``OneCycleLR``'s ``total_steps`` and ``max_lr``
(each group's ``lr``), ``CosineAnnealingLR``'s ``T_max``, ``PolynomialLR``'s and ``LinearLR``'s
``total_iters``, each the stage's optimiser steps after the warm-up.  A warm-up
(``train.warmup_epochs``) goes before it through torch's own schedulers:
``SequentialLR([LinearLR(1 / w -> 1 over w steps), scheduler], milestones=[w])``, which rises like
the aliases' warm-up, ``(t + 1) / w`` at step ``t``, up to rounding.  Their state is their
``state_dict()`` (exact resume).  The names are checked when the config is resolved
(:mod:`kdkit.config.loop`): unknown classes, options the signature does not take, schedulers that
cannot be stepped per optimiser step (``ReduceLROnPlateau``) stop the run before it starts.

kdkit's lower-case names.  ``sgd``, ``adam``, ``adamw`` are ``SGD`` (with ``train.momentum`` and
``train.nesterov``), ``Adam`` and ``AdamW``.  The schedules ``cosine``, ``step``, ``multistep`` and
``none`` / ``constant`` (after a linear warm-up of ``train.warmup_epochs``, fractions of an epoch
allowed) are :class:`Schedule` on ``torch.optim.lr_scheduler.LambdaLR``, as before class names
existed, so runs that use them keep their rates bit for bit.  Here the library did not serve: every
step's rate is ``base_lr * factor(step)``, a closed form of the step count, and torch's own schedulers
(``CosineAnnealingLR``; ``SequentialLR`` of a ``LinearLR`` warm-up and the main schedule;
``MultiStepLR``; ``StepLR``) were measured against it and do not give the same rates bit for bit,
so runs would not stay byte-identical: they update the rate recursively from the previous step's
rate (``lr_t = lr_{t-1} * ratio``), which accumulates rounding.  On torch 2.14, over epochs 2 / 5 /
30 / 240, 6 / 7 / 391 steps per epoch, warm-up 0 / 0.5 / 1 epoch and one or two parameter groups,
cosine differed at 98.6 % of the steps (relative error up to 6e-11, growing with the run's length),
multistep at 9 % and step at 11 % (one or two ulps: ``lr * gamma * gamma`` is not
``base_lr * gamma ** 2``, and the ``LinearLR`` warm-up's recursion is not ``(t + 1) / warmup``).  A
closed form is also what exact resume needs: the rate after a restart depends on the step count in
the checkpoint only, not on a chain of earlier rates, and a hook may overwrite a group's rate
without the schedule carrying the change into later steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from kdkit.config.loop import (FILLED_SCHEDULER_OPTIONS, SCHEDULER_ALIASES, optimizer_class, optimizer_kwargs,
                               scheduler_class)
from kdkit.config.settings import TrainSettings
from kdkit.errors import ConfigError, KdkitError

__all__ = ["Schedule", "build_optimizer", "build_scheduler", "param_groups", "trainable", "trainable_extra"]

SCHEDULERS = SCHEDULER_ALIASES


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require gradients."""
    return [p for p in module.parameters() if p.requires_grad]


def trainable_extra(extra_modules: dict[str, nn.Module]) -> list[nn.Parameter]:
    """The trainable parameters of the extra modules, each once (modules may share parameters)."""
    seen, out = set(), []
    for m in extra_modules.values():
        for p in trainable(m):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def param_groups(model: nn.Module, extra_modules: dict[str, nn.Module], custom: Callable | None,
                 stage_name: str) -> list[dict]:
    """The optimiser's parameter groups: ``custom(model, extra_modules)`` (a stage's
    ``param_groups``) or one group of every trainable parameter; empty groups are dropped and a
    stage with nothing to train is an error."""
    if custom is not None:
        groups = list(custom(model, extra_modules))
    else:
        model_params = trainable(model)
        ids = {id(p) for p in model_params}
        groups = [{"params": model_params + [p for p in trainable_extra(extra_modules) if id(p) not in ids]}]
    groups = [g for g in groups if list(g["params"])]
    if not groups:
        raise KdkitError(f"stage {stage_name}: nothing to train (no parameter requires grad)")
    return groups


def build_optimizer(settings: TrainSettings, groups: list[dict], stage_name: str = "") -> torch.optim.Optimizer:
    """``train.optimizer`` over ``groups`` with ``lr``, ``weight_decay`` (and for ``sgd`` ``momentum``,
    ``nesterov``) and ``optimizer_options`` as defaults a group may override."""
    cls = optimizer_class(settings.optimizer)
    try:
        optimizer = cls(groups, **optimizer_kwargs(settings))
    except (TypeError, ValueError) as e:  # e.g. an option the groups' parameters cannot take
        raise ConfigError(f"config key train.optimizer: {cls.__name__} refused its options: "
                          f"{' '.join(str(e).split())}") from None
    _check_representable(optimizer, stage_name)
    return optimizer


def _check_representable(optimizer: torch.optim.Optimizer, stage_name: str) -> None:
    """Refuse a rate or weight decay the parameters' dtype cannot hold: torch passes them to its
    kernels as a scalar of that dtype (``param.add_(grad, alpha=-lr)``), so ``train.lr=1e308`` on
    float32 parameters failed at the first step with a RuntimeError instead of naming the key."""
    for group in optimizer.param_groups:
        dtypes = {p.dtype for p in group["params"] if p.is_floating_point()}
        for key in ("lr", "weight_decay"):
            value = group.get(key)
            if not isinstance(value, (int, float)):
                continue
            for dtype in dtypes:
                limit = torch.finfo(dtype).max
                if abs(value) > limit:
                    where = f"stage {stage_name}: " if stage_name else ""
                    raise ConfigError(f"{where}{key} {value:g} is beyond what the model's {dtype} parameters can "
                                      f"hold (at most {limit:.3g}); give a smaller {key} in the stage's train "
                                      "section (train, teacher_train, ...)")


@dataclass(frozen=True)
class Schedule:
    """The learning-rate multiplier of every optimiser step (see the module docs).

    :ivar kind: ``train.scheduler``.
    :ivar warmup: warm-up steps (``round(warmup_epochs * steps_per_epoch)``); the rate rises
        linearly to the base rate, ``(t + 1) / warmup`` at step ``t``.
    :ivar total: the stage's steps (``epochs * steps_per_epoch``, at least 1); cosine reaches 0 there.
    :ivar steps_per_epoch: ``step`` and ``multistep`` decay at epoch boundaries.
    """

    kind: str
    warmup: int
    total: int
    steps_per_epoch: int
    gamma: float
    milestones: tuple[int, ...]
    step_size: int

    def factor(self, it: int) -> float:
        """The multiplier of the base rate at optimiser step ``it`` (0-based)."""
        warm = self.warmup
        if warm and it < warm:
            return (it + 1) / warm
        epoch = it // self.steps_per_epoch
        if self.kind == "cosine":
            progress = (it - warm) / max(1, self.total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.kind == "multistep":
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "step":
            return self.gamma ** (epoch // self.step_size)
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step schedule of ``settings`` (stepped after every optimiser step), or ``None`` for a
    constant rate without warm-up (hooks may then set the rates freely)."""
    kind = settings.scheduler
    warm = int(round(settings.warmup_epochs * steps_per_epoch))
    total = max(1, epochs * steps_per_epoch)
    if kind in ("none", "constant") and warm == 0:
        return None
    cls = scheduler_class(kind)
    if cls is not None:
        return _torch_scheduler(cls, optimizer, settings, warm, total)
    schedule = Schedule(kind=kind, warmup=warm, total=total,
                        steps_per_epoch=steps_per_epoch, gamma=settings.gamma,
                        milestones=tuple(sorted(settings.milestones)), step_size=settings.step_size)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


def _torch_scheduler(cls: type, optimizer: torch.optim.Optimizer, settings: TrainSettings, warm: int,
                     total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``cls`` with ``scheduler_options`` and what kdkit fills, after a ``LinearLR`` warm-up of
    ``warm`` steps (through ``SequentialLR``) when there is one."""
    lr_scheduler = torch.optim.lr_scheduler
    main_steps = max(1, total - warm) if warm > 1 else total
    options = dict(settings.scheduler_options)
    filled = FILLED_SCHEDULER_OPTIONS.get(cls.__name__)
    if cls is lr_scheduler.OneCycleLR:
        options.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
        if "epochs" in options or "steps_per_epoch" in options:
            filled = None  # the user counts the cycle their own way
    if filled is not None:
        options.setdefault(filled, main_steps)
    try:
        if warm <= 1:  # a warm-up of one step is the full rate at once
            return cls(optimizer, **options)
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1)
        return lr_scheduler.SequentialLR(optimizer, [ramp, cls(optimizer, **options)], milestones=[warm])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key train.scheduler_options: {cls.__name__} refused them: "
                          f"{' '.join(str(e).split())}") from None
