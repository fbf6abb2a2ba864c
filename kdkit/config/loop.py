"""The training loop's open keys, checked when a config is resolved: ``train.optimizer`` /
``train.scheduler`` by ``torch.optim`` class name and their ``*_options`` against the class's signature.

A stage's ``train`` settings (:class:`kdkit.config.settings.TrainSettings`) call :func:`check_loop`
when they are built from the resolved config, so an unknown class or option stops the run before its
run directory exists.  :mod:`kdkit.engine.optim` builds what these names mean.  torch is imported when
a name is looked up, not when kdkit is.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping

from kdkit.errors import ConfigError

__all__ = ["OPTIMIZER_ALIASES", "SCHEDULER_ALIASES", "FILLED_SCHEDULER_OPTIONS", "optimizer_class",
           "scheduler_class", "signature_options", "check_loop", "optimizer_kwargs"]

#: kdkit's lower-case optimiser names (today's behaviour): the torch class each one builds.
OPTIMIZER_ALIASES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
#: kdkit's lower-case schedules, closed forms on LambdaLR (:mod:`kdkit.engine.optim` says why).
SCHEDULER_ALIASES = ("none", "constant", "cosine", "step", "multistep")

#: The options of a torch scheduler that kdkit fills with the stage's optimiser steps after the
#: warm-up, unless the user gives them (``OneCycleLR`` also gets ``max_lr``: each group's ``lr``).
FILLED_SCHEDULER_OPTIONS = {"OneCycleLR": "total_steps", "CosineAnnealingLR": "T_max", "PolynomialLR": "total_iters",
                            "LinearLR": "total_iters"}

_REFUSED_OPTIMIZERS = {
    "LBFGS": "it needs a closure that re-evaluates the loss several times per step, which a kdkit step is not",
}
_REFUSED_SCHEDULERS = {
    "ReduceLROnPlateau": "it steps once per epoch on a metric, and kdkit steps its schedule after every optimiser "
                         "step; use train.early_stop, or a schedule of steps (CosineAnnealingLR, StepLR, ...)",
    "LambdaLR": "it takes a Python function, which a config cannot hold (give the stage its own scheduler in a plugin)",
    "MultiplicativeLR": "it takes a Python function, which a config cannot hold",
    "SequentialLR": "it takes other schedulers; kdkit composes the warm-up (train.warmup_epochs) with it itself",
    "ChainedScheduler": "it takes other schedulers, which a config cannot hold",
}
# every option of these is kdkit's: the optimiser/parameters it builds and the step count on resume
_MANAGED = {"self", "params", "optimizer", "last_epoch", "verbose"}


def _classes(module, base) -> dict[str, type]:
    return {n: c for n, c in vars(module).items()
            if isinstance(c, type) and issubclass(c, base) and c is not base and not n.startswith("_")}


def _unknown(kind: str, name: Any, where: str, aliases, classes) -> ConfigError:
    names = [*aliases, *sorted(classes)]
    by_lower = {n.lower(): n for n in names}
    given = str(name).lower()
    close = difflib.get_close_matches(given, list(by_lower), n=3, cutoff=0.6)
    if len(given) >= 3:  # 'poly' -> PolynomialLR, 'cosineanneal' -> CosineAnnealingLR
        close += [n for n in by_lower if n.startswith(given) and n not in close][:3 - len(close)]
    hint = f"did you mean {' or '.join(by_lower[c] for c in close)}? " if close else ""
    return ConfigError(f"config key {where}: unknown {kind} {name!r}; {hint}valid: {', '.join(names)}")


def optimizer_class(name: str, where: str = "train.optimizer") -> type:
    """The ``torch.optim`` class of ``train.optimizer`` (an alias or a class name)."""
    import torch

    classes = _classes(torch.optim, torch.optim.Optimizer)
    cls = classes.get(OPTIMIZER_ALIASES.get(name, name))
    if cls is None or name in _REFUSED_OPTIMIZERS:
        if name in _REFUSED_OPTIMIZERS:
            raise ConfigError(f"config key {where}: {name} is not supported: {_REFUSED_OPTIMIZERS[name]}")
        raise _unknown("optimizer", name, where, OPTIMIZER_ALIASES,
                       {n: c for n, c in classes.items() if n not in _REFUSED_OPTIMIZERS})
    return cls


def scheduler_class(name: str, where: str = "train.scheduler") -> type | None:
    """The ``torch.optim.lr_scheduler`` class of ``train.scheduler``, ``None`` for kdkit's aliases."""
    if name in SCHEDULER_ALIASES:
        return None
    from torch.optim import lr_scheduler

    classes = _classes(lr_scheduler, lr_scheduler.LRScheduler)
    classes["ReduceLROnPlateau"] = lr_scheduler.ReduceLROnPlateau
    if name in _REFUSED_SCHEDULERS:
        raise ConfigError(f"config key {where}: {name} is not supported: {_REFUSED_SCHEDULERS[name]}")
    if name not in classes:
        raise _unknown("scheduler", name, where, SCHEDULER_ALIASES,
                       {n: c for n, c in classes.items() if n not in _REFUSED_SCHEDULERS})
    return classes[name]


