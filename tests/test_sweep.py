"""kdkit.sweep without subprocesses: the sweep file's checks, the plan (grid points, slices,
{cell:NAME} dependencies), the numbers read from metrics.jsonl, the table's statistics, the
comparison with a reference table, and the last-epoch test hook the runs load."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from kdkit_engine_testutil import finishes_soon

from kdkit import sweep as ks
from kdkit.errors import ConfigError

BASE = {"seeds": [0, 1], "cells": [{"name": "kd", "method": "kd"}]}


def _sweep(**changes):
    data = json.loads(json.dumps(BASE))
    data.update(changes)
    return ks.parse_sweep(data, "s.yaml")


def test_import_does_not_load_torch():
    code = "import sys, kdkit.sweep, kdkit.commands.sweep; assert 'torch' not in sys.modules, 'torch loaded'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("data, match", [
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd"}], "seed": 1}, r"unknown key 'seed' in the sweep file"),
    ({"seeds": [], "cells": [{"name": "a", "method": "kd"}]}, r"seeds: expected a non-empty list"),
    ({"seeds": [0, -1], "cells": [{"name": "a", "method": "kd"}]}, r"seeds: expected"),
    ({"seeds": [0, True], "cells": [{"name": "a", "method": "kd"}]}, r"seeds: expected"),
    ({"seeds": [1, 1], "cells": [{"name": "a", "method": "kd"}]}, r"repeats a seed"),
    ({"seeds": [0], "cells": []}, r"cells: expected a non-empty list"),
    ({"seeds": [0]}, r"cells: expected a non-empty list"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "lr": 1}]}, r"unknown key 'lr' in cells\[0\]"),
    ({"seeds": [0], "cells": [{"name": "a/b", "method": "kd"}]}, r"cells\[0\].name"),
    ({"seeds": [0], "cells": [{"name": "a"}]}, r"cells\[0\] \(a\).method"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd"}, {"name": "a", "method": "kd"}]},
     r"duplicate cell name 'a'"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "rows": {}}]}, r"rows: expected a non-empty mapping"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "rows": {"x": 3}}]}, r"rows.x: expected a stage name"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd"}, {"name": "b", "method": "kd", "rows": {"a": "student"}}]},
     r"row name also used by cell 'a'"),
    ({"seeds": [0], "base": {"seed": 3}, "cells": [{"name": "a", "method": "kd"}]}, r"base.seed: 'seed' cannot"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": {"method": "dkd"}}]}, r"'method' cannot"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": ["train.lr=1"]}]}, r"set: expected a mapping"),
    ({"seeds": [0], "grid": {"train.lr": []}, "cells": [{"name": "a", "method": "kd"}]}, r"grid.train.lr: expected"),
    ({"seeds": [0], "grid": {"train.lr": [1, 1]}, "cells": [{"name": "a", "method": "kd"}]}, r"repeats a value"),
    ({"seeds": [0], "base": {"train.lr": 1}, "grid": {"train.lr": [1, 2]}, "cells": [{"name": "a", "method": "kd"}]},
     r"also set in base"),
    ({"seeds": [0], "grid": {"train.lr": [1, 2]}, "cells": [{"name": "a", "method": "kd", "set": {"train.lr": 3}}]},
     r"the grid varies train.lr"),
    ({"seeds": [0], "base": {"x": "{cell:a}"}, "cells": [{"name": "a", "method": "kd"}]}, r"only allowed in a cell"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": {"x": "{cell:zz}/w.pt"}}]}, r"names no cell"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": {"x": "{cell:b}"}},
                              {"name": "b", "method": "kd", "set": {"x": "{cell:a}"}, "rows": {"b": "student"}}]},
     r"dependency cycle a -> b -> a"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": {"x": "{cell:a}"}}]}, r"dependency cycle a -> a"),
    # a dotted key beside a mapping naming the same setting: applied as --set items one silently won
    ({"seeds": [0], "base": {"data.name": "shapes", "data": {"name": "fashion_mnist"}},
      "cells": [{"name": "a", "method": "kd"}]}, r"base: keys 'data.name' and 'data' both set data.name"),
    ({"seeds": [0], "cells": [{"name": "a", "method": "kd", "set": {"train": {"lr": 1}, "train.epochs": 2}}]},
     r"keys 'train' and 'train.epochs' overlap"),
])
def test_bad_sweep_files_are_one_line_config_errors(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        ks.parse_sweep(data, "bad.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.yaml: ")


def test_run_order_puts_dependencies_first_and_substitutes_their_run_dirs(tmp_path):
    sweep = ks.parse_sweep({
        "seeds": [3, 5], "base": {"train.epochs": 2}, "grid": {"train.lr": [0.1, 0.05]},
        "cells": [{"name": "late", "method": "kd",
                   "set": {"teachers.0.pretrained": "{cell:early}/checkpoints/t/best.pt", "teachers.0.train": False}},
                  {"name": "early", "method": "kd", "rows": {"early": "student", "teacher": "teacher.convnet"}}]},
        "s.yaml")
    assert [c.name for c in sweep.cells] == ["early", "late"]
    runs = ks.plan(sweep, tmp_path)
    assert len(runs) == 2 * 2 * 2
    assert [r.key for r in runs[:4]] == [("early", "g0-lr=0.1", 3), ("early", "g0-lr=0.1", 5),
                                         ("early", "g1-lr=0.05", 3), ("early", "g1-lr=0.05", 5)]
    late = next(r for r in runs if r.key == ("late", "g1-lr=0.05", 5))
    early_dir = tmp_path.resolve() / "runs" / "early" / "g1-lr=0.05" / "seed5"
    assert late.run_dir == tmp_path.resolve() / "runs" / "late" / "g1-lr=0.05" / "seed5"
    assert late.sets == ["train.epochs=2", "train.lr=0.05", f"teachers.0.pretrained={early_dir}/checkpoints/t/best.pt",
                         "teachers.0.train=false", "seed=5"]
    assert late.label == "late seed=5 lr=0.05"
    # a slice brings its dependencies; unknown names and seeds are errors
    assert {r.cell.name for r in ks.plan(sweep, tmp_path, cells=["late"], seeds=[5])} == {"early", "late"}
    assert {r.seed for r in ks.plan(sweep, tmp_path, seeds=[5])} == {5}
    with pytest.raises(ConfigError, match="--cells: no cell 'nope'"):
        ks.plan(sweep, tmp_path, cells=["nope"])
    with pytest.raises(ConfigError, match="--seeds: seed 4 is not in the sweep"):
        ks.plan(sweep, tmp_path, seeds=[4])


@pytest.mark.parametrize("value", [0.1, 1e-05, 1e20, 3, True, None, "a b", "0.1", "yes", [10, 20],
                                   [{"name": "convnet", "width": 4}], {"a": 1}, "x: y", "/p/with space/{x}"])
def test_set_items_parse_back_to_the_same_value(value):
    from kdkit.config import parse_set

    item = ks._set_item("a.b", value)
    assert parse_set(item) == (["a", "b"], value)


def test_check_configs_fails_on_a_typo_in_any_cell_and_refuses_selection_on_test(tmp_path, lean_plugin_manager):
    sweep = _sweep(cells=[{"name": "a", "method": "kd"}, {"name": "b", "method": "kd", "set": {"trian.lr": 0.1}}])
    with pytest.raises(ConfigError, match=r"cell b \(b seed=0\): unknown config key 'trian'"):
        ks.check_configs(ks.plan(sweep, tmp_path))
    sweep = _sweep(cells=[{"name": "a", "method": "kd", "set": {"checkpoint.select_on": "test"}}])
    with pytest.raises(ConfigError, match="select_on=test"):
        ks.check_configs(ks.plan(sweep, tmp_path))
    assert not (tmp_path / "runs").exists()


def test_a_row_naming_a_stage_the_method_does_not_train_is_refused_before_anything_runs(tmp_path,
                                                                                       lean_plugin_manager):
    rows = {"kd": "student", "teacher": "teacher.resnet14", "base": "baseline"}
    ok = _sweep(cells=[{"name": "kd", "method": "kd", "rows": rows}])
    assert len(ks.check_configs(ks.plan(ok, tmp_path))) == 2  # seeds 0 and 1
    # the baseline switched off: its row would have been found missing only after the run
    off = _sweep(cells=[{"name": "kd", "method": "kd", "rows": rows, "set": {"baseline.enabled": False}}])
    with pytest.raises(ConfigError, match=r"cell kd \(kd seed=0\): row 'base' reads stage 'baseline', which method kd "
                                          r"does not train with this config \(its stages: teacher.resnet14, student\)"):
        ks.check_configs(ks.plan(off, tmp_path))
    typo = _sweep(cells=[{"name": "kd", "method": "kd", "rows": {"kd": "studnet"}}])
    with pytest.raises(ConfigError, match="row 'kd' reads stage 'studnet'"):
        ks.check_configs(ks.plan(typo, tmp_path))
    assert not (tmp_path / "runs").exists()


def _metrics(path: Path, stage: str, vals: list, best: int, test_best: float, test_last: float | None):
    lines = [{"stage": stage, "epoch": e, "val.top1": v} for e, v in enumerate(vals)]
    if test_last is not None:
        lines.append({"stage": stage, "epoch": len(vals) - 1, "split": ks.LAST_EPOCH_SPLIT, "test.top1": test_last})
    lines.append({"stage": stage, "epoch": best, "split": "test", "test.top1": test_best})
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(x) + "\n" for x in lines)


def test_stage_metrics_reads_best_and_last(tmp_path):
    _metrics(tmp_path, "teacher.t", [50.0], 0, 40.0, None)  # one epoch, no hook record: best is last
    _metrics(tmp_path, "student", [10.0, 30.0, 20.0], 1, 25.0, 22.0)
    assert ks.stage_metrics(tmp_path, "student") == {
        "best_epoch": 1, "test_top1_best": 25.0, "val_top1_best": 30.0, "last_epoch": 2, "test_top1_last": 22.0,
        "val_top1_last": 20.0}
    t = ks.stage_metrics(tmp_path, "teacher.t")
    assert (t["best_epoch"], t["last_epoch"], t["test_top1_last"]) == (0, 0, 40.0)
    with pytest.raises(ks.KdkitError, match=r"stage 'baseline' is not in metrics.jsonl \(stages: teacher.t, student\)"):
        ks.stage_metrics(tmp_path, "baseline")


@pytest.mark.parametrize("line, match", [
    ("5", r"a line is not a kdkit metrics record .*'5'"),
    ('{"stage": "student", "split": "test", "test.top1": 99.0}', r"a line is not a kdkit metrics record"),
    ('{"stage": "student", "epoch": true}', r"a line is not a kdkit metrics record"),
    (b"\xff\xfe", r"is not UTF-8 text"),
])
def test_a_metrics_line_that_is_not_a_record_is_one_line(tmp_path, line, match):
    # a line `5` was an AttributeError, a record without its epoch a KeyError traceback (exit 1)
    _metrics(tmp_path, "student", [10.0], 0, 25.0, None)
    with open(tmp_path / "metrics.jsonl", "ab") as fh:
        fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(ks.KdkitError, match=match) as info:
        ks.stage_metrics(tmp_path, "student")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["summary.json", "diverged.json"])
def test_run_status_refuses_a_fifo_under_a_run_file_s_name(tmp_path, name):
    # the sweep read a FIFO summary.json (run_status) and blocked for ever
    fifo = tmp_path / name
    os.mkfifo(fifo)
    _, exc = finishes_soon(lambda: ks.run_status(tmp_path), fifo, timeout=20)
    assert isinstance(exc, ks.KdkitError), repr(exc)
    assert str(exc) == f"run file {fifo} is a FIFO, not a regular file"


def test_table_statistics_and_compare(tmp_path):
    sweep = _sweep(seeds=[0, 1, 2], cells=[{"name": "kd", "method": "kd", "rows": {"kd": "student", "base": "baseline"}}])
    runs = ks.plan(sweep, tmp_path)
    best = {0: 60.0, 1: 62.5, 2: 61.0}
    last = {0: 59.0, 1: 63.0, 2: 58.5}
    for run in runs:
        _metrics(run.run_dir, "student", [1.0, 2.0], 1, best[run.seed], last[run.seed])
        _metrics(run.run_dir, "baseline", [1.0, 2.0], 0, 50.0 + run.seed, 51.0)
        (run.run_dir / "summary.json").write_text("{}")
        (run.run_dir / "config.yaml").write_text("checkpoint: {select_on: val}\n")
    records, problems = ks.collect(sweep, runs, tmp_path)
    assert not problems and len(records) == 3 * 2
    table = ks.make_table(sweep, records, runs)
    kd = next(r for r in table["rows"] if r["id"] == "kd")
    assert kd["best"]["mean"] == pytest.approx(statistics.fmean(best.values()))
    assert kd["best"]["std"] == pytest.approx(statistics.stdev(best.values()))
    assert kd["last"]["mean"] == pytest.approx(statistics.fmean(last.values())) and kd["best"]["n"] == 3
    assert kd["kind"] == "method" and next(r for r in table["rows"] if r["id"] == "base")["kind"] == "baseline"
    text = ks.format_table(table)
    assert "| kd | kd | kd | 61.17 ± 1.26 | 60.17 ± 2.47 |" in text and "val-best" in text
    # paired by seed against the baseline row: 60-50, 62.5-51, 61-52
    gains = [best[s] - (50.0 + s) for s in (0, 1, 2)]
    assert kd["gain"]["mean"] == pytest.approx(statistics.fmean(gains))
    assert kd["gain"]["std"] == pytest.approx(statistics.stdev(gains)) and kd["gain"]["wins"] == 3
    assert f"| +{statistics.fmean(gains):.2f} ± {statistics.stdev(gains):.2f} (3/3) |" in text
    assert ks.plot_table(table, tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ref = json.loads(json.dumps(table))
    ref["rows"].append({"id": "ghost", "best": {"mean": 1.0}})
    lines, failed = ks.compare_tables(table, ref, 0.5)
    assert failed == 0 and any("not compared: ghost (not run)" in ln for ln in lines)
    next(r for r in ref["rows"] if r["id"] == "kd")["last"]["mean"] += 0.6
    lines, failed = ks.compare_tables(table, ref, 0.5)
    assert failed == 1 and next(ln for ln in lines if "OUT OF BAND" in ln).startswith("  OUT OF BAND: kd: ")
    assert ks.compare_tables(table, ref, 0.7)[1] == 0

    # a slice of the seeds is compared with the reference's values of those seeds, not its mean
    records0 = [r for r in records if r["seed"] == 0]
    slice_table = ks.make_table(sweep, records0, [r for r in runs if r.seed == 0])
    kd0 = next(r for r in slice_table["rows"] if r["id"] == "kd")
    assert kd0["seeds"] == [0] and kd0["best"]["mean"] == best[0]
    reference = json.loads(json.dumps(table))
    assert ks.compare_tables(slice_table, reference, 0.1)[1] == 0  # 60.0 vs seed 0's 60.0, not the mean 61.17
    next(r for r in reference["rows"] if r["id"] == "kd")["per_seed"]["0"]["best"] = 60.5
    assert ks.compare_tables(slice_table, reference, 0.4)[1] == 1


def test_last_epoch_hook_adds_a_record_and_changes_nothing_else(tmp_path):
    """The runs of a sweep load kdkit.sweep as a plugin: its only effect is a ``test@last`` line per
    stage (RNG state restored: every other metrics line is identical to a run without it)."""
    from kdkit_engine_testutil import TINY

    import kdkit.sweep
    from kdkit.engine import train
    from kdkit.plugins import plugin_manager_for_testing

    lines = {}
    for name, plugins in (("plain", ()), ("hook", (kdkit.sweep,))):
        with plugin_manager_for_testing(*plugins) as pm:
            train(method="kd", sets=TINY, out=tmp_path / name, manager=pm)
        lines[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    extra = [x for x in lines["hook"] if x.get("split") == ks.LAST_EPOCH_SPLIT]
    assert [x for x in lines["hook"] if x.get("split") != ks.LAST_EPOCH_SPLIT] == lines["plain"]
    assert [(x["stage"], x["epoch"]) for x in extra] == [("teacher.convnet", 0), ("student", 1)]
    teacher_test = next(x for x in lines["plain"] if x["stage"] == "teacher.convnet" and x.get("split") == "test")
    assert extra[0]["test.top1"] == teacher_test["test.top1"]  # one epoch: the best is the last


def test_outcomes_trained_diverged_failed_in_records_table_and_compare(tmp_path):
    """Per run x row: trained (numbers), diverged (where; a stage the run never reached too), failed (why,
    from the run's attempts file) — in plan order; the table averages the trained seeds only and says
    how many diverged; --compare matches divergence seed for seed over the seeds both tables know."""
    from kdkit.sweep.runs import _add_wall

    sweep = _sweep(seeds=[0, 1, 2], cells=[{"name": "kd", "method": "kd", "rows": {"base": "baseline", "kd": "student"}}])
    runs = ks.plan(sweep, tmp_path)
    for run in runs:
        (run.run_dir).mkdir(parents=True)
        (run.run_dir / "config.yaml").write_text("checkpoint: {select_on: val}\n")
    _metrics(runs[0].run_dir, "baseline", [1.0], 0, 50.0, 51.0)
    _metrics(runs[0].run_dir, "student", [1.0, 2.0], 1, 60.0, 59.0)
    (runs[0].run_dir / "summary.json").write_text("{}")
    # seed 1: the baseline diverged in its 3rd of 4 epochs, so the student stage never ran
    (runs[1].run_dir / "diverged.json").write_text(json.dumps(
        {"status": "diverged", "stage": "baseline", "epoch": 2, "epochs": 4, "step": 9, "loss": "nan"}))
    _add_wall(tmp_path, runs[2], 3.0, failed="exit 2: kdkit: error: boom")  # seed 2 failed
    assert [ks.run_status(r.run_dir) for r in runs] == ["done", "diverged", "restart"]
    records, problems = ks.collect(sweep, runs, tmp_path)
    assert not problems
    assert [(r["seed"], r["row"], r["status"]) for r in records] == [
        (0, "base", "trained"), (0, "kd", "trained"), (1, "base", "diverged"), (1, "kd", "diverged"),
        (2, "base", "failed"), (2, "kd", "failed")]
    assert records[3]["diverged"] == {"stage": "baseline", "epoch": 2, "epochs": 4, "step": 9, "loss": "nan"}
    assert records[4]["error"] == "exit 2: kdkit: error: boom" and records[4]["test_top1_best"] is None
    assert all(set(r) == set(records[0]) for r in records)  # one schema for every outcome

    table = ks.make_table(sweep, records, runs)
    kd = next(r for r in table["rows"] if r["id"] == "kd")
    assert kd["best"]["mean"] == 60.0 and kd["seeds"] == [0] and kd["failed"] == [2]
    assert [d["seed"] for d in kd["diverged"]] == [1] and kd["per_seed"]["1"]["diverged"]["stage"] == "baseline"
    text = ks.format_table(table)
    assert "| kd | kd | kd | 60.00 | 59.00 | 2.00 | +10.00 (1/1) | 1 (+1 diverged (baseline epoch 3/4); +1 failed) |" in text
    assert "| base | kd | kd | 50.00 | 51.00 | 1.00 | - | 1 (+1 diverged (epoch 3/4); +1 failed) |" in text

    lines, bad = ks.compare_tables(table, json.loads(json.dumps(table)), 0.0)
    assert bad == 0 and "  ok: kd: @val-best 60.00 vs 60.00 (+0.00 <= 0); @last 59.00 vs 59.00 (+0.00 <= 0); " \
                       "diverged in both (seed 1)" in lines
    # an older reference that knows only seed 0 (seed 1 failed there): nothing to say about seed 1
    old = json.loads(json.dumps(table))
    for row in old["rows"]:
        row.pop("diverged")
        row["per_seed"] = {"0": row["per_seed"]["0"]}
    assert ks.compare_tables(table, old, 0.0)[1] == 0
    # a reference where seed 1 trained: out of band, whatever the means
    trained = json.loads(json.dumps(table))
    row = next(r for r in trained["rows"] if r["id"] == "kd")
    row["diverged"], row["per_seed"]["1"] = [], {"best": 61.0, "last": 61.0}
    lines, bad = ks.compare_tables(table, trained, 100.0)
    assert bad == 1 and "  OUT OF BAND: kd: diverged seeds differ: here 1, reference none" in lines


def test_each_run_gets_a_fixed_thread_count(monkeypatch):
    """A run's numbers depend on its torch thread count (float summation order), so --jobs never sets
    it: by default a run inherits the sweep's environment (the threads kdkit train uses, so a sweep's
    run is the run started by hand); --threads T sets T for every run."""
    from kdkit.sweep.runner import child_env, default_threads

    from kdkit import runtime

    monkeypatch.setattr(os, "environ", dict(os.environ))  # configure() below sets variables: not for later tests
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "_user_openmp", None)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_threads() is None and child_env(None) == {}
    assert child_env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # runs at once wanting more threads than cores: OpenMP threads that never spin (spinning runs stall each
    # other); the spin count too, as libgomp takes a set GOMP_SPINCOUNT over OMP_WAIT_POLICY
    assert child_env(1, jobs=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    passive = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert child_env(2, jobs=2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", **passive}
    assert child_env(None, jobs=2) == passive
    # the CLI's own short spin in the sweep's environment is not the user's choice: it is replaced
    runtime.configure()
    assert os.environ["GOMP_SPINCOUNT"] == runtime.OPENMP_SPIN and child_env(None, jobs=2) == passive
    # the user's own choice (either variable) is kept: nothing is set over it
    for var, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5")):
        monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
        monkeypatch.setenv(var, value)
        monkeypatch.setattr(runtime, "_user_openmp", None)
        runtime.configure()
        assert child_env(None, jobs=2) == {}, var
        monkeypatch.delenv(var)


@pytest.mark.parametrize("data, match", [
    # each name becomes a directory (runs/<cell>, logs/<cell>, the default --out): a file system refuses a
    # component over 255 bytes, and the sweep used to abort mid-way, at the first run of that cell
    ({"seeds": [0], "cells": [{"name": "a" * 300, "method": "kd"}]},
     r"cells\[0\].name: 'aaaaaaaaaaaaaaaaaaaa\.\.\.' is 300 characters long; at most 100"),
    ({"name": "n" * 101, "seeds": [0], "cells": [{"name": "a", "method": "kd"}]},
     r"name: 'nnnnnnnnnnnnnnnnnnnn\.\.\.' is 101 characters long; at most 100"),
    ({"seeds": [10 ** 120], "cells": [{"name": "a", "method": "kd"}]}, r"seeds: seed 10000000000000000000\.\.\. has 121 digits; at most 96"),
    # one directory on a case-insensitive file system (macOS, Windows)
    ({"seeds": [0], "cells": [{"name": "kd", "method": "kd"}, {"name": "KD", "method": "kd", "rows": {"KD2": "student"}}]},
     r"cells\[1\] \(KD\): cell name 'KD' differs from 'kd' only in case"),
])
def test_names_that_cannot_be_directories_are_refused_by_the_spec_check(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        ks.parse_sweep(data, "bad.yaml")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_the_longest_names_make_runs_and_their_files(tmp_path):
    """A cell name and seed at the limit plan runs whose directories and log files can be created."""
    from kdkit.sweep.runs import _add_wall

    sweep = ks.parse_sweep({"seeds": [10 ** 95], "cells": [{"name": "c" * ks.MAX_NAME_LENGTH, "method": "kd"}]},
                           "s.yaml")
    (run,) = ks.plan(sweep, tmp_path)
    run.run_dir.mkdir(parents=True)
    _add_wall(tmp_path, run, 1.0)


@pytest.mark.parametrize("name, dir_name", [("fashion mnist/v2", "fashion_mnist_v2"), ("..", "__"), (".", "_"),
                                            ("a..b", "a..b")])
def test_the_default_out_is_one_directory_below_sweeps(name, dir_name):
    assert _sweep(name=name).dir_name == dir_name


def _reference(**row_changes) -> dict:
    row = {"id": "kd", "best": {"mean": 60.0}, "last": {"mean": 59.0}, "seeds": [0, 1],
           "per_seed": {"0": {"best": 59.0, "last": 58.0}, "1": {"best": 61.0, "last": 60.0}},
           "diverged": []}
    row.update(row_changes)
    return {"sweep": "s", "rows": [row]}


@pytest.mark.parametrize("text, match", [
    # each of these was compared as if it were fine (or raised a traceback in compare_tables)
    (json.dumps(_reference(best={"mean": float("nan")})), r"rows\[0\] \(kd\): best.mean is nan; expected a finite"),
    (json.dumps(_reference(last={"mean": True})), r"rows\[0\] \(kd\): last.mean is True; expected a finite"),
    (json.dumps(_reference(best={"mean": "high"})), r"rows\[0\] \(kd\): best.mean is 'high'; expected a finite"),
    (json.dumps({"rows": []}), r"no rows: nothing to compare with"),
    (json.dumps({"rows": _reference()["rows"] * 2}), r"rows\[1\] \(kd\): row 'kd' appears twice \(also rows\[0\]\)"),
    (json.dumps(_reference(per_seed={"0": {"best": "x"}})), r"rows\[0\] \(kd\): per_seed.0.best is 'x'"),
    (json.dumps(_reference(per_seed={"zero": {"best": 1.0}})), r"rows\[0\] \(kd\): per_seed: key 'zero' is not a seed"),
    (json.dumps(_reference(per_seed=[1])), r"rows\[0\] \(kd\): per_seed is \[1\]; expected a mapping"),
    (json.dumps(_reference(seeds=["0"])), r"rows\[0\] \(kd\): seeds is \['0'\]; expected a list of integers"),
    (json.dumps(_reference(diverged=[{"seed": "1"}])), r"rows\[0\] \(kd\): diverged\[0\] is"),
    (json.dumps(_reference(best=[60.0])), r"rows\[0\] \(kd\): best is \[60.0\]; expected a mapping"),
    (json.dumps(_reference(id="")), r"rows\[0\]: id is ''; expected a non-empty string"),
    (json.dumps({"rows": {"kd": {}}}), r"not a kdkit sweep table.json: rows is a dict; expected a list"),
    ("[" * 100_000, r"not JSON \(nested too deeply\)"),
    # issue 22 rerun: json keeps the last of a repeated key silently (YAML's are refused)
    ('{"rows": [{"id": "kd", "best": {"mean": 60.0}, "best": {"mean": 90.0}}]}',
     r"key 'best' appears twice in one object; keep one"),
    ('{"rows": [], "rows": [{"id": "kd", "best": {"mean": 60.0}}]}', r"key 'rows' appears twice in one object"),
])
def test_a_bad_reference_table_is_one_line_naming_the_file_and_the_row(tmp_path, text, match):
    path = tmp_path / "ref.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        ks.load_table(path)
    assert str(info.value).startswith(f"--compare {path}: ") and "\n" not in str(info.value)


def test_a_valid_reference_loads_as_it_is(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(_reference()))
    assert ks.load_table(path) == _reference()
    # the committed reference of the published table
    committed = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_methods.reference.json"
    assert ks.load_table(committed)["rows"]


def test_a_reference_without_a_row_of_this_sweep_is_an_error(tmp_path):
    sweep = _sweep()
    runs = ks.plan(sweep, tmp_path)
    ref = {"rows": [{"id": "dkd", "best": {"mean": 1.0}}]}
    with pytest.raises(ConfigError, match=r"--compare ref.json: no row of this sweep is in the reference "
                                          r"\(reference rows: dkd; this sweep's: kd\); nothing would be compared"):
        ks.check_common_rows(ref, sweep, runs, "ref.json")
    ks.check_common_rows({"rows": [{"id": "kd", "best": {"mean": 1.0}}]}, sweep, runs, "ref.json")


def test_a_comparison_that_compared_no_row_fails():
    """Rows in common, but none with results here (--no-run before the runs ended): not a pass."""
    table = {"rows": [{"id": "kd", "seeds": [], "best": {"mean": None}, "last": {"mean": None}, "per_seed": {},
                       "diverged": []}]}
    lines, failed = ks.compare_tables(table, _reference(), 1.0)
    assert failed == 1 and lines[-1] == "compare: no row was compared (not compared: kd (no results))"


def test_a_sweep_over_the_cap_says_its_size_and_plans_nothing_without_yes(tmp_path, monkeypatch):
    """100,000 grid points used to plan and check silently for minutes: the size is printed first,
    and more than MAX_RUNS_WITHOUT_YES runs is refused (one line) unless --yes."""
    from kdkit.sweep import runner

    cfg = tmp_path / "big.yaml"
    cfg.write_text(json.dumps({"seeds": [0], "grid": {"train.lr": [i / 1000 for i in range(1, 501)],
                                                      "train.epochs": list(range(1, 201))},
                               "cells": [{"name": "a", "method": "kd"}]}))

    def planned(*args, **kwargs):
        raise AssertionError("planned")

    monkeypatch.setattr(runner, "plan", planned)
    lines = []
    with pytest.raises(ks.KdkitError) as info:
        ks.run_sweep(cfg, tmp_path / "out", stdout=lines.append)
    assert lines == ["kdkit sweep big: 100000 run(s) = 1 cell(s) x 100000 grid point(s) x 1 seed(s)"]
    assert str(info.value) == ("sweep big has 100000 runs, more than the 1000 a sweep plans and runs without --yes; "
                               "check the grid, or pass --yes to run them all")
    assert not (tmp_path / "out").exists()
    with pytest.raises(AssertionError, match="planned"):  # --yes: on to planning
        ks.run_sweep(cfg, tmp_path / "out", stdout=lines.append, yes=True)


def test_the_size_counts_the_whole_file_and_names_the_slice(tmp_path, monkeypatch):
    from kdkit.sweep import runner

    sweep = _sweep(seeds=[0, 1, 2], grid={"train.lr": [0.1, 0.2]},
                   cells=[{"name": "a", "method": "kd"}, {"name": "b", "method": "kd"}])
    assert runner.sweep_size(sweep) == "12 run(s) = 2 cell(s) x 2 grid point(s) x 3 seed(s)"
    assert runner.sweep_size(sweep, ["b"], [0]) == ("12 run(s) = 2 cell(s) x 2 grid point(s) x 3 seed(s), all "
                                                    "checked; 2 of them run here (--cells/--seeds)")
    monkeypatch.setattr(runner, "MAX_RUNS_WITHOUT_YES", 11)
    with pytest.raises(ks.KdkitError, match="sweep s has 12 runs, more than the 11"):
        runner.check_size(sweep, yes=False)
    runner.check_size(sweep, yes=True)


def test_sweep_yaml_is_written_only_under_the_lock(tmp_path, monkeypatch, lean_plugin_manager):
    """Of two sweeps started together on one --out, the one that does not get the lock writes nothing:
    its sweep.yaml used to be written before the lock was taken and could replace the winner's."""
    from kdkit.paths import lock_directory
    from kdkit.sweep import runner

    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(BASE))
    out = tmp_path / "out"
    seen = []

    def lost_the_race(directory, what, advice):
        seen.append((out / ks.SWEEP_FILE).exists())
        raise ks.KdkitError(f"{what} is in use by another kdkit process (PID 1); {advice}")

    monkeypatch.setattr(runner, "lock_directory", lost_the_race)
    with pytest.raises(ks.KdkitError, match="in use"):
        ks.run_sweep(cfg, out, stdout=lambda m: None)
    assert seen == [False] and not (out / ks.SWEEP_FILE).exists()
    monkeypatch.undo()

    # a real lock held by another sweep (OUT holds only its .lock yet): refused as in use, nothing written
    out.mkdir(exist_ok=True)
    ran = []
    monkeypatch.setattr(runner, "_execute", lambda *args: ran.append(args) or 0)
    with lock_directory(out, "held", "wait"):
        with pytest.raises(ks.KdkitError, match=r"sweep directory .* is in use by another kdkit process"):
            ks.run_sweep(cfg, out, stdout=lambda m: None)
        assert not (out / ks.SWEEP_FILE).exists() and not ran
    # once it is free, an OUT that holds only a .lock (its sweep was killed before writing sweep.yaml) is used
    assert ks.run_sweep(cfg, out, stdout=lambda m: None) == 0 and len(ran) == 1
    assert json.loads(json.dumps(__import__("yaml").safe_load((out / ks.SWEEP_FILE).read_text()))) == BASE


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, lean_plugin_manager):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(BASE))
    (tmp_path / "file").write_text("")
    with pytest.raises(ks.KdkitError, match=r"--out .*file/out: cannot create it \(Not a directory\)"):
        ks.run_sweep(cfg, tmp_path / "file" / "out", stdout=lambda m: None)


