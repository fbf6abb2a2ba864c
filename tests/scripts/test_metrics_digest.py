"""scripts/metrics_digest.py: digests of metrics.jsonl / summary.json per method, and their comparison."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import kdkit_prestarted

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "metrics_digest.py"
#: a kd run of a few seconds: 10 classes x 8 shapes, convnet width 4 teacher and student, one epoch each
TINY = [
    "data.name=shapes", "baseline.enabled=false", "data.train_per_class=8", "data.test_per_class=4",
    "data.augment=none", "teachers=[{name: convnet, width: 4}]", "student.name=convnet", "student.width=4",
    "teacher_train.epochs=1", "train.epochs=1", "train.batch_size=16", "teacher_train.batch_size=16",
]


def _script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False)


def _digest(tmp_path, name, *extra, sets=TINY):
    out = tmp_path / f"{name}.json"
    kdkit = (shlex.join([sys.executable, "-m", "kdkit"]) if kdkit_prestarted.fresh_only()
             else os.path.join(kdkit_prestarted.bin_directory(), "kdkit"))  # forked: 3-5 s of CPU less a run
    r = _script("kd", "--kdkit", kdkit, "--work", tmp_path / "work",
                "--out", out, *[a for kv in sets for a in ("--set", kv)], *extra)
    return r, out


def _module():
    spec = importlib.util.spec_from_file_location("metrics_digest", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_runs_agree_and_a_changed_digest_is_a_diff(tmp_path):
    r, one = _digest(tmp_path, "one")
    assert r.returncode == 0, r.stderr
    r, two = _digest(tmp_path, "two", "--compare", one)  # run, then compare with the first run
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["kd"]["status"] == b["kd"]["status"] == "ok"
    assert a["kd"]["run_dir"] != b["kd"]["run_dir"]  # fresh run directories
    for key in ("sha256", "lines", "summary_sha256"):
        assert a["kd"][key] == b["kd"][key]
    assert a["kd"]["lines"] == 4  # teacher: 1 epoch + test; student: 1 epoch + test
    assert "kd" in r.stdout and "same" in r.stdout

    b["kd"]["sha256"] = "0" * 64
    two.write_text(json.dumps(b))
    r = _script("--compare", one, two)
    assert r.returncode == 1
    row = next(line for line in r.stdout.splitlines() if line.startswith("kd "))
    # the files themselves are byte-identical, so only the edited digest makes this row DIFF
    assert "DIFF" in row and "metrics.jsonl differs" in row


def test_a_failed_run_is_reported_not_fatal(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"soda": {"status": "ok"}}))
    r, out = _digest(tmp_path, "bad", "--update", sets=["no_such_section.key=1"])
    assert r.returncode == 1
    results = json.loads(out.read_text())
    assert results["soda"] == {"status": "ok"}  # --update kept the entry of the method not run
    entry = results["kd"]
    assert entry["status"] == "failed" and "unknown config key" in entry["error"]
    r = _script("--compare", out, out)
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_per_method_sets_and_volatile_summary_fields():
    md = _module()
    sets = md.parse_sets(["train.epochs=2", "kd,dkd:teacher_train.epochs=2", "soda:data.size=10",
                          "teachers=[{name: a:b}]"])
    assert md.sets_for("kd", sets) == ["train.epochs=2", "teacher_train.epochs=2", "teachers=[{name: a:b}]"]
    assert md.sets_for("soda", sets) == ["train.epochs=2", "data.size=10", "teachers=[{name: a:b}]"]
    summary = {"seconds": 3.6, "map": {"16": {"i2t": 0.5}}, "cache": "/w/soda-x/cache/clip.pt"}
    cleaned = md.clean_summary(summary, ["/w/soda-x"])
    assert cleaned == {"map": {"16": {"i2t": 0.5}}, "cache": "<path>"}
    failed = {"status": "failed", "error": "exit 2: kdkit: error: non-finite loss", "sha256": "ab", "lines": 6}
    table, same = md.compare({"fitnet": failed}, {"fitnet": dict(failed)}, "old", "new")
    assert same and "both fail alike" in table
    table, same = md.compare({"fitnet": failed}, {"fitnet": {**failed, "lines": 7, "sha256": "cd"}}, "old", "new")
    assert not same and "FAILED" in table
    crash = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\nKeyError: 'lr'\n"
             "kdkit: internal error: this is a bug in kdkit or a plugin; please report it with the traceback above\n")
    assert md.last_line(crash).endswith("traceback above [KeyError: 'lr']")
    assert md.last_line("kdkit: error: unknown config key 'x'\n") == "kdkit: error: unknown config key 'x'"
