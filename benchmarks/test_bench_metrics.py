"""mAP@all: kdkit.metrics vs the DCHMT-family torch evaluator, in the same run.

Workload (MIRFLICKR-25K, DCHMT split): 2,000 queries x 18,015 database codes, 64 bits, 24 labels.
The peer is DCHMT's ``calc_map_k_matrix`` (full float distance matrix, ``torch.sort`` of every row,
a per-query Python loop), copied below with its ``tsum == 0`` guard (without it a query with no
relevant item makes the original return NaN).  Target: kdkit >= 20x faster.

    pytest benchmarks/test_bench_metrics.py --benchmark-group-by=group -s

The test prints the ratio and asserts that both evaluators agree (to float32 rounding; they
differ only where the evaluator's unstable sort orders ties differently).
"""
from __future__ import annotations


import pytest
import torch

from kdkit import metrics

Q, N, BITS, C = 2000, 18015, 64, 24
_RESULTS: dict = {}


def _data():
    g = torch.Generator().manual_seed(0)
    # clustered codes (class-correlated, like trained hash codes) -> realistic ties
    centres = torch.randint(0, 2, (C, BITS), generator=g).float() * 2 - 1

    def make(n):
        lab = (torch.rand(n, C, generator=g) < 0.12).float()
        lab[lab.sum(1) == 0, torch.randint(0, C, (1,), generator=g)] = 1
        h = lab @ centres + 0.8 * torch.randn(n, BITS, generator=g)
        return torch.where(h >= 0, 1.0, -1.0), lab

    qB, qL = make(Q)
    rB, rL = make(N)
    return qB, rB, qL, rL


def calc_hamming_dist(B1, B2):
    q = B2.shape[1]
    if len(B1.shape) < 2:
        B1 = B1.unsqueeze(0)
    return 0.5 * (q - B1.mm(B2.transpose(0, 1)))


def calc_map_k_matrix(qB, rB, query_L, retrieval_L, k=None):
    """DCHMT (kalenforn/DCHMT utils/calc_utils.py), with the tsum == 0 guard."""
    num_query = query_L.shape[0]
    map_ = 0
    if k is None:
        k = retrieval_L.shape[0]
    gnds = (query_L.mm(retrieval_L.transpose(0, 1)) > 0).squeeze().type(torch.float32)
    tsums = torch.sum(gnds, dim=-1, keepdim=True, dtype=torch.int32)
    hamms = calc_hamming_dist(qB, rB)
    _, ind = torch.sort(hamms, dim=-1)
    totals = torch.min(tsums, torch.tensor([k], dtype=torch.int32).expand_as(tsums))
    for it in range(num_query):
        if tsums[it] == 0:
            continue
        gnd = gnds[it][ind[it]]
        total = totals[it].squeeze()
        count = torch.arange(1, total + 1).type(torch.float32)
        tindex = torch.nonzero(gnd)[:total].squeeze().type(torch.float32) + 1.0
        map_ = map_ + torch.mean(count / tindex)
    return float(map_ / num_query)


@pytest.fixture(scope="module")
def data():
    from kdkit import ops

    qB, rB, qL, rL = _data()
    return {"float": (qB, rB, qL, rL), "packed": (ops.pack_bits(qB), ops.pack_bits(rB), qL, rL)}


def _info():
    from kdkit import ops

    try:
        return ops.extension_info()
    except Exception:  # noqa: BLE001
        return {}


@pytest.mark.parametrize("method", ["dchmt_torch", "kdkit"])
def test_map_all(benchmark, data, method):
    benchmark.group = f"mAP@all {Q} queries x {N} codes, {BITS} bits"
    if method == "kdkit":
        q, d, ql, dl = data["packed"]
        fn = lambda: metrics.mean_average_precision(q, d, ql, dl)  # noqa: E731
        rounds = 5
    else:
        fn = lambda: calc_map_k_matrix(*data["float"])  # noqa: E731
        rounds = 2
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    _RESULTS[method] = (benchmark.stats.stats.min, result)
    benchmark.extra_info.update(method=method, map=result, threads=torch.get_num_threads(), extension=_info())
    if len(_RESULTS) == 2:
        t_ref, m_ref = _RESULTS["dchmt_torch"]
        t_kd, m_kd = _RESULTS["kdkit"]
        ratio = t_ref / t_kd
        print(f"\nmAP@all {Q}x{N} {BITS}-bit: DCHMT torch {t_ref * 1e3:.0f} ms (mAP {m_ref:.6f}), "
              f"kdkit {t_kd * 1e3:.0f} ms (mAP {m_kd:.6f}) -> {ratio:.1f}x; extension: {_info()}")
        benchmark.extra_info["ratio_vs_dchmt"] = ratio
        assert abs(m_ref - m_kd) < 5e-3  # unstable vs (distance, index) tie order