def signature_options(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword options of ``cls``'s constructor a config may give (kdkit's own excluded)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items()
            if n not in _MANAGED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_options(cls: type, options: Mapping, where: str, owned: Mapping[str, str]) -> dict[str, inspect.Parameter]:
    valid = signature_options(cls)
    for key in options:
        if key in owned:
            raise ConfigError(f"config key {where}.{key}: set {owned[key]} instead")
        if key not in valid:
            shown = ", ".join(n for n in valid if n not in owned) or "none"
            raise ConfigError(f"config key {where}: {cls.__name__} takes no option {key!r}; valid: {shown}")
    return valid


def check_loop(settings: Any, where: str = "train") -> None:
    """One-line :class:`ConfigError` for what ``settings`` (a :class:`TrainSettings`) asks of the loop
    that cannot be built: an unknown or unsupported class, an option its signature does not take (or
    one another key owns), a required option nobody fills, a value the optimiser refuses."""
    opt = optimizer_class(settings.optimizer, f"{where}.optimizer")
    owned = {"lr": f"{where}.lr", "weight_decay": f"{where}.weight_decay"}
    if settings.optimizer == "sgd":
        owned.update(momentum=f"{where}.momentum", nesterov=f"{where}.nesterov")
    valid = _check_options(opt, settings.optimizer_options, f"{where}.optimizer_options", owned)
    if "weight_decay" not in valid and settings.weight_decay:
        raise ConfigError(f"config key {where}.weight_decay: {opt.__name__} has no weight decay; "
                          f"set {where}.weight_decay=0")
    import torch

    try:  # the values, on a stand-in parameter: a bad beta stops the run here, not at its first stage
        opt([torch.zeros(2, 2, requires_grad=True)], **_optimizer_kwargs(settings, valid))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {where}.optimizer_options: {opt.__name__} refused them: "
                          f"{' '.join(str(e).split())}") from None
    sched = scheduler_class(settings.scheduler, f"{where}.scheduler")
    if sched is None:
        if settings.scheduler_options:
            raise ConfigError(f"config key {where}.scheduler_options: the {settings.scheduler!r} schedule takes "
                              f"none (it reads {where}.gamma, milestones, step_size); give a torch class name "
                              f"in {where}.scheduler for options")
        return
    valid = _check_options(sched, settings.scheduler_options, f"{where}.scheduler_options", {})
    filled = {FILLED_SCHEDULER_OPTIONS.get(sched.__name__)} | ({"max_lr"} if sched.__name__ == "OneCycleLR" else set())
    missing = [n for n, p in valid.items() if p.default is p.empty and n not in filled
               and n not in settings.scheduler_options]
    if missing:
        raise ConfigError(f"config key {where}.scheduler_options: {sched.__name__} needs {', '.join(missing)} "
                          "(counted in optimiser steps)")
    if sched.__name__ == "OneCycleLR" and settings.warmup_epochs:
        raise ConfigError(f"config key {where}.warmup_epochs: OneCycleLR warms up by itself "
                          f"({where}.scheduler_options.pct_start); set {where}.warmup_epochs=0")


def _optimizer_kwargs(settings: Any, valid: Mapping) -> dict:
    """``lr``, ``weight_decay`` (when the class takes it), the sgd alias's momentum and nesterov, then
    ``optimizer_options``."""
    kwargs: dict = {"lr": settings.lr}
    if "weight_decay" in valid:
        kwargs["weight_decay"] = settings.weight_decay
    if settings.optimizer == "sgd":
        kwargs.update(momentum=settings.momentum, nesterov=settings.nesterov)
    kwargs.update(settings.optimizer_options)
    return kwargs


def optimizer_kwargs(settings: Any) -> dict:
    """The keyword arguments :mod:`kdkit.engine.optim` builds ``train.optimizer`` with."""
    return _optimizer_kwargs(settings, signature_options(optimizer_class(settings.optimizer)))
