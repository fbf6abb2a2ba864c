"""Run-directory integrity (issue 12): one writer per run directory, no stale lock after SIGKILL, a
failed run does not block retrying, checkpoint rotation and fallback, ``--resume`` of an edited
config, and writes that fail (SIGKILL mid-write, disk full, read-only or file ``--out``).

Real processes where a process must run concurrently or die; the rest in-process."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import kdkit_prestarted
import pytest
import yaml
from kdkit_engine_testutil import TINY, subprocess_env
from kdkit_engine_testutil import testing_manager as plugin_manager

from kdkit.cli import main

SETS = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=3"]
PLUGINS = ["--plugins-module", "kdkit_engine_testplugin", "--plugins-module", "kdkit_fault_testplugin"]
HOLD_LOCK = ("import sys, time; from kdkit.paths import lock_directory; "
             "lock = lock_directory(sys.argv[1], 'x', 'y'); print('locked', flush=True); time.sleep(120)")


def _train_args(out: Path) -> list[str]:
    return ["train", "--method", "kd", "--out", str(out)] + [x for s in SETS for x in ("--set", s)]


def _kdkit(args, crash: str | None = None):
    env = subprocess_env(**({"KDTEST_CRASH": crash} if crash else {}))
    return kdkit_prestarted.run([sys.executable, "-m", "kdkit", *PLUGINS, *args], env=env, capture_output=True,
                                text=True, timeout=300, stdin=subprocess.DEVNULL)


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("kdkit: error")]


def _main(args, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with plugin_manager():
        code = main(args)
    return code, _errors(capsys.readouterr().err)


def _epochs(run: Path) -> list[tuple]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["epoch"], r.get("split")) for r in records]


EPOCHS = [("teacher.convnet", 0, None), ("teacher.convnet", 0, "test"),
          ("student", 0, None), ("student", 1, None), ("student", 2, None), ("student", 0, "test")]


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """Two ``kdkit train --out X`` started together (the one that runs holds X for 2 s before
    training, so they surely overlap); the one that ran is the uninterrupted reference run."""
    out = tmp_path_factory.mktemp("race") / "run"
    env = subprocess_env(KDTEST_HOLD="2")
    procs = [kdkit_prestarted.Popen([sys.executable, "-m", "kdkit", *PLUGINS, *_train_args(out)], env=env,
                                    text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
             for _ in range(2)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        results.append((p.pid, p.returncode, err))
    return out, results


@pytest.fixture
def finished_copy(race, tmp_path):
    """A copy of the finished reference run, for tests that write into it."""
    copy = tmp_path / "copy"
    shutil.copytree(race[0], copy)
    return copy


# --- the lock ---------------------------------------------------------------------------------------

def test_two_trains_on_one_out_exactly_one_runs(race):
    out, results = race
    assert sorted(code for _, code, _ in results) == [0, 2], [(c, e[-2000:]) for _, c, e in results]
    winner = next(pid for pid, code, _ in results if code == 0)
    loser_err = next(err for _, code, err in results if code == 2)
    assert _errors(loser_err) == [f"kdkit: error: run directory {out} is in use by another kdkit process "
                                  f"(PID {winner}); wait for it to finish or choose another --out"]
    assert _epochs(out) == EPOCHS  # every epoch once: the refused process wrote nothing
    assert (out / "train.log").read_text().count("kdkit: method kd") == 1


def test_a_held_run_dir_refuses_resume_and_new_runs_and_sigkill_frees_it(finished_copy, capsys):
    run = finished_copy
    before = (run / "metrics.jsonl").read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _main(["train", "--resume", str(run)], capsys)
        assert code == 2 and err == [f"kdkit: error: run directory {run} is in use by another kdkit process "
                                     f"(PID {holder.pid}); wait for it to finish (or stop it) before resuming it"]
        code, err = _main(_train_args(run), capsys)
        assert code == 2 and len(err) == 1 and f"(PID {holder.pid})" in err[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, err = _main(["train", "--resume", str(run)], capsys)  # the OS dropped the killed holder's lock
    assert code == 0, err
    assert (run / "metrics.jsonl").read_text() == before
    assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_lock_directory_is_exclusive_and_names_the_holder(tmp_path):
    from kdkit.errors import KdkitError
    from kdkit.paths import lock_directory

    busy = rf"^dir X is in use by another kdkit process \(PID {os.getpid()}\); wait$"
    with lock_directory(tmp_path, "dir X", "wait"), pytest.raises(KdkitError, match=busy):
        lock_directory(tmp_path, "dir X", "wait")
    lock_directory(tmp_path, "dir X", "wait").release()  # free again once released


@pytest.mark.slow
def test_under_torchrun_every_rank_refuses_a_held_run_dir(finished_copy):
    """Rank 0 alone takes the lock; the other ranks get its verdict (no rank waits for one that left)."""
    from kdkit_engine_testutil import kdkit_cli

    from kdkit.paths import lock_directory

    with lock_directory(finished_copy, "test", "test"):
        r = kdkit_cli(["train", "--resume", str(finished_copy)], nproc=2, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count(f"kdkit: error: run directory {finished_copy} is in use by another kdkit process "
                          f"(PID {os.getpid()})") == 2, r.stderr[-3000:]


# --- a failed run does not block its --out ---------------------------------------------------------

def test_a_run_failing_before_its_first_checkpoint_leaves_no_directory(tmp_path, monkeypatch, capsys):
    from kdkit.engine.trainer import Trainer
    from kdkit.errors import KdkitError

    def fail(self):
        raise KdkitError("no training data here")

    monkeypatch.setattr(Trainer, "_train_loader", fail)
    out = tmp_path / "run"
    code, err = _main(_train_args(out), capsys)
    assert code == 2 and err == ["kdkit: error: no training data here"]
    assert not out.exists()  # created by this run and nothing worth keeping: --out is free again
    mine = tmp_path / "mine"  # an empty directory the user made is kept
    mine.mkdir()
    assert _main(_train_args(mine), capsys)[0] == 2
    assert (mine / "config.yaml").is_file() and (mine / "kdkit-run.json").is_file()
    monkeypatch.undo()
    assert _main(_train_args(mine), capsys)[0] == 0  # kdkit's files without checkpoint do not block it


# --- checkpoints: SIGKILL on every write, rotation and fallback ---------------------------------------

def test_sigkill_on_every_checkpoint_write_then_resume_is_exact(race, tmp_path):
    ref, run = race[0], tmp_path / "run"
    # before its first checkpoint (best.pt of the teacher about to be renamed): the same --out runs again
    assert _kdkit(_train_args(run), crash="best.pt:1").returncode == -signal.SIGKILL
    assert (run / "config.yaml").is_file() and not list(run.glob("checkpoints/*/*.pt"))
    # writing the student's second last.pt; then mid-rotation of it (last.pt linked, not yet last.prev.pt);
    # then writing summary.json (every stage finished)
    assert _kdkit(_train_args(run), crash="last.pt:4").returncode == -signal.SIGKILL
    assert _kdkit(["train", "--resume", str(run)], crash="last.prev.pt:1").returncode == -signal.SIGKILL
    assert list(run.glob("checkpoints/student/.last.prev.pt.*.tmp"))
    assert _kdkit(["train", "--resume", str(run)], crash="summary.json:1").returncode == -signal.SIGKILL
    assert not list(run.glob("checkpoints/*/.*.tmp"))  # the resume removed what the killed one left
    # a truncated last.pt: resume warns and continues from last.prev.pt
    last = run / "checkpoints" / "student" / "last.pt"
    last.write_bytes(last.read_bytes()[:4000])
    r = _kdkit(["train", "--resume", str(run)])
    assert r.returncode == 0, r.stderr[-3000:]
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and f"checkpoint {last} is unreadable (truncated or corrupt" in warning[0]
    assert "continuing from its previous version last.prev.pt (epoch 3)" in warning[0]
    assert warning[0] in (run / "train.log").read_text()
    assert (run / "summary.json").read_text() == (ref / "summary.json").read_text()
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_both_last_checkpoints_unreadable_is_one_line_naming_them(finished_copy, capsys):
    stage = finished_copy / "checkpoints" / "student"
    (stage / "last.pt").write_bytes(b"garbage")
    (stage / "last.prev.pt").write_bytes(b"")
    code, err = _main(["train", "--resume", str(finished_copy)], capsys)
    assert code == 2 and len(err) == 1
    assert f"checkpoint {stage / 'last.pt'} is unreadable" in err[0] and str(stage / "last.prev.pt") in err[0]
    assert f"delete {stage} to train that stage again from its start, or start the run again with a fresh --out" \
        in err[0]


def test_eval_of_a_corrupt_best_checkpoint_is_one_line(finished_copy, capsys):
    best = finished_copy / "checkpoints" / "student" / "best.pt"
    best.write_bytes(b"\x00garbage" * 10)
    code, err = _main(["eval", "--run", str(finished_copy)], capsys)
    assert code == 2 and len(err) == 1 and f"checkpoint {best} is unreadable (truncated or corrupt" in err[0]
    assert err[0].endswith("; restore it from a copy or train the run again")


# --- --resume after config.yaml was edited -----------------------------------------------------------

def test_resume_refuses_an_edited_config_unless_accepted(finished_copy, capsys):
    cfg_path = finished_copy / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["epochs"], cfg["train"]["lr"] = 4, 0.5
    cfg["device"] = "cpu"  # where it runs is not what it computes: free to change
    cfg_path.write_text("# edited\n" + yaml.safe_dump(cfg))
    code, err = _main(["train", "--resume", str(finished_copy)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"kdkit: error: --resume {finished_copy}: config.yaml was edited since the run started "
                             "(train.epochs (3 -> 4), train.lr (")
    assert err[0].endswith("restore it, or pass --accept-config-change to continue with the edited config")
    assert "device" not in err[0]
    code, err = _main(["train", "--accept-config-change", "--resume", str(finished_copy)], capsys)
    assert code == 0, err
    assert "warning: config.yaml was edited since the run started (train.epochs (3 -> 4)" in \
        (finished_copy / "train.log").read_text()
    code, err = _main(["train", "--accept-config-change"] + _train_args(finished_copy)[1:], capsys)
    assert code == 2 and err == ["kdkit: error: --accept-config-change only applies to --resume RUN_DIR"]


def test_an_accepted_config_change_that_the_checkpoints_do_not_fit_is_one_line(finished_copy, capsys):
    # a wider student: its checkpoints cannot be loaded into the new model
    cfg_path = finished_copy / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["student"]["width"] = 8
    cfg_path.write_text(yaml.safe_dump(cfg))
    code, err = _main(["train", "--accept-config-change", "--resume", str(finished_copy)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "checkpoints" in err[0] and "does not fit stage 'student'" in err[0] and "size mismatch" in err[0]


# --- writes that fail ------------------------------------------------------------------------------

def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                   capsys):
    from kdkit.engine import load_checkpoint

    real_replace, calls = os.replace, []

    def disk_full_on_4th_last_pt(src, dst):  # the student's second last.pt
        if Path(dst).name == "last.pt":
            calls.append(dst)
            if len(calls) == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_on_4th_last_pt)
    run = tmp_path / "run"
    code, err = _main(_train_args(run), capsys)
    monkeypatch.undo()
    student = run / "checkpoints" / "student"
    assert code == 2 and err == [f"kdkit: error: cannot write {student / 'last.pt'}: No space left on device; its "
                                 f"previous version is kept; free some disk space; then continue the run with: "
                                 f"kdkit train --resume {run}"]
    assert load_checkpoint(student / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in student.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]  # no temp file
    assert _main(["train", "--resume", str(run)], capsys)[0] == 0
    assert _epochs(run) == EPOCHS


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, err = _main(_train_args(target), capsys)
    assert code == 2 and err == [f"kdkit: error: --out {target} is a file, not a directory; choose another --out"]
    assert target.read_text() == "x"


def test_out_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "run":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, err = _main(_train_args(tmp_path / "run"), capsys)
    assert code == 2 and err == [f"kdkit: error: --out {tmp_path / 'run'}: cannot create it (Read-only file "
                                 "system); choose a directory you can write to"]


def test_out_in_a_read_only_directory_is_one_line(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        try:
            (parent / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("file permissions are not enforced for this user (root)")
        code, err = _main(_train_args(parent / "run"), capsys)
        assert code == 2 and len(err) == 1 and "Permission denied" in err[0], err
        code, err = _main(_train_args(parent), capsys)  # the directory exists, but nothing can be written in it
        assert code == 2 and len(err) == 1 and "Permission denied" in err[0], err
    finally:
        parent.chmod(0o755)
