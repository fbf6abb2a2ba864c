"""Exact resume after SIGKILL: a run killed at several moments and resumed ends bit-identical
(summary.json and metrics.jsonl) to an uninterrupted run.  CPU, subprocesses, real SIGKILL."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import kdkit_prestarted
import pytest
import torch
from kdkit_engine_testutil import TINY, subprocess_env

pytestmark = pytest.mark.slow

# two teachers (one BN-free), EMA-weighted combination (state in an extra module), augmentation on
SETS = [s for s in TINY if not s.startswith(("teachers=", "data.augment", "teacher_train.epochs"))] + [
    "teachers=[{name: convnet, width: 4}, {name: mlp}]", "teacher_train.epochs=2", "train.epochs=3",
    "distill.combine=ema_inv_loss", "data.augment=weak",
]
PLUGIN = "kdkit_engine_testplugin"


def kdkit(args, env=None, timeout=300):
    return kdkit_prestarted.run([sys.executable, "-m", "kdkit", "--plugins-module", PLUGIN, *args],
                                env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _train_args(out: Path):
    args = ["train", "--method", "kd", "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return args


def _kill_when_metrics(run_dir: Path, delay: float) -> bool:
    """Start a run, SIGKILL it `delay` s after metrics.jsonl has a line; True if it was killed."""
    proc = kdkit_prestarted.Popen([sys.executable, "-m", "kdkit", "--plugins-module", PLUGIN, "train",
                                   "--resume", str(run_dir)], env=subprocess_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    start_lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > start_lines:
            break
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    return False


def test_sigkill_at_any_moment_then_resume_is_exact(tmp_path):
    ref = tmp_path / "ref"
    r = kdkit(_train_args(ref))
    assert r.returncode == 0, r.stderr

    run = tmp_path / "killed"
    kills = [
        "after_step:teacher.convnet:0:2",  # mid-epoch, before any checkpoint of the first stage
        "after_evaluation:teacher.mlp:1",  # metrics line written, checkpoint not yet
        "before_epoch:student:0",  # between stages: teachers finished, student not started
        "after_step:student:1:7",  # mid-epoch of the last stage
    ]
    first = True
    for spec in kills:
        args = _train_args(run) if first else ["train", "--resume", str(run)]
        first = False
        r = kdkit(args, env=subprocess_env(KDTEST_KILL=spec))
        assert r.returncode == -signal.SIGKILL, (spec, r.returncode, r.stderr[-2000:])
    # and once from outside, at a random moment after the next evaluation line appears
    killed = _kill_when_metrics(run, delay=random.Random(os.getpid()).uniform(0.0, 0.5))
    r = kdkit(["train", "--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert "resum" in r.stderr
    assert (run / "summary.json").read_text() == (ref / "summary.json").read_text()
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert ref_summary["distill"]["combine"] == "ema_inv_loss" and len(ref_summary["teachers"]) == 2
    print("external kill happened:", killed)

    # resuming a finished run changes nothing
    r = kdkit(["train", "--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_resume_rejects_overrides_and_non_runs(tmp_path):
    r = kdkit(["train", "--resume", str(tmp_path), "--set", "train.epochs=9"])
    assert r.returncode == 2 and "not a kdkit run directory" in r.stderr
    (tmp_path / "config.yaml").write_text("method: kd\n")
    r = kdkit(["train", "--resume", str(tmp_path), "--set", "train.epochs=9"])
    assert r.returncode == 2 and "cannot be combined" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# every option of the open loop (train.*) inside exact resume: SIGKILL in the student's second epoch, --resume
LOOP_OPTIONS = {
    "optimizer": ["train.optimizer=AdamW", "train.lr=0.01", "train.optimizer_options={betas: [0.8, 0.95], eps: 1.0e-7}"],
    "scheduler": ["train.scheduler=CosineAnnealingLR", "train.warmup_epochs=0.5",
                  "train.scheduler_options={eta_min: 0.001}"],
    "onecycle": ["train.scheduler=OneCycleLR", "train.scheduler_options={pct_start: 0.4}"],
    "accumulate": ["train.accumulate=2"],
    "bf16": ["train.precision=bf16"],
    "fp16": ["train.precision=fp16"],  # GradScaler state
    "channels_last": ["train.channels_last=true"],
    "compile": ["train.compile=true"],
    # epoch 0 sets the best, epoch 1 cannot gain 1000 points: it stops there, from the counters in last.pt
    "early_stop": ["train.epochs=4", "train.early_stop.patience=1", "train.early_stop.min_delta=1000"],
}


@pytest.mark.parametrize("sets", LOOP_OPTIONS.values(), ids=LOOP_OPTIONS.keys())
def test_every_loop_option_resumes_exactly(tmp_path, sets):
    def args(out):
        return ["train", "--method", "kd", "--out", str(out), *[a for s in [*TINY, *sets] for a in ("--set", s)]]

    ref = tmp_path / "ref"
    r = kdkit(args(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "killed"
    r = kdkit(args(run), env=subprocess_env(KDTEST_KILL="after_step:student:1"))
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    r = kdkit(["train", "--resume", str(run)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming at epoch 2" in r.stderr
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert (run / "summary.json").read_text() == (ref / "summary.json").read_text()
    lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    student = [x for x in lines if x["stage"] == "student" and "split" not in x]
    if "train.early_stop.patience=1" in sets:
        assert len(student) == 2 and student[-1]["early_stop.stopped"] is True
    best = torch.load(run / "checkpoints" / "student" / "best.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in best["model"])
