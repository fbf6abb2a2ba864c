"""A run directory's integrity (issue 22): ``train --out`` never writes into a directory holding files
kdkit did not write, a checkpoint belongs to its stage and its run (``--resume`` refuses another's),
and ``--resume`` refuses a ``metrics.jsonl`` that lost records its checkpoints say were written.
In-process tiny kd runs (teacher, baseline, student)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from kdkit_engine_testutil import TINY, finishes_soon
from kdkit_engine_testutil import testing_manager as plugin_manager

from kdkit.cli import main

SETS = [s for s in TINY if not s.startswith("baseline.")] + ["baseline.enabled=true"]


def _train_args(out: Path) -> list[str]:
    return ["train", "--method", "kd", "--out", str(out)] + [x for s in SETS for x in ("--set", s)]


def _main(args, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with plugin_manager():
        code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [ln for ln in err.splitlines() if ln.startswith("kdkit: error")]


def _snapshot(run: Path) -> dict:
    """Every file of ``run`` but kdkit's lock file (a refused resume has taken the lock)."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two finished runs of one config (each its own run), made once."""
    base = tmp_path_factory.mktemp("finished")
    runs = []
    for name in ("one", "two"):
        with plugin_manager():
            assert main(_train_args(base / name)) == 0
        runs.append(base / name)
    return runs


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    (copy / ".lock").unlink()
    return copy


# --- 1. --out never writes into a directory holding files kdkit did not write -------------------------

def test_out_holding_the_users_files_is_refused_and_left_untouched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my own config, with comments\nmethod: kd\n")
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = _snapshot(mine)
    code, err = _main(_train_args(mine), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"kdkit: error: --out {mine} holds files kdkit did not write (config.yaml")
    assert "choose an empty or new directory" in err[0]
    assert _snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "metrics.jsonl"]
    # --resume of it is refused too: it holds no kdkit run
    code, err = _main(["train", "--resume", str(mine)], capsys)
    assert code == 2 and len(err) == 1 and f"--resume {mine}: not a kdkit run directory" in err[0], err
    assert _snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_out_that_is_empty_or_new_runs_and_records_the_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _main(_train_args(empty), capsys)[0] == 0
    marker = json.loads((empty / "kdkit-run.json").read_text())
    assert len(marker["run_id"]) == 32
    last = torch.load(empty / "checkpoints" / "student" / "last.pt", weights_only=True)
    best = torch.load(empty / "checkpoints" / "student" / "best.pt", weights_only=True)
    assert last["run_id"] == best["run_id"] == marker["run_id"] and last["stage"] == "student"


# --- 2. a checkpoint belongs to its stage and its run --------------------------------------------------

def test_resume_refuses_another_stages_checkpoint(run, capsys):
    ckpts = run / "checkpoints"
    shutil.copyfile(ckpts / "teacher.convnet" / "last.pt", ckpts / "baseline" / "last.pt")
    before = _snapshot(run)
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"checkpoint {ckpts / 'baseline' / 'last.pt'} is from stage 'teacher.convnet' of run " in err[0]
    assert "expected stage 'baseline' of run " in err[0]
    assert _snapshot(run) == before  # metrics.jsonl and summary.json as they were


def test_resume_refuses_the_same_stage_of_another_run(run, finished, capsys):
    other = finished[1] / "checkpoints" / "baseline" / "last.pt"
    shutil.copyfile(other, run / "checkpoints" / "baseline" / "last.pt")
    ids = [json.loads((r / "kdkit-run.json").read_text())["run_id"] for r in (finished[1], run)]
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"is from stage 'baseline' of run {ids[0]}, expected stage 'baseline' of run {ids[1]}" in err[0]


def test_the_fallback_to_last_prev_does_not_pass_a_foreign_checkpoint(run, finished, capsys):
    stage = run / "checkpoints" / "baseline"
    (stage / "last.pt").write_bytes(b"garbage")
    shutil.copyfile(finished[1] / "checkpoints" / "baseline" / "last.prev.pt", stage / "last.prev.pt")
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"checkpoint {stage / 'last.pt'} is unreadable" in err[0]
    assert f"its previous version cannot replace it (checkpoint {stage / 'last.prev.pt'} is from stage 'baseline' " \
        f"of run " in err[0]


def _strip_run_ids(run: Path) -> None:
    for path in run.glob("checkpoints/*/*.pt"):
        state = torch.load(path, weights_only=True)
        del state["run_id"]
        torch.save(state, path)


def test_checkpoints_from_before_run_ids_resume_with_the_stage_check(run, capsys):
    _strip_run_ids(run)
    (run / "kdkit-run.json").unlink()  # a run made before kdkit-run.json
    metrics = (run / "metrics.jsonl").read_text()
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 0, err
    assert (run / "metrics.jsonl").read_text() == metrics
    assert json.loads((run / "kdkit-run.json").read_text())["adopted"] is True
    ckpts = run / "checkpoints"  # the stage is still checked
    shutil.copyfile(ckpts / "teacher.convnet" / "last.pt", ckpts / "baseline" / "last.pt")
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and "is from stage 'teacher.convnet' of run unknown (written before run ids)" in err[0], err


def test_a_run_made_with_run_ids_refuses_a_checkpoint_without_one(run, capsys):
    _strip_run_ids(run)
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "of run unknown (written before run ids), expected stage " in err[0]


