"""``benchmarks/train_step.py``'s GPU case (issue 24: resnet32x4 -> resnet8x4, bf16 autocast,
channels_last) at toy size on the CPU: every implementation (the CUDA-only ``plain+item`` too) is
placed alike and computes the same losses, and the JSON names what ran; ``--gpu`` without a GPU is
a one-line usage error."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
train_step = pytest.importorskip("train_step")


def _conv_weights_channels_last(model: torch.nn.Module) -> bool:
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_every_implementation_gets_the_same_placement(tmp_path):
    place = train_step.Placement("cpu", "bf16", channels_last=True)
    x, y, source = train_step.load_batch(4, models="cifar-x4")
    assert source == "random" and x.shape == (4, 3, 32, 32) and int(y.max()) < 100
    impls = train_step.build("kl", x, y, str(tmp_path), td=False, place=place, models="cifar-x4", item_baseline=True)
    plain, kdkit = impls["plain"], impls["kdkit"]
    assert plain.x.is_contiguous(memory_format=torch.channels_last)
    assert kdkit.trainer.amp_dtype == torch.bfloat16 and kdkit.trainer.settings.channels_last
    for model in (plain.student, plain.teacher, kdkit.trainer.model):
        assert _conv_weights_channels_last(model)
    assert [m for m in plain.student.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 100
    # the same objective from the same weights: the first losses agree within bf16's tolerance
    losses = train_step.check_equal_work(impls, steps=1, rtol=train_step.LOSS_RTOL["bf16"])
    assert math.isfinite(losses["plain"][0])
    assert losses["plain+item"] == losses["plain"]  # the same loop, only reading its loss every step
    assert train_step.host_syncs_per_step(plain, place) is None  # counted on CUDA only
    kdkit.close()


@pytest.mark.slow(seconds=20)
def test_gpu_shaped_run_reports_what_ran(tmp_path):
    out = tmp_path / "train_step.json"
    cmd = [sys.executable, str(BENCH / "train_step.py"), "--models", "cifar-x4", "--precision", "bf16",
           "--channels-last", "--batch-size", "4", "--rounds", "1", "--steps", "1", "--warmup", "0",
           "--allocator", "default", "--configs", "kl+fitnet", "--no-torchdistill", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"]["default"]
    meta = run["meta"]
    assert (meta["device"], meta["precision"], meta["channels_last"]) == ("cpu", "bf16", True)
    assert (meta["teacher"], meta["student"], meta["input"]) == ("resnet32x4", "resnet8x4", [3, 32, 32])
    assert meta["overhead_target_pct"] == 5.0
    entry = run["configs"]["kl+fitnet"]
    assert set(entry["first_losses"]) == {"plain", "kdkit"}
    assert entry["host_syncs_per_step"] == {"plain": None, "kdkit": None}
    assert "kdkit / plain" in proc.stdout and "target < 5 %" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --gpu would run")
def test_gpu_preset_without_a_gpu_is_a_usage_error():
    proc = subprocess.run([sys.executable, str(BENCH / "train_step.py"), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "torch sees no CUDA device; run on a GPU machine or use --device cpu")
