"""scripts/student_vs_baseline.py: the seed table behind README's student-vs-baseline figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "student_vs_baseline.py"


def _run(tmp_path, name, student, baseline):
    run = tmp_path / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"student": {"top1": student}, "baseline": {"top1": baseline}}))
    return str(run)


def test_mean_std_and_differences(tmp_path):
    runs = [_run(tmp_path, "a", 42.0, 40.0), _run(tmp_path, "b", 44.0, 41.0), _run(tmp_path, "c", 40.0, 42.0)]
    r = subprocess.run([sys.executable, str(SCRIPT), *runs], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # student 42 ± 2, baseline 41 ± 1, differences +2, +3, -2 -> 1 ± 2.65
    assert "student 42.00 ± 2.00, baseline 41.00 ± 1.00, difference 1.00 ± 2.65; student ahead in 2/3" in r.stdout


def test_run_without_baseline_is_a_one_line_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"student": {"top1": 1.0}}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "baseline.enabled=true" in r.stderr
