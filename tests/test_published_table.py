"""The published Fashion-MNIST table (configs/fashion_mnist_methods.yaml) as a regression check: a slice of
it — the kd cell (teacher, no-KD baseline, Hinton KD) and DKD, seed 0 — is rerun and must land within
1 point of the committed reference (configs/fashion_mnist_methods.reference.json) for that seed, with one torch
thread per run as the reference was measured (a run's float sums, and so its numbers, depend on the thread count)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist_methods.yaml"
REFERENCE = ROOT / "configs" / "fashion_mnist_methods.reference.json"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION_MNIST.exists(), reason="needs Debian's dataset-fashion-mnist "
                                                                    "(scripts/setup.sh installs it)")]


def test_a_slice_of_the_published_table_reproduces_its_reference(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdkit", "sweep", str(CONFIG), "--out", str(tmp_path / "sweep"),
                           "--cells", "dkd", "--seeds", "0", "--threads", "1",
                           "--compare", str(REFERENCE), "--tolerance", "1.0"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    compared = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.strip().startswith("ok:")]
    assert {line.split(":")[1].strip() for line in compared} >= {"teacher", "baseline", "kd", "dkd"}, proc.stdout
