"""``benchmarks/kd_job.py`` end to end at toy size (1 epoch each, 200 images): the JSON it writes and
that both sides learn.  Skipped without torchdistill (the ``[bench]`` extra) or Debian's Fashion-MNIST."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

pytest.importorskip("torchdistill")
kd_job = pytest.importorskip("kd_job")
if not all(Path(p).exists() for p in (kd_job.FASHION_IMAGES, kd_job.FASHION_LABELS, kd_job.FASHION_TEST_IMAGES,
                                      kd_job.FASHION_TEST_LABELS)):
    pytest.skip("Debian's Fashion-MNIST is not installed", allow_module_level=True)

# 200 test images: chance is 10 %, its binomial std 2.1 points; 13 % is clear of a constant predictor
ABOVE_CHANCE = 13.0


def test_the_subset_is_the_one_kdkit_trains_on():
    from kdkit.data.mnist import FashionMNIST
    from kdkit.engine.data import split_train_val

    kdkit_train = FashionMNIST("train", train_per_class=20, augment="none", normalize=False)
    ours_train, ours_val = kd_job.subset_indices(20, seed=3)
    grey = kd_job.read_idx(kd_job.FASHION_IMAGES)
    for theirs, ours in zip(split_train_val(kdkit_train, 0.1, 3), (ours_train, ours_val)):
        assert len(theirs) == len(ours)
        for pos, index in zip(theirs.indices, ours):
            assert (kdkit_train.images[pos, 0].numpy() == grey[index]).all()


@pytest.mark.slow
def test_toy_job_reports_both_sides_and_both_learn(tmp_path):
    out = tmp_path / "kd_job.json"
    cmd = [sys.executable, str(BENCH / "kd_job.py"), "--seeds", "0", "--teacher-epochs", "1", "--student-epochs", "1",
           "--train-per-class", "20", "--test-per-class", "20", "--batch-size", "4", "--no-tuned",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    meta = result["meta"]
    for key in ("cpu", "cores", "avx2", "avx512_vpopcntdq", "loadavg_start", "loadavg_end", "torchdistill", "job"):
        assert key in meta
    (row,) = result["seeds"]
    assert row["seed"] == 0 and row["order"] == ["kdkit", "torchdistill"]
    kd, td = row["kdkit"], row["torchdistill"]
    assert td["n_train"] == 180 and td["n_val"] == 20 and td["n_test"] == 200
    for side in (kd, td):
        assert side["wall_s"] > 0 and side["student_best_epoch"] == 0 and side["teacher_best_epoch"] == 0
        assert side["student_top1"] > ABOVE_CHANCE, side
    assert kd["teacher_cache"] == "memory"
    assert td["kdkit_time_ratio"] == pytest.approx(kd["wall_s"] / td["wall_s"])
    assert set(td["phases"]) == {"data_s", "teacher_train_s", "teacher_test_s", "student_train_s", "student_test_s"}
    assert result["summary"]["torchdistill"]["kdkit_speedup"]["mean"] == pytest.approx(td["kdkit_speedup"])
    assert "kdkit/torchdistill time" in proc.stdout