def test_eval_refuses_another_stages_best_checkpoint(run, capsys):
    ckpts = run / "checkpoints"
    shutil.copyfile(ckpts / "teacher.convnet" / "best.pt", ckpts / "baseline" / "best.pt")
    code, err = _main(["eval", "--run", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"checkpoint {ckpts / 'baseline' / 'best.pt'} is from stage 'teacher.convnet' of run " in err[0]
    assert "expected stage 'baseline' of run " in err[0]


def test_eval_refuses_the_same_stage_of_another_run(run, finished, capsys):
    shutil.copyfile(finished[1] / "checkpoints" / "baseline" / "best.pt", run / "checkpoints" / "baseline" / "best.pt")
    ids = [json.loads((r / "kdkit-run.json").read_text())["run_id"] for r in (finished[1], run)]
    code, err = _main(["eval", "--run", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"is from stage 'baseline' of run {ids[0]}, expected stage 'baseline' of run {ids[1]}" in err[0]


def test_eval_of_a_run_from_before_run_ids_checks_the_stage_alone(run, capsys):
    _strip_run_ids(run)
    (run / "kdkit-run.json").unlink()
    code, err = _main(["eval", "--run", str(run)], capsys)
    assert code == 0, err
    ckpts = run / "checkpoints"
    shutil.copyfile(ckpts / "teacher.convnet" / "best.pt", ckpts / "baseline" / "best.pt")
    code, err = _main(["eval", "--run", str(run)], capsys)
    assert code == 2 and "is from stage 'teacher.convnet' of run unknown (written before run ids)" in err[0], err


def test_a_bare_state_dict_in_place_of_a_checkpoint_is_named_as_such(run, capsys, tmp_path):
    """Issue 22 rerun: the state dict `kdkit export` writes, copied over best.pt, was "from stage None of
    run unknown (written before run ids)"."""
    best = run / "checkpoints" / "student" / "best.pt"
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "student.pt")]) == 0
    shutil.copyfile(tmp_path / "student.pt", best)
    code, err = _main(["eval", "--run", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"checkpoint {best} is not a kdkit checkpoint (no stage, no model: a bare state dict" in err[0], err


# --- 3. metrics.jsonl holds what the checkpoints say was written --------------------------------------

def test_resume_refuses_a_truncated_metrics_file_and_keeps_it(run, capsys):
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:2]))
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"kdkit: error: --resume {run}: {metrics} holds 2 complete records, but checkpoint "
                             f"{run / 'checkpoints'}")
    assert f"recorded {len(lines)} written" in err[0] and "start a new run" in err[0]
    assert metrics.read_text() == "".join(lines[:2])  # never "repaired"


def test_resume_refuses_a_deleted_metrics_file(run, capsys):
    (run / "metrics.jsonl").unlink()
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{run / 'metrics.jsonl'} is missing" in err[0]
    assert not (run / "metrics.jsonl").exists()


def _first_stages(metrics: Path) -> list[str]:
    """The stages of ``metrics`` in the order they were first recorded."""
    return list(dict.fromkeys(json.loads(line)["stage"] for line in metrics.read_text().splitlines()))


def test_resume_refuses_a_recorded_stage_whose_checkpoints_are_gone(run, capsys):
    # deleting the teacher's checkpoints (as 'delete it to train that stage again' advises when both of its
    # last.pt are unreadable) retrained it on --resume and recorded it twice in metrics.jsonl, exit 0
    metrics = run / "metrics.jsonl"
    stages = _first_stages(metrics)
    shutil.rmtree(run / "checkpoints" / stages[0])
    before = _snapshot(run)
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"kdkit: error: --resume {run}: {metrics} holds records of stage {stages[0]!r}, whose "
                             f"checkpoints are gone from {run / 'checkpoints' / stages[0]}: it would train again")
    assert f"delete the checkpoints of the stages after it ({', '.join(stages[1:])})" in err[0]
    assert _snapshot(run) == before
    # as the message says: without the later stages' checkpoints too, every stage trains again, recorded once
    for stage in stages[1:]:
        shutil.rmtree(run / "checkpoints" / stage)
    assert _main(["train", "--resume", str(run)], capsys)[0] == 0
    keys = [(r["stage"], r["epoch"], r.get("split")) for r in map(json.loads, metrics.read_text().splitlines())]
    assert len(keys) == len(set(keys)) and _first_stages(metrics) == stages


def test_resume_refuses_a_damaged_metrics_record_and_keeps_the_file(run, capsys):
    # a line that is not UTF-8 among the records kept was a UnicodeDecodeError traceback (exit 1)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    lines[1] = b"\xff\xfe not a record"
    metrics.write_bytes(b"\n".join(lines) + b"partial")
    before = _snapshot(run)
    code, err = _main(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"line 2 of {metrics} is not a metrics record (the file was damaged)" in err[0]
    assert _snapshot(run) == before


def _main_soon(args, capsys, fifo: Path, timeout: float = 60) -> tuple[int, list[str]]:
    """``_main(args)``, failing the test when it is still blocked (opening ``fifo``) after ``timeout`` s."""
    result, exc = finishes_soon(lambda: _main(args, capsys), fifo, timeout)
    if exc is not None:
        raise exc
    return result


@pytest.mark.parametrize("command, name", [("resume", "kdkit-run.json"), ("resume", "metrics.jsonl"),
                                           ("resume", "train.log"), ("eval", "kdkit-run.json")])
def test_a_fifo_under_a_run_file_s_name_is_refused_not_opened(run, capsys, command, name):
    # --resume (and eval) opened it and blocked for ever
    fifo = run / name
    fifo.unlink()
    os.mkfifo(fifo)
    args = ["train", "--resume", str(run)] if command == "resume" else ["eval", "--run", str(run)]
    code, err = _main_soon(args, capsys, fifo)
    assert code == 2 and err == [f"kdkit: error: run file {fifo} is a FIFO, not a regular file"], err
