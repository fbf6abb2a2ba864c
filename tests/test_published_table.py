"""The published Fashion-MNIST table (configs/fashion_mnist_methods.yaml) as a regression check: a slice of
it — the kd cell (teacher, no-KD baseline, Hinton KD) and DKD, seed 0 — is rerun with one torch thread per run,
as the reference was measured (a run's float sums, and so its numbers, depend on the thread count), and

* every row must land within TOLERANCE points of the committed reference
  (configs/fashion_mnist_methods.reference.json) for that seed, and
* both distilled students must beat the same seed's no-KD baseline (the gain the table publishes).

The tolerance is 1.5 points, not the 1.0 the rows reproduce to on the reference's machine, because a run's
numbers also depend on the CPU: oneDNN picks its convolution kernels by instruction set and cache sizes, and
so sums in another order.  The reference was measured on a 2-core Intel Xeon (AVX-512); on a 2-core AMD EPYC
(AVX-512 VPOPCNTDQ) the same command gives the baseline to the digit (83.37) but the teacher 0.93 / 1.11
points lower (val-best / last), kd 0.75 and dkd 0.33 lower.  The gain check holds on both machines (kd +1.65
and +0.90, dkd +1.57 and +1.24) and does not depend on the machine's offset, so a change that stops
distillation from helping fails here even where the tolerance would hide it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import kdkit_prestarted
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist_methods.yaml"
REFERENCE = ROOT / "configs" / "fashion_mnist_methods.reference.json"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TOLERANCE = 1.5

pytestmark = [pytest.mark.slow(seconds=190),
              pytest.mark.skipif(not FASHION_MNIST.exists(), reason="needs Debian's dataset-fashion-mnist "
                                                                    "(scripts/setup.sh installs it)")]


def test_a_slice_of_the_published_table_reproduces_its_reference(tmp_path):
    out = tmp_path / "sweep"
    proc = kdkit_prestarted.run([sys.executable, "-m", "kdkit", "sweep", str(CONFIG), "--out", str(out),
                           "--cells", "dkd", "--seeds", "0", "--threads", "1",
                           "--compare", str(REFERENCE), "--tolerance", str(TOLERANCE)],
                                capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    compared = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.strip().startswith("ok:")]
    assert {line.split(":")[1].strip() for line in compared} >= {"teacher", "baseline", "kd", "dkd"}, proc.stdout
    rows = {row["id"]: row for row in json.loads((out / "table.json").read_text())["rows"]}
    for student in ("kd", "dkd"):
        gain = rows[student]["gain"]
        assert gain["baseline"] == "baseline" and gain["n"] == 1 and gain["mean"] > 0, (student, gain)
