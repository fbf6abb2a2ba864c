"""pytest-benchmark suites for kdkit's compiled ops (not part of the test suite).

Run::

    pytest benchmarks/ --benchmark-group-by=group            # modest sizes, a few minutes
    KDKIT_BENCH_FULL=1 pytest benchmarks/ --benchmark-group-by=group   # README sizes

Environment:
    KDKIT_BENCH_FULL=1        full sizes: N=1,000,000, Q=1,000, k=100; penalty 1,048,576 x 64
    KDKIT_BENCH_DEVICE=cuda   run kdkit and the torch peer on the GPU (faiss-cpu is skipped)
    KDKIT_BENCH_THREADS=N     threads for torch and faiss (default: torch.get_num_threads())
    KDKIT_BENCH_BITS=64,128   code lengths
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch


@dataclass(frozen=True)
class BenchConfig:
    device: str
    threads: int
    n: int
    q: int
    k: int
    bits: tuple[int, ...]
    penalty_shape: tuple[int, int]
    rounds: int
    full: bool


def _config() -> BenchConfig:
    full = os.environ.get("KDKIT_BENCH_FULL", "") not in ("", "0")
    device = os.environ.get("KDKIT_BENCH_DEVICE", "cpu")
    threads = int(os.environ.get("KDKIT_BENCH_THREADS", "0")) or torch.get_num_threads()
    bits = tuple(int(b) for b in os.environ.get("KDKIT_BENCH_BITS", "64,128").split(","))
    if full:
        return BenchConfig(device, threads, 1_000_000, 1_000, 100, bits, (1_048_576, 64), 5, True)
    return BenchConfig(device, threads, 200_000, 200, 100, bits, (262_144, 64), 5, False)


CONFIG = _config()


def pytest_report_header(config):
    try:
        from kdkit.ops import extension_info

        ext = dict(extension_info())
    except Exception as exc:  # noqa: BLE001
        ext = {"loaded": False, "error": repr(exc)}
    lines = [f"kdkit benchmarks: {CONFIG}", f"kdkit extension: {ext}"]
    if not ext.get("loaded"):
        lines.append("WARNING: kdkit._C is NOT loaded -- timing the pure-torch reference")
    return lines


@pytest.fixture(scope="session")
def bench_config() -> BenchConfig:
    if CONFIG.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("KDKIT_BENCH_DEVICE=cuda but no CUDA device is available")
    torch.set_num_threads(CONFIG.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(CONFIG.threads)
    except ImportError:
        pass
    return CONFIG


@pytest.fixture(scope="session")
def sync(bench_config):
    if bench_config.device == "cuda":
        return torch.cuda.synchronize
    return lambda: None