def test_grid_values_with_mixed_mapping_keys_are_compared_not_a_type_error(tmp_path):
    """Found by tests/fuzz/test_fuzz_sweep.py: json.dumps(sort_keys=True) of {1: a, b: c} raised TypeError."""
    sweep = _sweep(grid={"distill.loss_options": [{1: "a", "b": "c"}, {"b": "c", 1: "a", "d": 1}]})
    assert [p.values for p in sweep.grid_points()] == [{"distill.loss_options": {1: "a", "b": "c"}},
                                                       {"distill.loss_options": {"b": "c", 1: "a", "d": 1}}]
    with pytest.raises(ConfigError, match="repeats a value"):
        _sweep(grid={"distill.loss_options": [{1: "a", "b": "c"}, {"b": "c", 1: "a"}]})
    assert ks.make_table(sweep, [], ks.plan(sweep, tmp_path))["rows"]


@pytest.mark.parametrize("text", ["grid: {train.lr: [0.1, 2020-01-01]}", "base: {x: !!binary Zm9v}",
                                  "base: {x: [!!set {a, b}]}"])
def test_yaml_values_that_are_no_config_values_are_refused(tmp_path, text):
    """Found by tests/fuzz/test_fuzz_sweep.py: a date grid value passed the spec check and then made
    results.jsonl fail to serialise, after the first run."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"seeds: [0]\n{text}\ncells: [{{name: a, method: kd}}]\n")
    with pytest.raises(ConfigError, match=r"is a YAML date, binary or set, not a config value; quote it"):
        ks.load_sweep(cfg)


def test_a_key_given_twice_in_a_sweep_file_is_refused(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("seeds: [0]\nbase:\n  train.lr: 0.1\n  train.lr: 0.2\ncells: [{name: a, method: kd}]\n")
    with pytest.raises(ConfigError, match=r"line 4.*duplicate key 'train.lr' \(first on line 3\)"):
        ks.load_sweep(cfg)


def test_runs_that_outlive_the_grace_after_a_signal_are_killed_in_one_line():
    """The sweep passes its signal to every run, waits at most the grace, then SIGKILLs the rest."""
    import signal

    from kdkit.sweep import runner

    class Run:
        def __init__(self, obeys):
            self.obeys, self.got, self.killed = obeys, [], False

        def interrupt(self, signum):
            self.got.append(signum)

        def poll(self):
            return (0, "") if (self.got and self.obeys) or self.killed else None

        def kill(self):
            self.killed = True

    runs, lines = [Run(True), Run(False)], []
    assert runner._stop_runs(runs, signal.SIGTERM, lines.append, grace=0.2) == 128 + signal.SIGTERM
    assert [r.got for r in runs] == [[signal.SIGTERM]] * 2 and [r.killed for r in runs] == [False, True]
    assert lines == ["kdkit sweep: 1 run(s) still running 0.2 s after SIGTERM: killed (SIGKILL)",
                     "kdkit sweep: interrupted (SIGTERM); 2 running run(s) stopped; run the same command again "
                     "to resume"]


def test_a_kept_run_with_another_config_is_refused_not_tabulated(tmp_path, monkeypatch, lean_plugin_manager):
    """A finished run is reused only when its config.yaml is the config the sweep would run now; a run
    of 2 epochs used to be skipped as done by a sweep of 4 and tabulated with its runs, exit 0."""
    import shutil

    from kdkit.config import dump_yaml
    from kdkit.sweep import runner

    cfg, out = tmp_path / "s.yaml", tmp_path / "out"
    cfg.write_text(json.dumps(dict(BASE, seeds=[0])))
    [run] = ks.plan(ks.load_sweep(cfg), out)
    config = ks.check_configs([run])[run.key]
    run.run_dir.mkdir(parents=True)
    shutil.copy2(cfg, out / ks.SWEEP_FILE)
    (run.run_dir / "summary.json").write_text("{}")
    ran = []
    monkeypatch.setattr(runner, "_execute", lambda *args: ran.append(args) or 0)
    (run.run_dir / "config.yaml").write_text(dump_yaml(dict(config, device="cpu")))  # device may differ
    assert ks.run_sweep(cfg, out, stdout=lambda m: None) == 0 and len(ran) == 1
    epochs = config["train"]["epochs"]
    (run.run_dir / "config.yaml").write_text(dump_yaml({**config, "train": {**config["train"], "epochs": epochs + 2},
                                                        "seed": 7}))
    with pytest.raises(ks.KdkitError) as info:
        ks.run_sweep(cfg, out, stdout=lambda m: None)
    assert str(info.value) == (f"run kd seed=0 ({run.run_dir}) was made with another config than this sweep's "
                               f"(seed (7 -> 0), train.epochs ({epochs + 2} -> {epochs}); saved -> now); use "
                               "another --out, or remove that run directory to run it again")
    assert len(ran) == 1 and (run.run_dir / "summary.json").is_file()
