"""Typed engine settings (kdkit.config.settings): built from a resolved config, no defaults of their own."""
from __future__ import annotations

import dataclasses

import pytest

from kdkit.config import base_config, plain_defaults, train_section
from kdkit.config.schema import TRAIN_KEYS
from kdkit.config.settings import RunSettings, TrainSettings
from kdkit.errors import ConfigError


def test_train_settings_have_exactly_the_declared_keys_and_no_defaults():
    fields = dataclasses.fields(TrainSettings)
    assert [f.name for f in fields] == list(TRAIN_KEYS)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def test_settings_take_the_resolved_values():
    config = plain_defaults(base_config())
    config["method"] = "kd"
    settings = RunSettings.from_config(config)
    assert settings.train.lr == 0.05 and settings.train.momentum == 0.9 and settings.train.scheduler == "cosine"
    assert settings.data.name == "shapes" and settings.data.options == {}
    assert settings.checkpoint.select_on == "val" and settings.logging.log_every == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train.lr = 1.0  # type: ignore[misc]
    other = TrainSettings.from_section(plain_defaults(train_section(lr=0.1, epochs=3)), "teacher_train")
    assert other.lr == 0.1 and other.epochs == 3


def test_a_missing_key_is_an_error_not_a_fallback():
    section = plain_defaults(train_section())
    del section["momentum"]
    with pytest.raises(ConfigError, match="lacks momentum"):
        TrainSettings.from_section(section)


def test_stage_overrides_are_checked_by_the_declarations():
    settings = TrainSettings.from_section(plain_defaults(train_section()))
    assert settings.replace({"lr": 1, "milestones": [3, 1]}).lr == 1.0
    with pytest.raises(ConfigError, match=r"stage optimizer\.lr: expected float in \(0, inf\)"):
        settings.replace({"lr": -1})
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        settings.replace({"learning_rate": 0.1})


def test_run_context_exposes_the_typed_settings(tmp_path):
    from kdkit.engine import RunContext

    config = plain_defaults(base_config())
    config.update({"method": "test", "device": "cpu"})
    config["train"]["lr"] = 0.2
    ctx = RunContext(config, tmp_path / "run")
    try:
        assert ctx.settings.train.lr == 0.2 and ctx.settings.device == "cpu"
        assert ctx.config.train.lr == 0.2 and ctx.config["train"]["lr"] == 0.2
        config["train"]["lr"] = 0.3  # too late: the hook that may change the config ran before the context
        assert ctx.config.train.lr == 0.2 and ctx.settings.train.lr == 0.2
        with pytest.raises(TypeError, match=r"frozen \(changing train\.lr\)"):
            ctx.config.train["lr"] = 0.3
    finally:
        ctx.close()



def test_nested_and_open_train_keys():
    settings = TrainSettings.from_section(plain_defaults(train_section(early_stop={"patience": 3})))
    assert settings.early_stop.patience == 3 and settings.early_stop.metric is None
    stage = settings.replace({"early_stop": {"min_delta": 0.5}, "optimizer": "AdamW",
                              "optimizer_options": {"betas": [0.8, 0.9]}})
    assert stage.early_stop.patience == 3 and stage.early_stop.min_delta == 0.5  # the keys not given stay
    assert stage.as_dict()["early_stop"] == {"patience": 3, "metric": None, "mode": None, "min_delta": 0.5}
    assert stage.optimizer_options == {"betas": [0.8, 0.9]}
    with pytest.raises(ConfigError, match=r"stage optimizer\.early_stop: unknown setting 'wait'"):
        settings.replace({"early_stop": {"wait": 1}})
    with pytest.raises(ConfigError, match=r"stage optimizer\.accumulate: expected int in \[1, inf\), got 0"):
        settings.replace({"accumulate": 0})
    with pytest.raises(ConfigError, match=r"precision: expected one of auto, fp32, bf16, fp16, got 'fp8'"):
        settings.replace({"precision": "fp8"})
