"""scripts/gpu-check.sh on a machine without a GPU: it refuses in one line unless --dry-run (the
GPU runs themselves are recorded in README; the dry run rebuilds the extension, so it is not run here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run for real")
def test_without_a_gpu_it_refuses_and_names_the_dry_run(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "no GPU is visible to torch" in last and "--dry-run" in last
    assert (tmp_path / "out" / "gpu-check.log").read_text().strip().splitlines()[-1].endswith(
        "pass --dry-run for the CPU self-check")
