"""Plugin modules given with --plugins-module are recorded in the run directory (plugins.json) and
loaded again by ``kdkit eval``, ``kdkit train --resume`` and ``kdkit sweep`` without being named again;
a recorded module that is gone is a one-line error naming it."""
from __future__ import annotations

import json
import sys

import kdkit_prestarted
import yaml
from kdkit_engine_testutil import TINY, subprocess_env

#: a plugin module of the user's own: registers the student the run's config names
PLUGIN = '''
import kdkit


def _tiny(num_classes, **_):
    import torch.nn as nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, num_classes))


@kdkit.hookimpl
def kdkit_register_students(register):
    register("rec_tiny", _tiny, description="tiny student (tests)")
'''

SETS = [s for s in TINY if not s.startswith("student.")] + ["student.name=rec_tiny", "teacher_train.epochs=1",
                                                             "train.epochs=1"]


def _kdkit(args, plugin_dir, timeout=300):
    env = subprocess_env()
    env["PYTHONPATH"] = f"{plugin_dir}:{env['PYTHONPATH']}"
    return kdkit_prestarted.run([sys.executable, "-m", "kdkit", *args], env=env, capture_output=True,
                                text=True, timeout=timeout)


def test_eval_and_resume_load_the_recorded_module_and_a_gone_one_is_one_line(tmp_path):
    plugin_dir = tmp_path / "site"
    plugin_dir.mkdir()
    (plugin_dir / "kdkit_rec_plugin.py").write_text(PLUGIN)
    run = tmp_path / "run"
    args = ["--plugins-module", "kdkit_rec_plugin", "train", "--method", "kd", "--out", str(run)]
    for item in SETS:
        args += ["--set", item]
    trained = _kdkit(args, plugin_dir)
    assert trained.returncode == 0, trained.stderr[-2000:]
    record = json.loads((run / "plugins.json").read_text())
    assert [m["name"] for m in record["modules"]] == ["kdkit_rec_plugin"]
    assert record["modules"][0]["file"] == str((plugin_dir / "kdkit_rec_plugin.py").resolve())

    evaluated = _kdkit(["eval", "--run", str(run)], plugin_dir)  # no --plugins-module
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "student" in json.loads(evaluated.stdout)
    resumed = _kdkit(["train", "--resume", str(run)], plugin_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    (plugin_dir / "kdkit_rec_plugin.py").unlink()
    for args in (["eval", "--run", str(run)], ["train", "--resume", str(run)]):
        gone = _kdkit(args, plugin_dir)
        assert gone.returncode == 2, gone.stderr[-2000:]
        lines = gone.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kdkit: error: cannot import plugin module 'kdkit_rec_plugin'"), \
            gone.stderr
        assert "plugins.json" in lines[0] and "PYTHONPATH" in lines[0]


def test_a_sweep_records_its_modules_for_its_runs_and_its_resume(tmp_path):
    plugin_dir = tmp_path / "site"
    plugin_dir.mkdir()
    (plugin_dir / "kdkit_rec_plugin.py").write_text(PLUGIN)
    sweep = tmp_path / "sweep.yaml"
    base = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in SETS)}
    sweep.write_text(json.dumps({"name": "rec", "seeds": [0], "base": base,
                                 "cells": [{"name": "kd", "method": "kd"}]}))
    out = tmp_path / "out"
    first = _kdkit(["--plugins-module", "kdkit_rec_plugin", "sweep", str(sweep), "--out", str(out)], plugin_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [m["name"] for m in json.loads((out / "plugins.json").read_text())["modules"]] == ["kdkit_rec_plugin"]
    child = next((out / "runs").glob("kd/*/seed0"))
    assert "kdkit_rec_plugin" in [m["name"] for m in json.loads((child / "plugins.json").read_text())["modules"]]
    # the sweep run again (its resume) resolves every cell's config with the recorded module
    again = _kdkit(["sweep", str(sweep), "--out", str(out), "--no-run"], plugin_dir)
    assert again.returncode == 0, again.stderr[-3000:]


def test_an_unreadable_record_is_one_line_and_records_append(tmp_path):
    import pytest

    from kdkit.errors import KdkitError
    from kdkit.plugins import RECORD_FILE, record_plugin_modules, recorded_plugin_modules

    assert recorded_plugin_modules(tmp_path) == []
    record_plugin_modules(tmp_path, [])
    assert not (tmp_path / RECORD_FILE).exists()  # a run without plugin modules records none
    record_plugin_modules(tmp_path, ["json", "json"])
    record_plugin_modules(tmp_path, ["json", "kdkit_nowhere"])
    assert [(m["name"], m["file"] is None) for m in recorded_plugin_modules(tmp_path)] == \
        [("json", False), ("kdkit_nowhere", True)]
    (tmp_path / RECORD_FILE).write_text("{not json")
    with pytest.raises(KdkitError, match=r"plugins.json is unreadable .*restore it"):
        recorded_plugin_modules(tmp_path)
