"""A non-finite loss is a result, not a crash: the run stops (last good checkpoint kept), writes
RUN/diverged.json, ``kdkit train`` exits 4 with one line, and ``--resume`` reports the divergence
again instead of training into it (until the record is deleted)."""
from __future__ import annotations

import json
import os

import pytest
from kdkit_engine_testutil import TINY

from kdkit.engine.trainer import DIVERGED_FILE, DivergedError, read_divergence

#: the student's loss turns inf in its second epoch (epoch 1, 0-based) for every seed
INF_AT_1 = TINY + ["distill.loss=infloss", "distill.loss_options={epoch: 1}", "distill.alpha=0.0"]


@pytest.fixture
def diverge_manager():
    import kdkit_diverge_testplugin

    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_diverge_testplugin) as pm:
        yield pm


def _stat(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_a_diverged_run_records_where_and_keeps_its_last_good_checkpoint(tmp_path, diverge_manager):
    from kdkit.engine import load_checkpoint, train

    run = tmp_path / "run"
    with pytest.raises(DivergedError) as info:
        train("kd", sets=INF_AT_1, out=run, manager=diverge_manager)
    last = run / "checkpoints" / "student" / "last.pt"
    record = json.loads((run / DIVERGED_FILE).read_text())
    assert record == {"status": "diverged", "stage": "student", "epoch": 1, "epochs": 2, "step": 5, "loss": "inf",
                      "checkpoint": str(last), "message": str(info.value)}
    assert info.value.record == record == read_divergence(run)
    assert str(info.value) == (f"non-finite loss (inf) in stage 'student', epoch 2, step 5; stopped — "
                               f"last good checkpoint kept: {last}")
    assert load_checkpoint(last)["epoch"] == 1 and not (run / "summary.json").exists()


def test_resume_reports_the_divergence_instead_of_training_into_it(tmp_path, diverge_manager):
    from kdkit.engine import train

    run = tmp_path / "run"
    with pytest.raises(DivergedError):
        train("kd", sets=INF_AT_1, out=run, manager=diverge_manager)
    files = [run / "metrics.jsonl", run / "checkpoints" / "student" / "last.pt", run / DIVERGED_FILE]
    before = {p: _stat(p) for p in files}
    with pytest.raises(DivergedError, match=r"this run diverged before, not trained again: non-finite loss \(inf\) "
                                            r"in stage 'student', epoch 2, step 5; .*delete it to train stage "
                                            r"'student' again from its last good checkpoint"):
        train(resume=run, manager=diverge_manager)
    assert {p: _stat(p) for p in files} == before  # nothing trained, nothing rewritten
    # a new run into the same directory is refused: it holds a result
    with pytest.raises(Exception, match="already holds a run; use --resume"):
        train("kd", sets=INF_AT_1, out=run, manager=diverge_manager)
    # with the record deleted, resume continues from the last good checkpoint (and diverges again: the
    # loss still turns inf in epoch 2), proving it trains again rather than starting over
    (run / DIVERGED_FILE).unlink()
    with pytest.raises(DivergedError) as info:
        train(resume=run, manager=diverge_manager)
    assert "epoch 2, step 5" in str(info.value) and read_divergence(run)["epoch"] == 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["epoch"]) for x in lines if "split" not in x] == [("teacher.convnet", 0), ("student", 0)]


def test_a_run_that_diverges_before_its_first_checkpoint_keeps_its_directory(tmp_path, diverge_manager):
    """The first stage diverges in its first step: no checkpoint exists, yet the directory (with its
    record) stays — it used to be removed as a run that left nothing worth keeping."""
    from kdkit.engine import train

    run = tmp_path / "run"
    with pytest.raises(DivergedError, match="no checkpoint of this stage was written yet"):
        train("kd", sets=TINY + ["teachers=[{name: blowup}]"], out=run, manager=diverge_manager)
    record = read_divergence(run)
    assert (record["stage"], record["epoch"], record["step"], record["checkpoint"]) == ("teacher.blowup", 0, 0, None)
    assert record["loss"] in ("inf", "nan") and (run / "config.yaml").is_file()
    with pytest.raises(DivergedError, match="this run diverged before"):
        train(resume=run, manager=diverge_manager)


def test_a_non_finite_validation_loss_stops_the_stage_as_diverged(tmp_path, diverge_manager):
    """Training losses all finite, validation loss inf: the run used to finish with val.loss=inf and
    exit 0; now the stage stops as diverged, before that epoch's record or checkpoint."""
    from kdkit.engine import train

    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^non-finite validation loss \((inf|nan)\) in stage 'teacher.evalblowup', "
                                            r"epoch 1, step \d+; stopped — no checkpoint"):
        train("kd", sets=TINY + ["teachers=[{name: evalblowup}]"], out=run, manager=diverge_manager)
    record = read_divergence(run)
    assert (record["stage"], record["epoch"], record["checkpoint"]) == ("teacher.evalblowup", 0, None)
    metrics = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
    assert "val.loss" not in metrics


def test_kdkit_train_exits_4_with_one_line_and_so_does_its_resume(tmp_path, capsys, diverge_manager):
    from kdkit.cli import main

    run = tmp_path / "run"
    args = ["train", "--out", str(run)] + [x for s in INF_AT_1 for x in ("--set", s)]
    assert main(args) == 4
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("kdkit: error", "kdkit: diverged"))]
    assert err == [f"kdkit: diverged: non-finite loss (inf) in stage 'student', epoch 2, step 5; stopped — "
                   f"last good checkpoint kept: {run / 'checkpoints' / 'student' / 'last.pt'}"]
    assert main(["train", "--resume", str(run)]) == 4
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("kdkit: error", "kdkit: diverged"))]
    assert len(err) == 1 and err[0].startswith("kdkit: diverged: this run diverged before, not trained again")
    assert main(["train", "--help"]) == 0
    assert "4 diverged" in " ".join(capsys.readouterr().out.split())
