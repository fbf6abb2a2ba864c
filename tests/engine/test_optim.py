"""kdkit.engine.optim: a stage's parameter groups, optimiser and per-step schedule (the aliases' closed form on
LambdaLR, torch classes by name with their options), and their checks (kdkit.config.loop)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

import kdkit
from kdkit.config import base_config, plain_defaults
from kdkit.config.settings import TrainSettings
from kdkit.engine import freeze
from kdkit.engine.optim import Schedule, build_optimizer, build_scheduler, param_groups


def _settings(**overrides) -> TrainSettings:
    return TrainSettings.from_section(plain_defaults(base_config())["train"]).replace(overrides)


def _optimizer(settings, lrs=(0.1,)):
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return build_optimizer(settings, groups)


def _rates(optimizer, scheduler, steps):
    out = [[g["lr"] for g in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append([g["lr"] for g in optimizer.param_groups])
    return out


def test_schedule_factors():
    cos = Schedule("cosine", warmup=4, total=20, steps_per_epoch=5, gamma=0.1, milestones=(), step_size=30)
    assert [cos.factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, full rate at its end
    assert cos.factor(4) == 1.0 and cos.factor(20) == 0.0 and cos.factor(99) == 0.0
    assert cos.factor(12) == pytest.approx(0.5)
    multi = Schedule("multistep", warmup=0, total=50, steps_per_epoch=5, gamma=0.1, milestones=(2, 4), step_size=30)
    assert [multi.factor(t) for t in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.1, 0.1, 0.1 ** 2]
    step = Schedule("step", warmup=0, total=50, steps_per_epoch=5, gamma=0.5, milestones=(), step_size=3)
    assert [step.factor(t) for t in (14, 15, 30)] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("overrides", [{"scheduler": "cosine", "warmup_epochs": 0.5},
                                       {"scheduler": "multistep", "milestones": [3, 1], "gamma": 0.2},
                                       {"scheduler": "step", "step_size": 2, "gamma": 0.3}])
def test_every_step_rate_is_base_times_the_closed_form(overrides):
    settings = _settings(**overrides)
    optimizer = _optimizer(settings, lrs=(0.1, 0.03))
    scheduler = build_scheduler(optimizer, settings, epochs=5, steps_per_epoch=7)
    factor = Schedule(settings.scheduler, int(round(settings.warmup_epochs * 7)), 35, 7, settings.gamma,
                      tuple(sorted(settings.milestones)), settings.step_size).factor
    for t, rates in enumerate(_rates(optimizer, scheduler, 35)):
        assert rates == [0.1 * factor(t), 0.03 * factor(t)]  # bit for bit, no drift


def test_a_restored_schedule_continues_bit_for_bit():
    settings = _settings(scheduler="cosine", warmup_epochs=1.0)
    optimizer = _optimizer(settings)
    scheduler = build_scheduler(optimizer, settings, epochs=4, steps_per_epoch=9)
    straight = _rates(optimizer, scheduler, 36)
    optimizer = _optimizer(settings)
    scheduler = build_scheduler(optimizer, settings, epochs=4, steps_per_epoch=9)
    _rates(optimizer, scheduler, 13)
    opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    optimizer = _optimizer(settings)
    scheduler = build_scheduler(optimizer, settings, epochs=4, steps_per_epoch=9)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    assert _rates(optimizer, scheduler, 23) == straight[13:]


def test_constant_rate_has_no_scheduler_and_unknown_names_fail():
    settings = _settings(scheduler="none")
    assert build_scheduler(_optimizer(settings), settings, 3, 5) is None
    assert build_scheduler(_optimizer(settings), _settings(scheduler="none", warmup_epochs=1.0), 3, 5) is not None
    bad = dataclasses.replace(settings, scheduler="poly")  # past the checks of from_section / replace
    with pytest.raises(kdkit.ConfigError, match="unknown scheduler 'poly'; did you mean PolynomialLR"):
        build_scheduler(_optimizer(settings), bad, 3, 5)
    with pytest.raises(kdkit.ConfigError, match="LBFGS is not supported: it needs a closure"):
        _optimizer(dataclasses.replace(settings, optimizer="LBFGS"))


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "adamw2"}, r"train\.optimizer: unknown optimizer 'adamw2'; did you mean AdamW.*valid: sgd, adam, "
                              r"adamw, ASGD"),
    ({"optimizer": "AdamW", "optimizer_options": {"beta": [0.9, 0.99]}},
     r"train\.optimizer_options: AdamW takes no option 'beta'; valid: betas, eps, amsgrad"),
    ({"optimizer_options": {"momentum": 0.5}}, r"train\.optimizer_options\.momentum: set train\.momentum instead"),
    ({"optimizer": "Adam", "optimizer_options": {"lr": 0.1}}, r"optimizer_options\.lr: set train\.lr instead"),
    ({"optimizer": "Adam", "optimizer_options": {"betas": [2, 0.9]}}, "Adam refused them: Invalid beta parameter"),
    ({"optimizer": "Rprop"}, r"Rprop has no weight decay; set train\.weight_decay=0"),
    ({"scheduler": "onecycle"}, "unknown scheduler 'onecycle'; did you mean OneCycleLR"),
    ({"scheduler": "ReduceLROnPlateau"}, "ReduceLROnPlateau is not supported: it steps once per epoch on a metric"),
    ({"scheduler": "LambdaLR"}, "LambdaLR is not supported: it takes a Python function"),
    ({"scheduler": "StepLR"}, r"train\.scheduler_options: StepLR needs step_size \(counted in optimiser steps\)"),
    ({"scheduler": "StepLR", "scheduler_options": {"step": 3}}, "StepLR takes no option 'step'; valid: step_size, "
                                                                "gamma$"),
    ({"scheduler": "cosine", "scheduler_options": {"T_max": 3}}, "the 'cosine' schedule takes none"),
    ({"scheduler": "OneCycleLR", "warmup_epochs": 1}, "OneCycleLR warms up by itself"),
])
def test_bad_loop_settings_are_one_line_config_errors(overrides, message):
    section = plain_defaults(base_config())["train"]
    section.update(overrides)
    with pytest.raises(kdkit.ConfigError, match=message) as info:
        TrainSettings.from_section(section)
    assert "\n" not in str(info.value)


def test_class_names_with_options_and_the_aliases_build_the_same_optimiser():
    sgd = _optimizer(_settings(optimizer="sgd", momentum=0.8, nesterov=True, optimizer_options={"dampening": 0.0}))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    adamw = _optimizer(_settings(optimizer="AdamW", lr=0.01, optimizer_options={"betas": [0.8, 0.99], "eps": 1e-6}))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.8, 0.99)
    assert adamw.defaults["eps"] == 1e-6 and adamw.defaults["weight_decay"] == 5e-4  # train.weight_decay
    assert _optimizer(_settings(optimizer="SGD")).defaults["momentum"] == 0  # a class name: torch's defaults
    rms = _optimizer(_settings(optimizer="RMSprop", optimizer_options={"alpha": 0.9}))
    assert type(rms) is torch.optim.RMSprop and rms.defaults["alpha"] == 0.9


def test_a_class_name_scheduler_warms_up_through_torch_and_gets_its_steps_filled():
    settings = _settings(scheduler="CosineAnnealingLR", warmup_epochs=1.0, scheduler_options={"eta_min": 0.001})
    optimizer = _optimizer(settings, lrs=(0.1, 0.03))
    scheduler = build_scheduler(optimizer, settings, epochs=4, steps_per_epoch=5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR)
    ramp, main = scheduler._schedulers
    assert isinstance(ramp, torch.optim.lr_scheduler.LinearLR) and main.T_max == 15  # 20 steps - 5 of warm-up
    rates = _rates(optimizer, scheduler, 20)
    for t in range(5):  # the aliases' warm-up, (t + 1) / w, up to rounding
        assert rates[t] == pytest.approx([0.1 * (t + 1) / 5, 0.03 * (t + 1) / 5], rel=1e-12)
    assert rates[5] == pytest.approx([0.1, 0.03]) and rates[20] == pytest.approx([0.001, 0.001])

    one = _settings(scheduler="OneCycleLR", scheduler_options={"pct_start": 0.25})
    optimizer = _optimizer(one, lrs=(0.1, 0.03))
    scheduler = build_scheduler(optimizer, one, epochs=3, steps_per_epoch=4)
    assert scheduler.total_steps == 12
    rates = _rates(optimizer, scheduler, 12)  # every step of the stage, no "stepped too many times"
    assert max(r[0] for r in rates) == pytest.approx(0.1) and max(r[1] for r in rates) == pytest.approx(0.03)
    given = build_scheduler(_optimizer(one), _settings(scheduler="OneCycleLR", scheduler_options={"total_steps": 40}),
                            epochs=3, steps_per_epoch=4)
    assert given.total_steps == 40  # the user's value stays


@pytest.mark.parametrize("overrides", [{"scheduler": "OneCycleLR"},
                                       {"scheduler": "CosineAnnealingWarmRestarts", "warmup_epochs": 0.5,
                                        "scheduler_options": {"T_0": 4}},
                                       {"scheduler": "StepLR", "warmup_epochs": 1.0,
                                        "scheduler_options": {"step_size": 3, "gamma": 0.7}}])
def test_a_restored_class_name_schedule_continues_bit_for_bit(overrides):
    settings = _settings(optimizer="AdamW", **overrides)

    def fresh():
        optimizer = _optimizer(settings, lrs=(0.1, 0.03))
        return optimizer, build_scheduler(optimizer, settings, epochs=4, steps_per_epoch=6)

    straight = _rates(*fresh(), 24)
    optimizer, scheduler = fresh()
    _rates(optimizer, scheduler, 10)
    opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    optimizer, scheduler = fresh()
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    assert _rates(optimizer, scheduler, 14) == straight[10:]


def test_param_groups():
    model, shared = nn.Linear(2, 2), nn.Linear(2, 1)
    extra = {"a": shared, "b": nn.Sequential(shared), "frozen": freeze(nn.Linear(2, 2))}
    (group,) = param_groups(model, extra, None, "s")
    assert [id(p) for p in group["params"]] == [id(p) for p in [*model.parameters(), *shared.parameters()]]
    custom = param_groups(model, extra, lambda m, e: [{"params": list(m.parameters()), "lr": 0.5}, {"params": []}], "s")
    assert len(custom) == 1 and custom[0]["lr"] == 0.5  # empty groups are dropped
    with pytest.raises(kdkit.KdkitError, match="stage s: nothing to train"):
        param_groups(freeze(nn.Linear(2, 2)), {}, None, "s")
    assert math.isclose(build_optimizer(_settings(optimizer="adamw", lr=0.01), [group]).defaults["lr"], 0.01)


@pytest.mark.parametrize("overrides", [{"lr": 1e308}, {"weight_decay": 1e300}])
def test_a_rate_beyond_the_parameters_dtype_is_one_line_naming_the_stage(overrides):
    """train.lr=1e308 on float32 parameters failed inside SGD's first step ('value cannot be converted
    to type float without overflow', a traceback); a float64 model can take it."""
    key = next(iter(overrides))
    groups = [{"params": [nn.Parameter(torch.zeros(2))]}]
    with pytest.raises(kdkit.ConfigError, match=rf"^stage student: {key} 1e\+3\d\d is beyond what the model's "
                                                rf"torch.float32 parameters can hold \(at most 3.4e\+38\)"):
        build_optimizer(_settings(**overrides), groups, "student")
    build_optimizer(_settings(**overrides), [{"params": [nn.Parameter(torch.zeros(2, dtype=torch.float64))]}])
