"""kdkit.engine.optim: a stage's parameter groups, optimiser and per-step schedule (closed form on LambdaLR)."""
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
    bad = dataclasses.replace(settings, scheduler="poly")  # past the declared choices
    with pytest.raises(kdkit.ConfigError, match="unknown scheduler 'poly'; valid: none, cosine, step, multistep"):
        build_scheduler(_optimizer(settings), bad, 3, 5)
    with pytest.raises(kdkit.ConfigError, match="unknown optimizer 'lbfgs'; valid: sgd, adam, adamw"):
        _optimizer(dataclasses.replace(settings, optimizer="lbfgs"))


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
