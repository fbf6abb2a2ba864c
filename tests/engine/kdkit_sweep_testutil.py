"""Shared helpers of the tests that start ``kdkit sweep`` processes and stop or kill them
(tests/commands/test_sweep_command.py, tests/test_sweep_races.py): a uniquely named module beside
kdkit_engine_testutil, which tests/conftest.py puts on ``sys.path``.

A sweep runs in its own process group (its runs are in it too), so one ``killpg`` ends them all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kdkit_prestarted
from kdkit_engine_testutil import subprocess_env


def start_sweep(cfg: Path, out: Path, *args, hold: float | None = None,
                stderr=subprocess.PIPE) -> subprocess.Popen:
    """``kdkit sweep CFG --out OUT ARGS`` in its own process group.  ``hold``: each run holds its run
    directory's lock that many seconds before it trains (kdkit_fault_testplugin's KDTEST_HOLD)."""
    plugin = ["--plugins-module", "kdkit_fault_testplugin"] if hold is not None else []
    argv = [sys.executable, "-m", "kdkit", *plugin, "sweep", str(cfg), "--out", str(out), *map(str, args)]
    env = subprocess_env(**({"KDTEST_HOLD": hold} if hold is not None else {}))
    return kdkit_prestarted.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, env=env)


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL the process group of ``proc`` (the sweep and its runs), reap ``proc`` and wait until every
    process of the group has ended: a run may outlive the sweep by a moment (still holding its run
    directory's lock), and a test that reruns the sweep at once would find its run "in use"."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + timeout
    while group_members(proc.pid):
        assert time.monotonic() < deadline, f"process group {proc.pid} still runs {timeout} s after SIGKILL"
        time.sleep(0.02)


def group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that run (zombies have ended)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                members.append(int(entry))
    return members


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``proc`` once it ends (within ``timeout``); its group is killed
    either way, so no run outlives the test."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, err.decode()


def kill_group_once(proc: subprocess.Popen, paths: list[Path], timeout: float = 240) -> None:
    """SIGKILL the group of ``proc`` once every one of ``paths`` exists (a run's checkpoint: mid-sweep)."""
    deadline = time.monotonic() + timeout
    try:
        while not all(p.exists() for p in paths):
            assert proc.poll() is None, "the sweep ended before it was killed"
            assert time.monotonic() < deadline, f"never written: {[str(p) for p in paths if not p.exists()]}"
            time.sleep(0.02)
    finally:
        kill_group(proc)


def lock_holder(run_dir: Path, procs: list[subprocess.Popen], timeout: float = 300) -> int:
    """The PID in ``run_dir/.lock`` once a run holds it (not one of the sweeps ``procs``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = (run_dir / ".lock").read_text().strip()
        except OSError:
            text = ""
        if text.isdigit() and int(text) not in {p.pid for p in procs}:
            return int(text)
        if all(p.poll() is not None for p in procs):  # all ended: their stderr says why
            raise AssertionError("no run took its lock: " + " | ".join(
                p.stderr.read().decode() if p.stderr else f"exit {p.returncode}" for p in procs))
        assert time.monotonic() < deadline, "no run took its lock"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
