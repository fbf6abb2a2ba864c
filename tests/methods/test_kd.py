"""The built-in kd method: loss, combination rules, teacher cache, multi-teacher runs."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdkit_engine_testutil import TINY  # noqa: E402

import kdkit  # noqa: E402
from kdkit.losses import KLDivLoss, LogitMSELoss, hinton_kd  # noqa: E402
from kdkit.distill import COMBINE_RULES, DistillInputs, TeacherCombiner  # noqa: E402
from kdkit.methods.kd import KDMethod  # noqa: E402


def test_kl_is_hinton_kd():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    torch.testing.assert_close(KLDivLoss()(DistillInputs(s, t, temperature=T)), manual)
    torch.testing.assert_close(hinton_kd(s, t, T), manual)
    assert KLDivLoss()(DistillInputs(t, t, temperature=T)).abs() < 1e-6
    torch.testing.assert_close(LogitMSELoss()(DistillInputs(s, t, temperature=T)), F.mse_loss(s, t))


def test_losses_are_registered():
    reg = kdkit.get_registry("losses")
    assert {"kl", "mse"} <= set(reg.names())
    assert "kd" in kdkit.get_registry("methods")


def _logits():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 4, generator=g)
    ts = [torch.randn(8, 4, generator=g) * k for k in (1.0, 3.0)]
    y = torch.randint(0, 4, (8,), generator=g)
    return s, ts, y


def _term(s, T=2.0):
    """The KD term of student logits ``s`` against one (or the mean) teacher's logits."""
    return lambda t, i: hinton_kd(s, t, T)


def test_combination_rules():
    s, ts, y = _logits()
    kl = _term(s)
    per = torch.stack([kl(t, i) for i, t in enumerate(ts)])
    c = TeacherCombiner("avg_logits", 2)
    torch.testing.assert_close(c(ts, y, kl), kl((ts[0] + ts[1]) / 2, None))
    c = TeacherCombiner("mean_loss", 2)
    torch.testing.assert_close(c(ts, y, kl), per.mean())
    c = TeacherCombiner("inv_val_loss", 2)
    c.set_weights_from_losses([1.0, 3.0])  # weights ∝ 1/L: 0.75, 0.25
    torch.testing.assert_close(c.weights, torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(c(ts, y, kl), 0.75 * per[0] + 0.25 * per[1])
    with pytest.raises(kdkit.ConfigError, match="valid: avg_logits, mean_loss, inv_val_loss, ema_inv_loss"):
        TeacherCombiner("median", 2)
    assert COMBINE_RULES == ("avg_logits", "mean_loss", "inv_val_loss", "ema_inv_loss")


def test_ema_inverse_batch_loss_weights():
    s, ts, y = _logits()
    kl = _term(s)
    c = TeacherCombiner("ema_inv_loss", 2, momentum=0.9)
    c.train()
    inv = lambda: 1.0 / torch.stack([F.cross_entropy(t, y) for t in ts])  # noqa: E731
    per = torch.stack([kl(t, i) for i, t in enumerate(ts)])
    out1 = c(ts, y, kl)  # first batch: weights from this batch's inverse losses
    w1 = inv() / inv().sum()
    torch.testing.assert_close(out1, (w1 * per).sum())
    torch.testing.assert_close(c.ema, inv())
    ts2 = [ts[1], ts[0]]  # next batch: teachers swap quality
    inv2 = 1.0 / torch.stack([F.cross_entropy(t, y) for t in ts2])
    out2 = c(ts2, y, kl)  # uses the EMA before this batch's update
    per2 = torch.stack([kl(t, i) for i, t in enumerate(ts2)])
    torch.testing.assert_close(out2, (w1 * per2).sum())
    torch.testing.assert_close(c.ema, 0.9 * inv() + 0.1 * inv2)
    assert set(c.state_dict()) == {"weights", "ema", "ema_steps"}  # checkpointed as buffers


def test_teacher_cache_matches_teacher_outputs():
    from kdkit.distill.cache import TeacherCache
    from kdkit.engine import WithIndex

    ds = kdkit.get_registry("datasets").build("shapes", "train", None, train_per_class=4, augment="none")
    teacher = kdkit.get_registry("teachers").build("convnet", 10, width=4).eval()
    cache = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=7)
    idx = torch.tensor([3, 0, 39, 17])
    x = torch.stack([ds[i][0] for i in idx.tolist()])
    with torch.no_grad():
        torch.testing.assert_close(cache[idx], teacher(x), rtol=1e-4, atol=1e-5)
    item = WithIndex(ds)[5]
    assert len(item) == 3 and item[2] == 5 and item[1] == ds[5][1]


