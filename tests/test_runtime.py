"""kdkit.runtime: the CLI sets OpenMP's spin count and tunes glibc's malloc before torch loads; the
malloc tuning does what it is for — a CPU training step stops page-faulting its freed activations back in."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from kdkit import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# minor page faults of a ResNet-8 training step (batch 128, 28 px) after 3 warm-up steps: the median of 9 steps,
# as the counts of single steps stray both ways on a loaded machine (the kernel's own faults, NUMA balancing's
# hinting faults and page migration, come in bursts; and a default-malloc step now and then reuses what the
# previous one left on the heap and faults 0 times: the fewest of 6, as this once took, was 0 for both modes in
# one parallel suite run), while malloc faults on most steps or on none
STEP_FAULTS = """
import resource, sys
if sys.argv[1] == "tuned":
    from kdkit.runtime import tune
    tune()
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
from kdkit.models import build_model
model = build_model("resnet8", 10)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(128, 3, 28, 28), torch.randint(0, 10, (128,))
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
per_step = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(per_step)[4])
"""


def _clean_env(**extra) -> dict:
    return {**runtime.neutral_env(), **extra}


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_tuned_malloc_stops_a_training_step_from_page_faulting():
    faults = {}
    for mode in ("default", "tuned"):
        r = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, timeout=300,
                           env=_clean_env(), check=True)
        faults[mode] = float(r.stdout.strip().splitlines()[-1])
    # glibc's defaults: thousands of faults per step (about 20,000 measured); tuned: the heap keeps them
    assert faults["default"] > 1000, faults
    assert faults["tuned"] < faults["default"] / 20, faults


def _info_json(**env) -> dict:
    r = subprocess.run([sys.executable, "-m", "kdkit", "info", "--json"], capture_output=True, text=True, timeout=300,
                       env=_clean_env(**env), check=True)
    return json.loads(r.stdout)


# what the CLI does first (kdkit.cli.main calls configure()), in a process that does not import torch:
# `kdkit info` takes ~3 s to start, this ~0.1 s
CONFIGURE = "import json; from kdkit import runtime; print(json.dumps(runtime.configure()))"


def _configured(**env) -> tuple[str, str]:
    """The (openmp, allocator) lines of a fresh process's configure() under ``env``."""
    r = subprocess.run([sys.executable, "-c", CONFIGURE], capture_output=True, text=True, timeout=60,
                       env=_clean_env(**env), check=True)
    openmp, allocator = json.loads(r.stdout)
    return openmp, allocator


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_the_cli_tunes_it_and_info_says_what_is_in_effect():
    info = _info_json()
    assert info["allocator"].startswith("glibc malloc tuned: mmap threshold 32 MiB")
    assert info["openmp"] == "OpenMP threads spin briefly, then sleep (GOMP_SPINCOUNT=10000)"
    assert (info["openmp"], info["allocator"]) == _configured()
    assert _configured(KDKIT_MALLOC_TUNING="0")[1] == "glibc malloc defaults (KDKIT_MALLOC_TUNING=0)"
    # the user's own settings win
    assert "left as it is" in _configured(MALLOC_TRIM_THRESHOLD_="1000")[1]
    assert _configured(LD_PRELOAD="/usr/lib/x86_64-linux-gnu/libjemalloc.so.2.missing")[1].startswith(
        "jemalloc (LD_PRELOAD)")


def test_the_cli_sets_a_short_openmp_spin_unless_the_user_chose():
    assert _configured()[0] == "OpenMP threads spin briefly, then sleep (GOMP_SPINCOUNT=10000)"
    assert _configured(OMP_WAIT_POLICY="PASSIVE")[0] == "OpenMP as the environment sets it (OMP_WAIT_POLICY=PASSIVE)"
    assert _configured(GOMP_SPINCOUNT="0")[0] == "OpenMP as the environment sets it (GOMP_SPINCOUNT=0)"


def test_tune_runs_once_and_describe_reports_it(monkeypatch):
    monkeypatch.setattr(runtime, "_state", None)
    monkeypatch.setenv(runtime.ENV_SWITCH, "off")
    assert "not tuned in this process" in runtime.describe()[1]
    assert runtime.tune() == "glibc malloc defaults (KDKIT_MALLOC_TUNING=0)"
    monkeypatch.delenv(runtime.ENV_SWITCH)
    assert runtime.tune() == runtime.describe()[1] == "glibc malloc defaults (KDKIT_MALLOC_TUNING=0)"


def test_process_env_gives_another_process_the_same_settings():
    assert runtime.process_env() == {"GOMP_SPINCOUNT": "10000", "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                                     "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
