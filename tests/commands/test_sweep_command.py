"""``kdkit sweep`` end to end on the embedded ``shapes`` data at tiny sizes: a 2 cells x 2 seeds sweep
(one cell using the other's teacher through ``{cell:kd}``), its results and table checked against
the runs' own metrics.jsonl, a sweep killed mid-run and resumed, ``--compare``, a failing cell, and
bad sweep files (one-line errors, exit 2)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kdkit_sweep_testutil import alive, kill_group, kill_group_once, lock_holder, start_sweep

from kdkit import cli
from kdkit import plugins as kp

SWEEP = {
    "name": "tiny",
    "seeds": [0, 1],
    "base": {"data.name": "shapes", "student.name": "convnet", "baseline.enabled": False, "data.train_per_class": 8, "data.test_per_class": 4, "teachers": [{"name": "convnet", "width": 4}],
             "student.width": 4, "teacher_train.epochs": 1, "train.epochs": 2, "train.batch_size": 16,
             "teacher_train.batch_size": 16, "logging.progress": False},
    "cells": [  # the dependent cell first: the sweep must run kd before it
        {"name": "frozen", "method": "kd",
         "set": {"teachers.0.pretrained": "{cell:kd}/checkpoints/teacher.convnet/best.pt", "teachers.0.train": False}},
        {"name": "kd", "method": "kd", "set": {"baseline.enabled": True},
         "rows": {"teacher": "teacher.convnet", "baseline": "baseline", "kd": "student"}},
    ],
}
ROWS = {"kd": {"teacher": "teacher.convnet", "baseline": "baseline", "kd": "student"}, "frozen": {"frozen": "student"}}
ENV = {"KDKIT_BLOCK_PLUGINS": "soda,wordnet_relax", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def env():
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    for var in (kp.ENV_MODULES, kp.ENV_DISABLE_AUTOLOAD):
        mp.delenv(var, raising=False)
    kp.reset_plugin_manager()
    yield
    kp.reset_plugin_manager()
    mp.undo()


def _sweep_file(directory: Path, data=None) -> Path:
    path = directory / "tiny.yaml"
    path.write_text("# a tiny sweep\n" + yaml.safe_dump(data or SWEEP, sort_keys=False))
    return path


def _main(argv):
    return cli.main(["sweep", *map(str, argv)])


@pytest.fixture(scope="module")
def done(env, tmp_path_factory):
    """The uninterrupted 2 x 2 sweep (4 runs), shared by the tests below."""
    base = tmp_path_factory.mktemp("sweep")
    cfg, out = _sweep_file(base), base / "out"
    t0 = time.perf_counter()
    assert _main([cfg, "--out", out]) == 0
    return cfg, out, time.perf_counter() - t0


def _lines(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _stable(records):
    return sorted(json.dumps({k: v for k, v in r.items() if k != "wall_s"}, sort_keys=True) for r in records)


def test_sweep_results_and_table_equal_the_runs_metrics(done):
    cfg, out, _ = done
    records = _lines(out / "results.jsonl")
    assert len(records) == 2 * 3 + 2 * 1  # kd: 3 rows, frozen: 1 row, 2 seeds each
    table = json.loads((out / "table.json").read_text())
    assert [r["id"] for r in table["rows"]] == ["frozen", "teacher", "baseline", "kd"]
    for cell, rows in ROWS.items():
        for row, stage in rows.items():
            best, last = [], []
            for seed in (0, 1):
                metrics = _lines(out / "runs" / cell / "default" / f"seed{seed}" / "metrics.jsonl")
                test = [m for m in metrics if m["stage"] == stage and m.get("split") == "test"]
                at_last = [m for m in metrics if m["stage"] == stage and m.get("split") == "test@last"]
                epochs = [m["epoch"] for m in metrics if m["stage"] == stage and "split" not in m]
                assert len(test) == 1 and len(at_last) == 1 and at_last[0]["epoch"] == max(epochs)
                best.append(test[0]["test.top1"])
                last.append(at_last[0]["test.top1"])
                rec = next(r for r in records if (r["cell"], r["row"], r["seed"]) == (cell, row, seed))
                assert (rec["method"], rec["stage"], rec["grid"], rec["best_epoch"], rec["test_top1_best"],
                        rec["last_epoch"], rec["test_top1_last"]) == ("kd", stage, {}, test[0]["epoch"], best[-1],
                                                                      max(epochs), last[-1])
                assert rec["val_top1_best"] is not None and rec["wall_s"] > 0
            t = next(r for r in table["rows"] if r["id"] == row)
            assert t["best"]["n"] == t["last"]["n"] == 2 and t["cell"] == cell
            assert t["best"]["mean"] == pytest.approx(statistics.fmean(best))
            assert t["best"]["std"] == pytest.approx(statistics.stdev(best))
            assert t["last"]["mean"] == pytest.approx(statistics.fmean(last))
            assert t["last"]["std"] == pytest.approx(statistics.stdev(last))
    md = (out / "table.md").read_text()
    assert "test top-1 @ val-best" in md and "test top-1 @ last" in md and "| kd | kd | kd |" in md
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "sweep.yaml").read_text()) == yaml.safe_load(cfg.read_text())
    log = (out / "sweep.log").read_text()
    assert "[1/4] kd seed=0: running" in log and "~0:00:" in log and "left (3 run(s))" in log


def test_cell_dependency_uses_the_other_cells_run_dir(done):
    """``{cell:kd}``: frozen (first in the file) ran after kd, loaded the kd run's teacher of the same
    seed and trained no teacher — its student is then the kd run's student, line for line."""
    _, out, _ = done
    log = (out / "sweep.log").read_text()
    assert log.index("kd seed=1: finished") < log.index("frozen seed=0: running")
    for seed in (0, 1):
        kd, frozen = (out / "runs" / c / "default" / f"seed{seed}" for c in ("kd", "frozen"))
        config = yaml.safe_load((frozen / "config.yaml").read_text())
        assert config["teachers"][0]["pretrained"] == str(kd.resolve() / "checkpoints/teacher.convnet/best.pt")
        assert config["teachers"][0]["train"] is False and config["seed"] == seed
        fm = _lines(frozen / "metrics.jsonl")
        assert {m["stage"] for m in fm} == {"student"}
        teacher = json.loads((frozen / "summary.json").read_text())["teachers"]["teacher.convnet"]
        kd_teacher = json.loads((kd / "summary.json").read_text())["teachers"]["teacher.convnet"]
        assert teacher["top1"] == kd_teacher["top1"]
        assert fm == [m for m in _lines(kd / "metrics.jsonl") if m["stage"] == "student"]


