"""Typed, frozen views of the engine's resolved config: what the trainer and the run context read.

The declarations in :mod:`kdkit.config.schema` stay the one source of every default, type and range;
these dataclasses have no defaults of their own.  They are built from a *resolved* config (every key
present, every value checked), so a missing key is a bug, not a reason to fall back to some other
value.  A stage may override optimisation settings (``Stage.optimizer``): :meth:`TrainSettings.replace`
checks each override against the same declarations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from kdkit.config.keys import ConfigKey
from kdkit.config.loop import check_loop
from kdkit.config.schema import TRAIN_KEYS
from kdkit.config.view import thaw_config
from kdkit.errors import ConfigError

__all__ = ["TrainSettings", "EarlyStop", "check_train_sections", "DataSettings", "CheckpointSettings", "LoggingSettings", "RunSettings"]


def _section(config: Mapping, name: str) -> Mapping:
    section = config.get(name) if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key {name}: expected a mapping in the resolved config, got {section!r}")
    return section


def _take(cls, section: Mapping, where: str, **extra):
    """``cls`` from the keys of ``section`` named like its fields (all present: a resolved config)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    missing = [n for n in names if n not in section]
    if missing:
        raise ConfigError(f"config key {where}: the resolved config lacks {', '.join(missing)} (resolve it with "
                          "kdkit.config.resolve_method_config)")
    return cls(**{n: section[n] for n in names}, **extra)


@dataclass(frozen=True)
class EarlyStop:
    """``train.early_stop``: stop a stage once ``metric`` has not improved by ``min_delta`` for
    ``patience`` epochs (``patience`` 0: never); ``metric`` / ``mode`` ``None``: the stage's own."""

    patience: int
    metric: str | None
    mode: str | None
    min_delta: float


@dataclass(frozen=True)
class TrainSettings:
    """One stage's optimisation settings: the keys of :func:`kdkit.config.train_section`.

    Built by :meth:`from_section` / :meth:`replace`, which check the optimiser and scheduler class
    names and options against torch (:func:`kdkit.config.loop.check_loop`)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: str
    optimizer_options: Mapping[str, Any]
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    scheduler: str
    scheduler_options: Mapping[str, Any]
    milestones: tuple[int, ...]
    step_size: int
    gamma: float
    warmup_epochs: float
    grad_clip: float | None
    accumulate: int
    precision: str
    amp: bool
    channels_last: bool
    compile: bool
    early_stop: EarlyStop

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for name in ("optimizer_options", "scheduler_options"):  # plain values, as torch takes them
            object.__setattr__(self, name, thaw_config(getattr(self, name)))
        if not isinstance(self.early_stop, EarlyStop):
            object.__setattr__(self, "early_stop", _take(EarlyStop, self.early_stop, "train.early_stop"))

    @classmethod
    def from_section(cls, section: Mapping, where: str = "train") -> "TrainSettings":
        """From a resolved ``train``-like section (``train``, ``teacher_train``, ...)."""
        settings = _take(cls, section, where)
        check_loop(settings, where)
        return settings

    def replace(self, overrides: Mapping[str, Any] | None, where: str = "stage optimizer") -> "TrainSettings":
        """These settings with ``overrides`` (a stage's own), each checked by its declaration."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(TRAIN_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid: {', '.join(TRAIN_KEYS)}")
        checked = {k: _check(TRAIN_KEYS[k], v, getattr(self, k), f"{where}.{k}") for k, v in overrides.items()}
        settings = dataclasses.replace(self, **checked)
        check_loop(settings, where)
        return settings

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out


def check_train_sections(config: Mapping, path: str = "") -> None:
    """Build every ``train``-like section of a resolved config (``train``, ``teacher_train``, ... :
    the mappings with the keys of :func:`kdkit.config.train_section`), so what torch would refuse
    (an optimiser option, a scheduler class) stops the run when its config is resolved."""
    for key, value in config.items():
        if isinstance(value, Mapping):
            where = f"{path}.{key}" if path else str(key)
            if set(TRAIN_KEYS) <= set(value):
                TrainSettings.from_section(value, where)
            else:
                check_train_sections(value, where)


def _check(declared, value, current, where: str):
    """``value`` checked by its declaration; a nested section (``early_stop``) keeps the keys not given."""
    if isinstance(declared, ConfigKey):
        return declared.check(value, where)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(declared)}, got {value!r}")
    unknown = sorted(set(value) - set(declared))
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid: {', '.join(declared)}")
    given = {k: declared[k].check(v, f"{where}.{k}") for k, v in value.items()}
    return dataclasses.replace(current, **given)


@dataclass(frozen=True)
class DataSettings:
    """The engine's keys of ``data``; ``options`` are the chosen dataset's own (passed to it)."""

    name: str
    root: str | None
    val_fraction: float
    num_workers: int
    options: Mapping[str, Any]


@dataclass(frozen=True)
class CheckpointSettings:
    select_on: str
    save_best: bool


@dataclass(frozen=True)
class LoggingSettings:
    progress: bool
    log_every: int
    tensorboard: bool


@dataclass(frozen=True)
class RunSettings:
    """The engine's part of a resolved config (:func:`kdkit.config.base_config`), typed."""

    method: str
    seed: int
    device: str
    deterministic: bool
    data: DataSettings
    train: TrainSettings
    checkpoint: CheckpointSettings
    logging: LoggingSettings

    @classmethod
    def from_config(cls, config: Mapping) -> "RunSettings":
        data = _section(config, "data")
        engine_data = {f.name for f in dataclasses.fields(DataSettings)} - {"options"}
        return cls(
            **{k: _take_value(config, k) for k in ("method", "seed", "device", "deterministic")},
            data=_take(DataSettings, data, "data",
                       options={k: v for k, v in data.items() if k not in engine_data}),
            train=TrainSettings.from_section(_section(config, "train")),
            checkpoint=_take(CheckpointSettings, _section(config, "checkpoint"), "checkpoint"),
            logging=_take(LoggingSettings, _section(config, "logging"), "logging"),
        )


def _take_value(config: Mapping, key: str):
    if key not in config:
        raise ConfigError(f"config key {key}: missing from the resolved config (resolve it with "
                          "kdkit.config.resolve_method_config)")
    return config[key]