def test_default_config_is_valid_and_documented():
    from kdkit.config import plain_defaults, validate

    cfg = plain_defaults(KDMethod.default_config())
    assert validate(cfg, KDMethod.default_config()) == cfg
    assert cfg["distill"]["loss"] == "kl" and cfg["distill"]["combine"] == "avg_logits"
    assert cfg["checkpoint"]["select_on"] == "val"


def test_multi_teacher_run_with_pretrained_teacher_baseline_and_plugin_loss(tmp_path, manager):
    """Two teachers (one loaded from a local file with train: false), inv_val_loss, baseline stage,
    the distillation loss taken from a plugin, and a 5 % learning-rate warm-up."""
    from kdkit.engine import train

    weights = tmp_path / "teacher.pt"
    torch.save(manager.registry("teachers").build("convnet", 10, width=4).state_dict(), weights)
    sets = TINY + [f"teachers=[{{name: convnet, width: 4}}, {{name: convnet, width: 4, train: false, "
                   f"pretrained: '{weights}'}}]", "distill.combine=inv_val_loss", "distill.loss=mse",
                   "baseline.enabled=true", "train.epochs=1"]
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=manager)
    assert set(summary["teachers"]) == {"teacher.convnet.0", "teacher.convnet.1"}
    assert summary["teachers"]["teacher.convnet.1"]["pretrained"] == str(weights)
    w = summary["distill"]["teacher_weights"]
    assert len(w) == 2 and math.isclose(sum(w), 1.0, rel_tol=1e-6) and w[0] != w[1]
    assert summary["distill"]["loss"] == "mse" and "baseline" in summary
    stages = [json.loads(x)["stage"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == "teacher.convnet.0" and "baseline" in stages and stages[-1] == "student"
    assert not (tmp_path / "run" / "checkpoints" / "teacher.convnet.1").exists()


def test_untrained_teacher_without_weights_is_a_config_error(tmp_path, manager):
    from kdkit.engine import train

    with pytest.raises(kdkit.ConfigError, match=r"teachers\.0: train: false needs pretrained weights"):
        train("kd", sets=TINY + ["teachers=[{name: convnet, train: false}]"], out=tmp_path / "r", manager=manager)


def test_nan_loss_through_the_cli_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A plugin loss that turns NaN in student epoch 2: exit 4 (diverged), one line naming stage/epoch/step."""
    import kdkit_engine_testplugin

    from kdkit.cli import main
    from kdkit.engine import load_checkpoint
    from kdkit.plugins import plugin_manager_for_testing

    monkeypatch.setenv("KDTEST_NAN", "student:1")
    with plugin_manager_for_testing(kdkit_engine_testplugin):
        args = ["train", "--out", str(tmp_path / "r")] + [x for s in TINY for x in ("--set", s)]
        assert main(args + ["--set", "distill.loss=nanloss", "--set", "distill.alpha=0.0"]) == 4
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("kdkit: error", "kdkit: diverged"))]
    assert err == [f"kdkit: diverged: non-finite loss (nan) in stage 'student', epoch 2, step 5; stopped — "
                   f"last good checkpoint kept: {tmp_path / 'r' / 'checkpoints' / 'student' / 'last.pt'}"]
    last = load_checkpoint(tmp_path / "r" / "checkpoints" / "student" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values()
                                      if v.is_floating_point())


@pytest.mark.parametrize("item, message", [
    ("distill.alpha=2", r"config key distill.alpha: expected float in \[0, 1\], got 2.0"),
    ("distill.combine=median", "config key distill.combine: expected one of avg_logits, mean_loss, inv_val_loss, "
                               "ema_inv_loss, got 'median'"),
    ("distill.terms=[{loss: nope}]", "unknown loss 'nope'"),
    ("distill.terms=[{loss: fitnet, student: a, teacher: b, teacher_index: 3}]", "teacher_index 3, but there are 1"),
    ("distill.teacher_cache=maybe", "config key distill.teacher_cache: expected one of auto, memory, disk, off"),
])
def test_bad_distill_settings_fail_before_a_run_directory_exists(tmp_path, manager, item, message):
    from kdkit.engine import train

    with pytest.raises(kdkit.KdkitError, match=message):
        train("kd", sets=TINY + [item], out=tmp_path / "run", manager=manager)
    assert not (tmp_path / "run").exists()


def test_an_early_stopped_stage_says_so_in_the_summary(tmp_path, manager):
    """train.early_stop ends the student after patience epochs without gain; summary.json names the epoch,
    and a stage that ran to its end has no such key."""
    from kdkit_engine_testutil import TINY

    from kdkit.engine import train

    summary = train("kd", sets=TINY + ["train.epochs=6", "train.early_stop={patience: 1, min_delta: 1000}"],
                    out=tmp_path / "run", manager=manager)
    assert summary["student"]["stopped_epoch"] == 1 and summary["student"]["best_epoch"] == 0
    assert "stopped_epoch" not in summary["teachers"]["teacher.convnet"]  # teacher_train has no early_stop
