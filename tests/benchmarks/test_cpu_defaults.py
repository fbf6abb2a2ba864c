"""``benchmarks/cpu_defaults.py`` at toy size on the shapes data: one pair of kd runs, kdkit's earlier
process settings against today's — today's faults far less, and both write the same metrics."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cpu_defaults  # noqa: E402

TOY = ["data.name=shapes", "data.train_per_class=16", "data.test_per_class=4", "teachers=[{name: convnet, width: 4}]",
       "student.name=convnet", "student.width=4", "teacher_train.epochs=1", "train.epochs=1"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's malloc")
def test_one_pair_writes_identical_metrics_and_its_report(tmp_path, capsys):
    assert cpu_defaults.main(["--pairs", "1", "--json", str(tmp_path / "r.json"), *[a for s in TOY for a in ("--set", s)]]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    (pair,) = result["pairs"]
    assert pair["metrics_identical"] and result["all_metrics_identical"]
    assert pair["order"] == ["before", "after"] and set(pair["runs"]) == {"before", "after"}
    assert pair["runs"]["after"]["minor_faults"] < pair["runs"]["before"]["minor_faults"]
    assert result["machine"]["isa"] in ("AVX-512 VPOPCNTDQ", "AVX2", "neither")
    assert "byte-identical in every pair" in capsys.readouterr().out
