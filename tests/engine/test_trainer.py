"""Trainer / Stage / RunContext in-process: determinism, best selection, NaN handling, hooks."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import kdkit
from kdkit.config import base_config, plain_defaults
from kdkit.engine import RunContext, Stage, StageResult, TrainingError, freeze, load_checkpoint
from kdkit.seeding import capture_rng_state, restore_rng_state


def _config(**train):
    cfg = plain_defaults(base_config())
    cfg["method"] = "test"
    cfg["device"] = "cpu"
    cfg["logging"]["progress"] = False
    cfg["train"].update({"epochs": 3, "batch_size": 8, "lr": 0.1, "scheduler": "cosine"})
    cfg["train"].update(train)
    return cfg


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def _fit(tmp_path, name="run", cfg=None, manager=None, **stage_kw):
    ctx = RunContext(cfg or _config(), tmp_path / name, manager)
    stage = Stage(name=stage_kw.pop("stage_name", "s"), model=stage_kw.pop("model", None) or _model(),
                  train_data=_data(), val_data=stage_kw.pop("val_data", _data(24, 1)), **stage_kw)
    return ctx, stage, ctx.fit(stage)


def test_fit_is_deterministic_and_writes_run_files(tmp_path):
    ctx1, s1, r1 = _fit(tmp_path, "a", test_data=_data(20, 2))
    ctx2, s2, r2 = _fit(tmp_path, "b", test_data=_data(20, 2))
    for p, q in zip(s1.model.state_dict().values(), s2.model.state_dict().values()):
        assert torch.equal(p, q)
    assert r1 == r2 and isinstance(r1, StageResult)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines[:3]] == [0, 1, 2]  # one line per evaluation
    assert all({"stage", "epoch", "step", "train.loss", "val.top1", "val.loss"} <= set(x) for x in lines[:3])
    assert lines[3]["split"] == "test" and "test.top1" in lines[3]
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    for kind in ("last", "best"):
        state = torch.load(tmp_path / "a" / "checkpoints" / "s" / f"{kind}.pt", weights_only=True)
        assert state["stage"] == "s"
    last = load_checkpoint(tmp_path / "a" / "checkpoints" / "s" / "last.pt")
    assert last["finished"] and last["epoch"] == 3 and last["step"] == 3 * 6
    assert {"model", "extra_modules", "optimizer", "scheduler", "scaler", "rng", "config", "best"} <= set(last)
    assert set(last["rng"]) >= {"python", "numpy", "torch"}


def test_best_checkpoint_is_chosen_on_validation_and_restored(tmp_path):
    scores = iter([10.0, 30.0, 20.0])
    snapshots = []

    def eval_fn(model, loader):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"top1": next(scores, 0.0)}

    ctx, stage, result = _fit(tmp_path, eval_fn=eval_fn)
    assert result.best_epoch == 1 and result.best_metrics == {"top1": 30.0}
    assert result.final_metrics == {"top1": 20.0}
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "s" / "best.pt")
    assert best["epoch"] == 1
    for k, v in stage.model.state_dict().items():  # the best weights are restored at the end
        assert torch.equal(v, snapshots[1][k])


def test_select_mode_min(tmp_path):
    losses = iter([3.0, 1.0, 2.0])
    _, _, result = _fit(tmp_path, eval_fn=lambda m, l: {"loss": next(losses)}, select_metric="loss",
                        select_mode="min")
    assert result.best_epoch == 1


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    def step_fn(model, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        return (loss * float("nan") if trainer_epoch["e"] >= 1 else loss), {}

    trainer_epoch = {"e": 0}

    def before_epoch(trainer, epoch):
        trainer_epoch["e"] = epoch

    ctx = RunContext(_config(), tmp_path / "run")
    stage = Stage("student", _model(), _data(), _data(24, 1), step_fn=step_fn, before_epoch_fn=before_epoch)
    with pytest.raises(TrainingError) as exc:
        ctx.fit(stage)
    msg = str(exc.value)
    assert "\n" not in msg and "stage 'student'" in msg and "epoch 2" in msg and "step 6" in msg
    assert "last good checkpoint kept" in msg and isinstance(exc.value, kdkit.KdkitError)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "student" / "last.pt")
    assert last["epoch"] == 1 and not last["finished"]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_extra_modules_trained_and_saved_and_after_step_fn(tmp_path):
    emb = nn.Embedding(3, 6)
    before = emb.weight.detach().clone()
    calls = []

    def step_fn(model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x + emb(y)), y), {"aux": torch.tensor(1.0)}

    def after_step(trainer, step):
        calls.append(step)
        with torch.no_grad():
            emb.weight.div_(emb.weight.norm(dim=1, keepdim=True))

    ctx, stage, _ = _fit(tmp_path, step_fn=step_fn, extra_modules={"emb": emb}, after_step_fn=after_step)
    assert calls == list(range(18))
    assert not torch.equal(before, emb.weight)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "s" / "last.pt")
    assert torch.equal(last["extra_modules"]["emb"]["weight"], emb.weight)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["train.aux"] == 1.0


def test_freeze():
    m = _model()
    m.train()
    assert freeze(m) is m and not m.training and not any(p.requires_grad for p in m.parameters())


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_select_on_test_and_last(tmp_path, manager):
    from kdkit.engine import train
    from kdkit_engine_testutil import TINY

    s = train("kd", sets=TINY + ["checkpoint.select_on=last", "train.epochs=1"], out=tmp_path / "last",
              manager=manager)
    assert s["student"]["best_epoch"] == 0 and s["student"]["val_top1"] is None
    with pytest.raises(kdkit.ConfigError, match="select_on"):
        train("kd", sets=TINY + ["checkpoint.select_on=bogus"], out=tmp_path / "bad", manager=manager)


# --- lifecycle hooks ------------------------------------------------------------------------

class Recorder:
    """Records every lifecycle hook; sets the learning rate to 0 from epoch 1 on."""

    def __init__(self, zero_lr_from=None):
        self.calls = []
        self.zero_lr_from = zero_lr_from

    @kdkit.hookimpl
    def kdkit_configure(self, config, run_dir):
        self.calls.append(("kdkit_configure", config["method"], run_dir))
        config["train"]["epochs"] = 2  # changes made here take effect

    @kdkit.hookimpl
    def kdkit_before_epoch(self, trainer, epoch):
        self.calls.append(("kdkit_before_epoch", trainer.stage.name, epoch))
        self.epochs_seen = trainer.ctx.config.train.epochs  # the hook's change, in the run's frozen view
        with pytest.raises(TypeError, match="frozen"):
            trainer.ctx.config.train["epochs"] = 3
        if self.zero_lr_from is not None and epoch >= self.zero_lr_from:
            for group in trainer.optimizer.param_groups:
                group["lr"] = 0.0

    @kdkit.hookimpl
    def kdkit_after_step(self, trainer, step, loss, logs):
        assert isinstance(loss, float) and isinstance(logs, dict)
        self.calls.append(("kdkit_after_step", trainer.stage.name, step))

    @kdkit.hookimpl
    def kdkit_after_evaluation(self, trainer, epoch, metrics):
        self.calls.append(("kdkit_after_evaluation", trainer.stage.name, epoch, "val.top1" in metrics))

    @kdkit.hookimpl
    def kdkit_after_epoch(self, trainer, epoch, metrics):
        self.calls.append(("kdkit_after_epoch", trainer.stage.name, epoch, "train.loss" in metrics))

    @kdkit.hookimpl
    def kdkit_run_finished(self, run_dir, summary):
        self.calls.append(("kdkit_run_finished", run_dir, summary["student"]["top1"] is not None))


def test_every_lifecycle_hook_is_called_in_order(tmp_path, manager):
    from kdkit_engine_testutil import TINY

    from kdkit.engine import train

    rec = Recorder()
    manager.register(rec, name="recorder")
    run_dir = tmp_path / "run"
    summary = train("kd", sets=TINY + ["train.epochs=5"], out=run_dir, manager=manager)
    names = [c[0] for c in rec.calls]
    assert names[0] == "kdkit_configure" and rec.calls[0][1:] == ("kd", run_dir)
    assert rec.epochs_seen == 2
    assert names[-1] == "kdkit_run_finished" and rec.calls[-1] == ("kdkit_run_finished", run_dir, True)
    student = [c for c in rec.calls if len(c) > 1 and c[1] == "student"]
    # kdkit_configure set train.epochs=2 (over --set 5): 2 epochs of 5 steps (72 samples / 16)
    assert [c for c in student if c[0] == "kdkit_before_epoch"] == [("kdkit_before_epoch", "student", 0),
                                                                    ("kdkit_before_epoch", "student", 1)]
    assert [c[2] for c in student if c[0] == "kdkit_after_step"] == list(range(10))
    assert ("kdkit_after_evaluation", "student", 1, True) in student
    assert ("kdkit_after_epoch", "student", 1, True) in student
    order = [c[0] for c in student[:7]]
    assert order == ["kdkit_before_epoch"] + ["kdkit_after_step"] * 5 + ["kdkit_after_evaluation"]
    assert student[7][0] == "kdkit_after_epoch"
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_a_hook_can_change_training(tmp_path, manager):
    """kdkit_before_epoch setting lr=0 freezes the weights: hooks really steer training."""
    manager.register(Recorder(zero_lr_from=1), name="zero-lr")
    cfg = _config(scheduler="none", epochs=2, momentum=0.0, weight_decay=0.0)
    ctx = RunContext(cfg, tmp_path / "run", manager)
    seen = []

    def eval_fn(model, loader):
        seen.append({k: v.clone() for k, v in model.state_dict().items() if "weight" in k})
        return {"top1": 0.0}

    stage = Stage("s", _model(), _data(), _data(24, 1), eval_fn=eval_fn)
    ctx.fit(stage)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["lr"] == 0.1 and lines[1]["lr"] == 0.0
    for k in seen[0]:  # epoch 2 (lr 0) changed nothing
        assert torch.equal(seen[0][k], seen[1][k])


def test_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    cfg = _config(epochs=1)
    cfg["logging"]["progress"] = True
    _fit(tmp_path, "quiet", cfg=cfg)  # captured stderr is not a TTY
    assert "s 1/1" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _fit(tmp_path, "tty", cfg=cfg)
    assert "s 1/1" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only")
def test_amp_on_cuda_saves_scaler_state(tmp_path):
    cfg = _config(epochs=1, amp=True)
    cfg["device"] = "cuda"
    ctx, stage, _ = _fit(tmp_path, cfg=cfg)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "s" / "last.pt")
    assert last["scaler"] is not None and "scale" in last["scaler"]


# --- the open loop (train.accumulate, precision, channels_last, compile, early_stop) ---------------------

def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(6, 3)


@pytest.mark.parametrize("n", [16, 20])
def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(tmp_path, n):
    """Known answer: for a mean loss, N accumulated micro-batches of B make the step of one batch of N x B."""
    plain = {"epochs": 1, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "scheduler": "none"}
    runs = {}
    for name, batch, accumulate in (("big", 16, 1), ("micro", 4, 4)):
        ctx = RunContext(_config(batch_size=batch, accumulate=accumulate, **plain), tmp_path / f"{name}{n}")
        stage = Stage("s", _linear(), _data(n), _data(8, 1))
        ctx.fit(stage)
        runs[name] = (stage.model, ctx)
    for p, q in zip(runs["big"][0].parameters(), runs["micro"][0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    steps = [json.loads(x)["step"] for x in (tmp_path / f"micro{n}" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == (1 if n == 16 else 2)  # 20 = 16 + a last step of its one remaining micro-batch


def test_precision_picks_autocast_and_the_scaler(tmp_path):
    ctx = RunContext(_config(epochs=1), tmp_path / "run")
    for precision, dtype, scaler in (("auto", None, False), ("fp32", None, False), ("bf16", torch.bfloat16, False),
                                     ("fp16", torch.float16, True)):
        trainer = ctx.trainer(Stage(f"s{precision}", _model(), _data(), _data(8, 1),
                                    optimizer={"precision": precision}))
        assert trainer.amp_dtype == dtype, precision
        trainer.fit()
        assert (trainer.scaler is not None) == scaler, precision
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "sfp16" / "last.pt")
    assert last["scaler"] is not None and "scale" in last["scaler"]


def _conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    return TensorDataset(x, (x[:, 0].mean((1, 2)) > 0).long())


def test_channels_last_trains_in_that_format_and_saves_plain_weights(tmp_path):
    seen = []

    def step(model, batch):
        seen.append(batch[0].is_contiguous(memory_format=torch.channels_last))
        return nn.functional.cross_entropy(model(batch[0]), batch[1]), {}

    ctx = RunContext(_config(epochs=1, channels_last=True), tmp_path / "run")
    stage = Stage("s", _conv(), _images(), _images(8, 1), step_fn=step)
    ctx.fit(stage)
    assert seen and all(seen)
    assert stage.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = _conv(1)
    plain.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "s" / "best.pt")["model"])
    torch.testing.assert_close(plain[0].weight, stage.model[0].weight)


def test_a_compiled_run_saves_checkpoints_a_plain_model_loads(tmp_path):
    ctx = RunContext(_config(epochs=1, compile=True), tmp_path / "run")
    stage = Stage("s", _linear(), _data(16), _data(8, 1))
    trainer = ctx.trainer(stage)
    trainer.fit()
    assert hasattr(trainer.train_model, "_orig_mod")  # it did train the compiled module
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "s" / "best.pt")
    assert not any("_orig_mod" in k for k in best["model"])
    plain = _linear(1)
    plain.load_state_dict(best["model"])  # strict: the same keys
    torch.testing.assert_close(plain.weight, stage.model.weight)


def _early(**keys):
    return {"patience": 0, "metric": None, "mode": None, "min_delta": 0.0, **keys}


def test_early_stop_stops_when_the_metric_stalls_and_records_it(tmp_path):
    ctx = RunContext(_config(epochs=6, early_stop=_early(patience=2, min_delta=1000.0)), tmp_path / "run")
    result = ctx.fit(Stage("s", _model(), _data(), _data(24, 1)))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]  # no epoch gains 1000 points: stopped after 2 more
    assert [x["early_stop.bad_epochs"] for x in lines] == [0, 1, 2] and lines[2]["early_stop.stopped"] is True
    assert result.stopped_epoch == 2 and result.as_dict()["stopped_epoch"] == 2
    lossy = RunContext(_config(epochs=2, early_stop=_early(patience=5, metric="loss", mode="min")),
                       tmp_path / "min")
    assert lossy.fit(Stage("s", _model(), _data(), _data(24, 1))).stopped_epoch is None


def test_early_stop_needs_a_validation_metric_and_a_direction(tmp_path):
    ctx = RunContext(_config(early_stop=_early(patience=2)), tmp_path / "run")
    with pytest.raises(kdkit.ConfigError, match="train.early_stop needs validation metrics"):
        ctx.trainer(Stage("s", _model(), _data(), None))
    with pytest.raises(kdkit.ConfigError, match="give train.early_stop.mode"):
        ctx.trainer(Stage("s", _model(), _data(), _data(8, 1), optimizer={"early_stop": {"metric": "loss"}}))


@pytest.mark.slow
def test_accumulation_under_two_gloo_processes_follows_one_process(tmp_path):
    """DDP holds back its all-reduce (no_sync) for all but the step's last micro-batch: the same steps."""
    from kdkit_engine_testutil import TINY, kdkit_cli

    sets = [s for s in TINY if not s.startswith(("teachers=", "student."))] + [
        "teachers=[{name: mlp}]", "student.name=mlp", "teacher_train.epochs=1", "train.accumulate=2",
        "train.optimizer=AdamW", "train.scheduler=OneCycleLR"]

    def args(out):
        return ["--plugins-module", "kdkit_engine_testplugin", "train", "--method", "kd", "--out", str(out),
                *[a for s in sets for a in ("--set", s)]]

    for name, nproc in (("one", 1), ("two", 2)):
        r = kdkit_cli(args(tmp_path / name), nproc=nproc)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_checkpoint(tmp_path / n / "checkpoints" / "student" / "last.pt") for n in ("one", "two"))
    assert a["step"] == b["step"] == 6  # 2 epochs of 5 micro-batches: steps of 2, 2 and 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
