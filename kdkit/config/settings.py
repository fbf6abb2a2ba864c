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

from kdkit.config.schema import TRAIN_KEYS
from kdkit.errors import ConfigError

__all__ = ["TrainSettings", "DataSettings", "CheckpointSettings", "LoggingSettings", "RunSettings"]


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
class TrainSettings:
    """One stage's optimisation settings: the keys of :func:`kdkit.config.train_section`."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    scheduler: str
    milestones: tuple[int, ...]
    step_size: int
    gamma: float
    warmup_epochs: float
    grad_clip: float | None
    amp: bool

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))

    @classmethod
    def from_section(cls, section: Mapping, where: str = "train") -> "TrainSettings":
        """From a resolved ``train``-like section (``train``, ``teacher_train``, ...)."""
        return _take(cls, section, where)

    def replace(self, overrides: Mapping[str, Any] | None, where: str = "stage optimizer") -> "TrainSettings":
        """These settings with ``overrides`` (a stage's own), each checked by its declaration."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(TRAIN_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid: {', '.join(TRAIN_KEYS)}")
        checked = {k: TRAIN_KEYS[k].check(v, f"{where}.{k}") for k, v in overrides.items()}
        return dataclasses.replace(self, **checked)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out


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
