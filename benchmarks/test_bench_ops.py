"""Benchmarks: kdkit ops against faiss and plain torch, grouped so each group compares the
methods on the same data in one run. See conftest.py for sizes and environment variables."""
from __future__ import annotations

import functools
import os

import pytest
import torch

from kdkit.bench import (N_CENTRES, _clustered_codes, _random_codes, _torch_chunk, _torch_topk,
                         _unpack_pm1)
from kdkit.ops import binarization_penalty, hamming_topk

pytest.importorskip("pytest_benchmark")

# Same variable as conftest.py reads (parametrisation needs it at import time).
BITS = tuple(int(b) for b in os.environ.get("KDKIT_BENCH_BITS", "64,128").split(","))

TOPK_METHODS = ("kdkit", "faiss", "torch")
DATA = ("random", "clustered")


@functools.lru_cache(maxsize=4)
def _codes(data: str, bits: int, n: int, q: int):
    gen = torch.Generator().manual_seed(1234 + bits)
    if data == "random":
        return _random_codes(n, bits // 8, gen), _random_codes(q, bits // 8, gen)
    centres = torch.rand((N_CENTRES, bits), generator=gen) < 0.5
    return _clustered_codes(n, bits, centres, gen), _clustered_codes(q, bits, centres, gen)


@functools.lru_cache(maxsize=4)
def _kdkit_reference(data: str, bits: int, n: int, q: int, k: int):
    db, qs = _codes(data, bits, n, q)
    return hamming_topk(qs, db, k)


def _run(benchmark, fn, rounds, sync, warmup=1):
    def call():
        out = fn()
        sync()
        return out

    return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=warmup)


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("data", DATA)
def test_hamming_topk(benchmark, bench_config, sync, data, bits, method):
    cfg = bench_config
    benchmark.group = f"hamming_topk {data} {bits}-bit N={cfg.n} Q={cfg.q} k={cfg.k} ({cfg.device})"
    benchmark.extra_info.update(method=method, n=cfg.n, q=cfg.q, k=cfg.k, bits=bits,
                                threads=cfg.threads, device=cfg.device)
    db, qs = _codes(data, bits, cfg.n, cfg.q)
    dev = torch.device(cfg.device)
    if method == "kdkit":
        db_d, q_d = db.to(dev), qs.to(dev)
        dist, _ = _run(benchmark, lambda: hamming_topk(q_d, db_d, cfg.k), cfg.rounds, sync)
    elif method == "faiss":
        if cfg.device != "cpu":
            pytest.skip("faiss-cpu is not a GPU peer")
        faiss = pytest.importorskip("faiss")
        index = faiss.IndexBinaryFlat(bits)
        index.add(db.numpy())
        qn = qs.numpy()
        d, _ = _run(benchmark, lambda: index.search(qn, cfg.k), cfg.rounds, sync)
        dist = torch.from_numpy(d)
    else:
        dtype = torch.bfloat16 if cfg.device == "cuda" else torch.float32
        db_pm, q_pm = _unpack_pm1(db.to(dev), bits, dtype), _unpack_pm1(qs.to(dev), bits, dtype)
        chunk = _torch_chunk(cfg.device, cfg.q, cfg.n, db_pm.element_size())
        rounds = cfg.rounds if cfg.device == "cuda" or not cfg.full else 3
        d, _ = _run(benchmark, lambda: _torch_topk(q_pm, db_pm, bits, cfg.k, chunk), rounds,
                    sync, warmup=1 if cfg.device == "cuda" or not cfg.full else 0)
        dist = d.float()
    ref_dist, _ = _kdkit_reference(data, bits, cfg.n, cfg.q, cfg.k)
    assert torch.equal(dist.cpu().to(ref_dist.dtype), ref_dist), \
        f"{method} top-k distances differ from kdkit's"


def _plain(x):
    return ((x - torch.where(x >= 0, 1.0, -1.0)) ** 2).mean()


_compiled_plain = None


def _penalty_fn(method):
    global _compiled_plain
    if method == "kdkit":
        return lambda x: binarization_penalty(x, "mean")
    if method == "torch.compile":
        if _compiled_plain is None:
            _compiled_plain = torch.compile(_plain)
        return _compiled_plain
    return _plain


@pytest.mark.parametrize("method", ("kdkit", "torch.compile", "torch-eager"))
def test_binarization_penalty_fwd_bwd(benchmark, bench_config, sync, method):
    cfg = bench_config
    rows, cols = cfg.penalty_shape
    benchmark.group = f"binarization_penalty mean fwd+bwd {rows}x{cols} float32 ({cfg.device})"
    benchmark.extra_info.update(method=method, shape=[rows, cols], threads=cfg.threads,
                                device=cfg.device)
    gen = torch.Generator().manual_seed(7)
    h = torch.randn((rows, cols), generator=gen).to(cfg.device).requires_grad_(True)
    fn = _penalty_fn(method)

    def step():
        h.grad = None  # a fresh gradient each call, as users run it
        loss = fn(h)
        loss.backward()
        return loss.detach()

    # torch.compile: the first two calls compile the forward and backward graphs
    loss = _run(benchmark, step, cfg.rounds, sync, warmup=2 if method == "torch.compile" else 1)
    expected = _plain(h.detach().double())
    assert torch.allclose(loss.double(), expected, rtol=1e-4)
