"""Races of ``kdkit sweep`` processes on one ``--out``: two sweeps started together (one wins, the other
stops 'in use'), and a sweep stopped by SIGTERM or killed with its whole process group while its run
holds the run directory, then run again (each run once in results.jsonl, no metrics record twice).
The runs are the tiny ``shapes`` runs of tests/commands/test_sweep_command.py; kdkit_fault_testplugin's
KDTEST_HOLD keeps a run in its locked directory, before anything is trained."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kdkit_sweep_testutil import alive, finish, lock_holder, start_sweep

from kdkit.paths import LOCK_FILE

SWEEP = {
    "name": "race",
    "seeds": [0],
    "base": {"data.name": "shapes", "student.name": "convnet", "data.train_per_class": 8,
             "data.test_per_class": 4, "teachers": [{"name": "convnet", "width": 4}], "student.width": 4,
             "teacher_train.epochs": 1, "train.epochs": 2, "train.batch_size": 16,
             "teacher_train.batch_size": 16, "logging.progress": False},
    "cells": [{"name": "kd", "method": "kd"}],
}


def check_results(out: Path) -> None:
    """Each run once in results.jsonl, and no record twice in its metrics.jsonl."""
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    keys = [(r["cell"], r["row"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) and {r["status"] for r in records} == {"trained"}, records
    lines = (out / "runs/kd/default/seed0/metrics.jsonl").read_text().splitlines()
    assert lines and len(lines) == len(set(lines)), lines


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "race.yaml"
    path.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return path


def test_two_sweeps_started_together_on_one_out(cfg, tmp_path):
    out = tmp_path / "out"
    procs = [start_sweep(cfg, out, hold=2), start_sweep(cfg, out, hold=2)]
    results = [finish(p) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.strip().splitlines()[-1].startswith(f"kdkit: error: sweep directory {out} is in use by another "
                                                     "kdkit process (PID ")
    check_results(out)


def test_a_sweep_meeting_another_that_is_writing_its_copy_is_told_in_use(cfg, tmp_path):
    # the moment of the race above that the two processes hit only sometimes: the other sweep holds OUT's lock
    # and its copy of the sweep file is still a temporary file (atomic_write_text), not yet sweep.yaml
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    (out / ".sweep.yaml.x1.tmp").write_text("name: race\n")
    with open(out / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        code, err = finish(start_sweep(cfg, out))
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"kdkit: error: sweep directory {out} is in use by another "
                                                   f"kdkit process (PID {os.getpid()})"), err
    assert sorted(p.name for p in out.iterdir()) == sorted([".sweep.yaml.x1.tmp", LOCK_FILE])  # nothing written


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL of the group"])
def test_a_sweep_stopped_while_its_run_holds_its_directory_then_run_again(cfg, tmp_path, how):
    out = tmp_path / "out"
    proc = start_sweep(cfg, out, hold=8)
    try:
        run = lock_holder(out / "runs/kd/default/seed0", [proc])
    except BaseException:
        with contextlib.suppress(subprocess.TimeoutExpired):
            finish(proc, timeout=0.1)  # leaves no sweep or run behind
        raise
    if how == "SIGTERM":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    code, err = finish(proc, timeout=60)
    assert code == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL), err
    if how == "SIGTERM":  # the sweep waited for its run before it exited
        assert not alive(run), "the run outlived its sweep"
    else:  # the kernel killed both at once, but the run (the larger process) may take longer to exit
        deadline = time.monotonic() + 30
        while alive(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(run), "the run survived the SIGKILL of its sweep's process group"
    code, err = finish(start_sweep(cfg, out, hold=0))  # with the fault plugin the sweep recorded, no hold
    assert code == 0, err
    check_results(out)