def test_killed_sweep_resumes_without_rerunning_finished_runs(done, tmp_path):
    """An OUT where kd seed=0 is finished (copied from the uninterrupted sweep, to save a run): the
    sweep is killed (its whole process group) while kd seed=1 trains; the same command again skips
    the finished run twice (its files untouched), resumes the killed one with --resume, and ends
    with the results of the uninterrupted sweep."""
    cfg, ref_out, _ = done
    out = tmp_path / "out"
    first, second = out / "runs/kd/default/seed0", out / "runs/kd/default/seed1"
    shutil.copytree(ref_out / "runs/kd/default/seed0", first)
    shutil.copy2(ref_out / "sweep.yaml", out / "sweep.yaml")
    before = {p: (os.stat(first / p).st_ino, os.stat(first / p).st_mtime_ns)
              for p in ("metrics.jsonl", "summary.json", "train.log", "checkpoints/student/last.pt")}
    proc = start_sweep(cfg, out, "--cells", "kd", stderr=subprocess.DEVNULL)
    kill_group_once(proc, [second / "checkpoints/teacher.convnet/last.pt"])
    assert not (second / "summary.json").exists() and (second / "config.yaml").is_file()

    assert _main([cfg, "--out", out, "--cells", "kd"]) == 0
    assert before == {p: (os.stat(first / p).st_ino, os.stat(first / p).st_mtime_ns) for p in before}
    log = (out / "sweep.log").read_text()
    assert log.count("[1/2] kd seed=0: done, skipped") == 2 and log.count("(1 done, 1 to run)") == 2
    assert log.rindex("[2/2] kd seed=1: resuming") > log.rindex("[2/2] kd seed=1: running")
    assert "(resumed)" in (second / "train.log").read_text()
    ref = [r for r in _lines(ref_out / "results.jsonl") if r["cell"] == "kd"]
    assert _stable(_lines(out / "results.jsonl")) == _stable(ref)
    ref_rows = [r for r in json.loads((ref_out / "table.json").read_text())["rows"] if r["cell"] == "kd"]
    assert json.loads((out / "table.json").read_text())["rows"] == ref_rows
    # another sweep file into the same --out is refused
    other = dict(SWEEP, seeds=[0, 1, 2])
    assert _main([_sweep_file(tmp_path, other), "--out", out]) == 2


def test_compare_with_a_stored_table(done, tmp_path, capsys):
    cfg, out, _ = done
    ref = json.loads((out / "table.json").read_text())
    ref["rows"].append({"id": "not_run_here", "best": {"mean": 50.0}})
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    capsys.readouterr()
    assert _main([cfg, "--out", out, "--compare", tmp_path / "ref.json", "--tolerance", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "compare: 4 row(s) within ±0.5 points, 0 outside" in captured.out
    assert "not compared: not_run_here (not run)" in captured.out
    assert captured.err.count("done, skipped") == 4  # nothing reran

    moved = next(r for r in ref["rows"] if r["id"] == "kd")
    moved["best"]["mean"] += 0.75
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    assert _main([cfg, "--out", out, "--compare", tmp_path / "ref.json", "--tolerance", "0.5", "--no-run"]) == 3
    bad = [ln for ln in capsys.readouterr().out.splitlines() if "OUT OF BAND" in ln]
    assert len(bad) == 1 and bad[0].startswith("  OUT OF BAND: kd: @val-best") and "> 0.5" in bad[0]
    assert _main([cfg, "--out", out, "--compare", tmp_path / "ref.json", "--tolerance", "1", "--no-run"]) == 0


def test_a_failing_run_does_not_stop_the_sweep(env, tmp_path, capsys):
    # a weights file that exists (so the config check passes) but is no checkpoint: the run fails
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    data = {"seeds": [0], "base": SWEEP["base"], "cells": [
        {"name": "broken", "method": "kd",
         "set": {"teachers.0.pretrained": str(tmp_path / "corrupt.pt"), "teachers.0.train": False}},
        {"name": "after", "method": "kd", "set": {"teachers.0.pretrained": "{cell:broken}/x.pt",
                                                   "teachers.0.train": False}}]}
    out = tmp_path / "out"
    assert _main([_sweep_file(tmp_path, data), "--out", out]) == 3
    err = capsys.readouterr().err
    assert "[1/2] broken seed=0: FAILED (exit 2)" in err and "corrupt.pt" in err
    assert "[2/2] after seed=0: SKIPPED: needs cell broken" in err
    assert "2 of 2 run(s) failed: broken seed=0 (exit 2: kdkit: error: " in err
    assert "corrupt.pt" in (out / "sweep.log").read_text() and (out / "table.md").is_file()
    records = _lines(out / "results.jsonl")  # failed runs are in the results too, with why
    assert [(r["cell"], r["status"]) for r in records] == [("broken", "failed"), ("after", "failed")]
    assert records[0]["error"].startswith("exit 2: kdkit: error: ") and "corrupt.pt" in records[0]["error"]
    assert records[1]["error"] == "needs cell broken (same seed and grid point), which did not finish"
    assert "| broken | broken | kd | failed | failed | failed | - | 0 |" in (out / "table.md").read_text()


@pytest.mark.parametrize("text, message", [
    ("seeds: [0]\ncells: [{name: a, method: kd, rows: {a: 3}}]\n", "rows.a: expected a stage name"),
    ("seeds: 0\ncells: [{name: a, method: kd}]\n", "seeds: expected a non-empty list"),
    ("seeds: [0]\ncells: [{name: a, method: kd}, {name: b, method: kd, set: {trian.lr: 1}}]\n",
     "cell b (b seed=0): unknown config key 'trian'"),
    ("seeds: [0]\ncells: [{name: a, method: nope}]\n", "nope"),
    ("seeds: [0\n", "invalid YAML"),
    (f"seeds: [0]\ncells: [{{name: {'a' * 300}, method: kd}}]\n", "is 300 characters long; at most 100"),
])
def test_bad_sweep_files_exit_2_with_one_line(env, tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert _main([cfg, "--out", tmp_path / "out"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("kdkit: warning:")]
    assert len(err) == 1 and err[0].startswith("kdkit: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("reference, message", [
    ('{"rows": [{"id": "kd", "best": {"mean": NaN}}]}', "ref.json: rows[0] (kd): best.mean is nan; expected a finite"),
    ('{"rows": []}', "ref.json: the table has no rows: nothing to compare with"),
    ('{"rows": [{"id": "dkd", "best": {"mean": 1}}]}', "ref.json: no row of this sweep is in the reference"),
])
def test_a_bad_reference_exits_2_before_anything_runs(env, tmp_path, capsys, reference, message):
    (tmp_path / "ref.json").write_text(reference)
    assert _main([_sweep_file(tmp_path), "--out", tmp_path / "out", "--compare", tmp_path / "ref.json"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("kdkit: warning:")]
    assert len(err) == 1 and err[0].startswith("kdkit: error: --compare ") and message in err[0], err
    assert not (tmp_path / "out").exists()
    for tolerance in ("nan", "inf"):
        assert _main([_sweep_file(tmp_path), "--out", tmp_path / "out", "--tolerance", tolerance]) == 2
    assert "--tolerance must be a finite number >= 0" in capsys.readouterr().err


def test_a_sweep_over_the_cap_needs_yes(env, done, tmp_path, capsys, monkeypatch):
    from kdkit.commands import sweep as command
    from kdkit.sweep import runner

    cfg, out, _ = done
    monkeypatch.setattr(runner, "MAX_RUNS_WITHOUT_YES", 3)
    assert _main([cfg, "--out", tmp_path / "o"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "kdkit sweep tiny: 4 run(s) = 2 cell(s) x 1 grid point(s) x 2 seed(s)\n"
    assert captured.err == ("kdkit: error: sweep tiny has 4 runs, more than the 3 a sweep plans and runs without "
                            "--yes; check the grid, or pass --yes to run them all\n")
    assert not (tmp_path / "o").exists()
    assert _main([cfg, "--out", out, "--no-run", "--yes"]) == 0
    assert "| kd | kd | kd |" in capsys.readouterr().out
    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)
    monkeypatch.undo()
    assert f"more than {runner.MAX_RUNS_WITHOUT_YES} runs" in " ".join(parser.format_help().split())


def test_slice_options_are_checked(env, done, tmp_path, capsys):
    cfg, _, _ = done
    assert _main([cfg, "--out", tmp_path / "o", "--cells", "nope"]) == 2
    assert "--cells: no cell 'nope'" in capsys.readouterr().err
    assert _main([cfg, "--out", tmp_path / "o", "--no-run"]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


# --- diverged runs are results -------------------------------------------------------------------

ENGINE_TESTS = Path(__file__).resolve().parents[1] / "engine"
DIVERGE = {
    "name": "diverge",
    "seeds": [0, 1],
    "base": SWEEP["base"],
    "cells": [
        # seed 1's student diverges in its 2nd (last) epoch, seed 0 trains; the teacher row trains for both
        {"name": "late", "method": "kd", "rows": {"late_teacher": "teacher.convnet", "late": "student"},
         "set": {"distill.loss": "infloss", "distill.loss_options": {"epoch": 1, "seeds": [1]}, "distill.alpha": 0.0}},
        # every seed's student diverges in its first epoch
        {"name": "early", "method": "kd",
         "set": {"distill.loss": "infloss", "distill.loss_options": {"epoch": 0}, "distill.alpha": 0.0}},
    ],
}


@pytest.fixture
def diverge_env(env, monkeypatch):
    # the runs (subprocesses) import the test plugin too
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ENGINE_TESTS), os.environ.get("PYTHONPATH")])))


def _diverge_main(argv):
    return cli.main(["--plugins-module", "kdkit_diverge_testplugin", "sweep", *map(str, argv)])


def test_diverged_runs_are_results_and_the_sweep_exits_0(diverge_env, tmp_path, capsys):
    cfg, out = _sweep_file(tmp_path, DIVERGE), tmp_path / "out"
    assert _diverge_main([cfg, "--out", out]) == 0
    captured = capsys.readouterr()
    assert "[2/4] late seed=1: diverged in stage student, epoch 2/2 (non-finite loss inf;" in captured.err
    assert "3 of 4 run(s) diverged (results, not failures" in captured.err
    assert "failed" not in captured.err.lower()
    records = _lines(out / "results.jsonl")
    outcome = {(r["cell"], r["row"], r["seed"]): (r["status"], r["diverged"] and r["diverged"]["epoch"]) for r in records}
    assert outcome == {("late", "late_teacher", 0): ("trained", None), ("late", "late", 0): ("trained", None),
                       ("late", "late_teacher", 1): ("trained", None), ("late", "late", 1): ("diverged", 1),
                       ("early", "early", 0): ("diverged", 0), ("early", "early", 1): ("diverged", 0)}
    diverged = next(r for r in records if (r["cell"], r["row"], r["seed"]) == ("late", "late", 1))
    assert diverged["diverged"] == {"stage": "student", "epoch": 1, "epochs": 2, "step": 5, "loss": "inf"}
    assert diverged["test_top1_best"] is None and diverged["error"] is None and diverged["wall_s"] > 0
    trained = next(r for r in records if (r["cell"], r["row"], r["seed"]) == ("late", "late_teacher", 1))
    assert trained["test_top1_best"] is not None  # the stage before the divergence is a result too

    table = {r["id"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert table["late"]["best"]["n"] == 1 and table["late"]["seeds"] == [0]
    assert table["late"]["diverged"] == [{"seed": 1, "stage": "student", "epoch": 1, "epochs": 2, "step": 5,
                                          "loss": "inf"}]
    assert table["late_teacher"]["best"]["n"] == 2 and not table["late_teacher"]["diverged"]
    assert table["early"]["best"]["mean"] is None and [d["seed"] for d in table["early"]["diverged"]] == [0, 1]
    md = (out / "table.md").read_text()
    assert "| early | early | kd | diverged (epoch 1/2) | diverged (epoch 1/2) | diverged (epoch 1/2) | - | 0 |" in md
    assert "| 1 (+1 diverged (epoch 2/2)) |" in md and "a non-finite loss stopped" in md
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # run again: nothing is retrained (the diverged runs are results), the same exit status
    marks = {p: os.stat(p).st_mtime_ns for p in out.glob("runs/*/default/seed*/diverged.json")}
    assert len(marks) == 3
    assert _diverge_main([cfg, "--out", out]) == 0
    err = capsys.readouterr().err
    assert "[4/4] early seed=1: diverged (epoch 1/2), skipped" in err and "(4 done, 0 to run)" in err
    assert marks == {p: os.stat(p).st_mtime_ns for p in marks}

    # --compare: divergence is compared seed for seed
    ref = json.loads((out / "table.json").read_text())
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    assert _diverge_main([cfg, "--out", out, "--no-run", "--compare", tmp_path / "ref.json", "--tolerance", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  ok: early: diverged in both (seeds 0, 1)" in lines
    assert any(ln.startswith("  ok: late: @val-best") and ln.endswith("; diverged in both (seed 1)") for ln in lines)
    row = next(r for r in ref["rows"] if r["id"] == "early")  # as if seed 0 had trained in the reference
    row["diverged"] = row["diverged"][1:]
    row["per_seed"]["0"] = {"best": 50.0, "last": 50.0}
    row["seeds"], row["best"] = [0], {"mean": 50.0, "std": None, "n": 1, "values": [50.0]}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    assert _diverge_main([cfg, "--out", out, "--no-run", "--compare", tmp_path / "ref.json"]) == 3
    assert "  OUT OF BAND: early: diverged seeds differ: here 0, 1, reference 1" in capsys.readouterr().out.splitlines()


# --- --jobs and executors ------------------------------------------------------------------------

def _run_files(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.glob("runs/*/*/*/metrics.jsonl"))}


def test_jobs_2_gives_the_results_of_jobs_1(done, tmp_path):
    """The 2 x 2 sweep with --jobs 2: both kd seeds start at once, each frozen run waits for its kd run,
    and results.jsonl (wall_s aside), the table and every run's metrics.jsonl are those of --jobs 1,
    in the same order."""
    cfg, ref_out, _ = done
    out = tmp_path / "out"
    assert _main([cfg, "--out", out, "--jobs", "2"]) == 0
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(out / "results.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(ref_out / "results.jsonl")]
    assert json.loads((out / "table.json").read_text()) == json.loads((ref_out / "table.json").read_text())
    assert _run_files(out) == _run_files(ref_out) and len(_run_files(out)) == 4
    log = (out / "sweep.log").read_text()
    assert "2 at a time as subprocesses of this machine" in log
    assert log.index("[2/4] kd seed=1: running") < log.index("[1/4] kd seed=0: finished")  # in parallel
    for seed in (0, 1):
        assert log.index(f"kd seed={seed}: finished") < log.index(f"frozen seed={seed}: running")


def test_submitit_local_executor_runs_the_runs_as_jobs(done, tmp_path):
    pytest.importorskip("submitit")
    cfg, ref_out, _ = done
    out = tmp_path / "out"
    assert _main([cfg, "--out", out, "--cells", "kd", "--jobs", "2", "--executor", "submitit",
                  "--executor-opt", "cluster=local", "--executor-opt", "timeout_min=30"]) == 0
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(out / "results.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(ref_out / "results.jsonl")
                     if r["cell"] == "kd"]
    assert "as submitit jobs (local;" in (out / "sweep.log").read_text() and any((out / "submitit").iterdir())
    assert _run_files(out) == {k: v for k, v in _run_files(ref_out).items() if k.parts[1] == "kd"}


@pytest.mark.parametrize("argv, message", [
    (["--executor-opt", "timeout_min=5"], "--executor-opt only applies to --executor submitit"),
    (["--executor", "submitit", "--executor-opt", "cluster=local", "--executor-opt", "nope=1"],
     "--executor submitit: Parameter 'nope' need to be prefixed by an executor name."),
    (["--executor", "submitit", "--executor-opt", "cluster"], "--executor-opt 'cluster': expected KEY=VALUE"),
    (["--jobs", "0"], "--jobs: expected an integer >= 1, got '0'"),
])
def test_bad_executor_options_are_one_line_errors(env, done, tmp_path, capsys, argv, message):
    pytest.importorskip("submitit")
    cfg, _, _ = done
    assert _main([cfg, "--out", tmp_path / "o", *argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("kdkit: warning:")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_missing_submitit_is_one_line_naming_the_extra(env, done, tmp_path, capsys, monkeypatch):
    cfg, _, _ = done
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert _main([cfg, "--out", tmp_path / "o", "--executor", "submitit"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "kdkit: error: --executor submitit needs the submitit package: pip install 'kdkit[cluster]'")
    assert not (tmp_path / "o").exists()


def test_a_parallel_sweep_killed_mid_run_resumes_both_runs(done, tmp_path):
    """--jobs 2, killed (its whole process group) once both kd seeds have a checkpoint: the same command
    again resumes each unfinished run (under its own run lock) and ends with the uninterrupted sweep's
    results and metrics, byte for byte."""
    cfg, ref_out, _ = done
    out = tmp_path / "out"
    proc = start_sweep(cfg, out, "--cells", "kd", "--jobs", "2", stderr=subprocess.DEVNULL)
    kill_group_once(proc, [out / f"runs/kd/default/seed{s}/checkpoints/teacher.convnet/last.pt" for s in (0, 1)])
    # the run that wrote its checkpoint last is mid-way; the other one may have finished meanwhile
    unfinished = [s for s in (0, 1) if not (out / f"runs/kd/default/seed{s}/summary.json").exists()]
    assert unfinished

    assert _main([cfg, "--out", out, "--cells", "kd", "--jobs", "2"]) == 0
    log = (out / "sweep.log").read_text()
    assert all(f"[{s + 1}/2] kd seed={s}: resuming" in log for s in unfinished), log
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(out / "results.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in _lines(ref_out / "results.jsonl")
                     if r["cell"] == "kd"]
    assert _run_files(out) == {k: v for k, v in _run_files(ref_out).items() if k.parts[1] == "kd"}


# --- signals and run locks -----------------------------------------------------------------------

ONE_RUN = dict(SWEEP, seeds=[0], cells=[{"name": "kd", "method": "kd"}])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_sweep_stops_its_runs_before_it_exits(env, tmp_path, sig):
    """SIGTERM (or SIGINT) of the sweep alone reaches its running run, the sweep waits for it and exits
    128 + the signal; SIGTERM used to end the sweep and leave the run training in its directory."""
    cfg, out = _sweep_file(tmp_path, ONE_RUN), tmp_path / "out"
    proc = start_sweep(cfg, out, hold=60)
    try:
        child = lock_holder(out / "runs/kd/default/seed0", [proc], timeout=60)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == 128 + sig
        assert not alive(child)
    finally:
        kill_group(proc)
        proc.stderr.close()
    log = (out / "sweep.log").read_text()
    assert f"kdkit sweep: interrupted ({signal.Signals(sig).name}); 1 running run(s) stopped" in log


def test_a_run_directory_another_process_holds_is_neither_cleared_nor_started(env, tmp_path, capsys):
    """A run directory without checkpoint whose lock another process holds (a run left by a killed
    sweep): the sweep used to empty it and start a second run there; now that run is skipped, one line
    naming it and the holder's PID, and counted as failed (exit 3)."""
    from kdkit.paths import lock_directory

    cfg, out = _sweep_file(tmp_path, ONE_RUN), tmp_path / "out"
    run_dir = out / "runs/kd/default/seed0"
    run_dir.mkdir(parents=True)
    shutil.copy2(cfg, out / "sweep.yaml")
    (run_dir / "metrics.jsonl").write_text('{"stage": "teacher.convnet", "epoch": 0}\n')
    with lock_directory(run_dir, "held", "wait"):
        assert _main([cfg, "--out", out]) == 3
    err = capsys.readouterr().err
    assert (f"[1/1] kd seed=0: SKIPPED: run kd seed=0 ({run_dir.resolve()}) is in use by another kdkit process "
            f"(PID {os.getpid()}); skipped (counted as failed)") in err
    assert "1 of 1 run(s) failed" in err and "running" not in err
    assert (run_dir / "metrics.jsonl").read_text() == '{"stage": "teacher.convnet", "epoch": 0}\n'
