"""kdkit.metrics against a hand-computed example and a straightforward reference (ties included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kdkit import metrics


def pack(bits: np.ndarray) -> np.ndarray:
    """+-1/bool (N, L) -> faiss layout uint8 (N, L/8), LSB first."""
    return np.packbits(np.asarray(bits) > 0, axis=1, bitorder="little")


def reference_ap(q, d, ql, dl, k=None, variant="truncated"):
    """One query at a time: Hamming distances, a stable sort by (distance, index), the textbook AP."""
    qb = np.unpackbits(q, axis=1, bitorder="little").astype(int)
    db = np.unpackbits(d, axis=1, bitorder="little").astype(int)
    if ql.ndim == 1:
        rel_all = ql[:, None] == dl[None, :]
    else:
        rel_all = (ql.astype(float) @ dl.astype(float).T) > 0
    n = len(db)
    aps = []
    for i in range(len(qb)):
        dist = (qb[i][None, :] != db).sum(1)
        order = sorted(range(n), key=lambda j: (dist[j], j))
        rel = rel_all[i][order]
        if k is None or variant == "dchmt":
            ranks = [r + 1 for r in range(n) if rel[r]]
            if k is not None:
                ranks = ranks[:k]
        else:
            ranks = [r + 1 for r in range(min(k, n)) if rel[r]]
        if not ranks:
            aps.append(0.0)
            continue
        aps.append(float(np.mean([(j + 1) / r for j, r in enumerate(ranks)])))
    return float(np.mean(aps))


def test_hand_computed_example():
    # 8-bit codes; query 0 is all zeros.  Database distances: [2, 1, 1, 0, 2] ->
    # ranking by (distance, index): 3, 1, 2, 0, 4.
    db_bits = np.zeros((5, 8), bool)
    db_bits[0, :2] = True
    db_bits[1, 0] = True
    db_bits[2, 7] = True
    db_bits[4, 3:5] = True
    q = pack(np.zeros((1, 8), bool))
    d = pack(db_bits)
    # relevant: items 0, 2 and 4 (share label 0); 1 and 3 carry label 1 only.
    ql = np.array([[1, 0]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [1, 0]])
    # ranking 3(n) 1(n) 2(r) 0(r) 4(r): relevant at ranks 3, 4, 5 -> AP = (1/3 + 2/4 + 3/5) / 3
    expected = (1 / 3 + 2 / 4 + 3 / 5) / 3
    assert metrics.mean_average_precision(q, d, ql, dl) == pytest.approx(expected)
    # top-3 truncated: only rank 3 -> 1/3 ; dchmt@2: first two relevant (ranks 3, 4) -> (1/3 + 2/4)/2
    assert metrics.mean_average_precision(q, d, ql, dl, k=3) == pytest.approx(1 / 3)
    assert metrics.mean_average_precision(q, d, ql, dl, k=2, variant="dchmt") == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert metrics.mean_average_precision(q, d, ql, dl, k=2) == pytest.approx(0.0)
    # class-index labels give the same relevance here
    assert metrics.mean_average_precision(q, d, np.array([0]), np.array([0, 1, 0, 1, 0])) == pytest.approx(expected)
    # precision@N and the PR curve
    assert metrics.precision_at_n(q, d, ql, dl, 3) == pytest.approx(1 / 3)
    assert metrics.precision_at_n(q, d, ql, dl, [1, 5]) == {1: 0.0, 5: pytest.approx(3 / 5)}
    pr = metrics.pr_curve(q, d, ql, dl)
    assert pr["precision"][:3] == [0.0, pytest.approx(1 / 3), pytest.approx(3 / 5)]
    assert pr["recall"][:3] == [0.0, pytest.approx(1 / 3), 1.0]


def test_ties_go_to_lower_index():
    # all database codes identical -> ranking is the index order
    q = pack(np.ones((1, 16), bool))
    d = pack(np.zeros((4, 16), bool))
    ql = np.array([[1]])
    assert metrics.mean_average_precision(q, d, ql, np.array([[0], [1], [0], [1]])) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics.mean_average_precision(q, d, ql, np.array([[1], [0], [1], [0]])) == pytest.approx((1 + 2 / 3) / 2)


def test_query_without_relevant_counts_as_zero():
    q = pack(np.zeros((2, 8), bool))
    d = pack(np.zeros((3, 8), bool))
    assert metrics.mean_average_precision(q, d, np.array([[1, 0], [0, 1]]), np.array([[1, 0]] * 3)) == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(
    nq=st.integers(1, 6), nd=st.integers(1, 40), nbytes=st.sampled_from([1, 2, 8]),
    nlab=st.integers(1, 4), k=st.one_of(st.none(), st.integers(1, 45)),
    variant=st.sampled_from(metrics.VARIANTS), clustered=st.booleans(), seed=st.integers(0, 2**31 - 1),
    one_d=st.booleans(),
)
def test_against_reference(nq, nd, nbytes, nlab, k, variant, clustered, seed, one_d):
    rng = np.random.default_rng(seed)
    if clustered:  # few distinct codes -> many exact ties
        centres = rng.integers(0, 256, (2, nbytes), dtype=np.uint8)
        q = centres[rng.integers(0, 2, nq)]
        d = centres[rng.integers(0, 2, nd)]
    else:
        q = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
        d = rng.integers(0, 256, (nd, nbytes), dtype=np.uint8)
    if one_d:
        ql, dl = rng.integers(0, nlab, nq), rng.integers(0, nlab, nd)
    else:
        ql, dl = rng.integers(0, 2, (nq, nlab)), rng.integers(0, 2, (nd, nlab))
    got = metrics.mean_average_precision(q, d, ql, dl, k=k, variant=variant)
    assert got == pytest.approx(reference_ap(q, d, ql, dl, k, variant), abs=1e-12)
    # torch inputs give the same answer
    got_t = metrics.mean_average_precision(torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(ql),
                                           torch.from_numpy(dl), k=k, variant=variant)
    assert got_t == got


def test_large_block_and_topk_paths_agree():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    d = rng.integers(0, 256, (900, 8), dtype=np.uint8)
    ql = rng.integers(0, 2, (300, 5))
    dl = rng.integers(0, 2, (900, 5))
    # k small -> top-k path; compare with the full-ranking path through dchmt's equivalent when R >= k
    fast = metrics.average_precisions(q, d, ql, dl, k=50)
    full = metrics.average_precisions(q, d, ql, dl, k=899)  # full-ranking path
    assert fast.shape == full.shape == (300,)
    ref = reference_ap(q[:20], d, ql[:20], dl, 50)
    assert np.mean(fast[:20]) == pytest.approx(ref)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = metrics.average_precisions(q, d, ql, dl)
        torch.set_num_threads(2)
        two = metrics.average_precisions(q, d, ql, dl)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, two)


def test_class_index_labels_with_large_ids_match_multi_hot():
    rng = np.random.default_rng(4)
    q = rng.integers(0, 256, (30, 4), dtype=np.uint8)
    d = rng.integers(0, 256, (200, 4), dtype=np.uint8)
    ids = np.array([7, 10**9, 123456, 3, 99])  # sparse, large class ids: packed densely
    qc, dc = ids[rng.integers(0, 5, 30)], ids[rng.integers(0, 5, 200)]
    onehot = lambda c: (c[:, None] == ids[None, :]).astype(np.int64)  # noqa: E731
    assert metrics.average_precisions(q, d, qc, dc).tolist() == metrics.average_precisions(
        q, d, onehot(qc), onehot(dc)).tolist()
    assert metrics.mean_average_precision(q, d, qc, dc) == pytest.approx(reference_ap(q, d, qc, dc), abs=1e-12)


def test_cross_modal_helpers():
    rng = np.random.default_rng(1)
    qi, qt = rng.integers(0, 256, (2, 10, 2), dtype=np.uint8)
    di, dt = rng.integers(0, 256, (2, 30, 2), dtype=np.uint8)
    ql, dl = rng.integers(0, 2, (10, 3)), rng.integers(0, 2, (30, 3))
    both = metrics.cross_modal_map(qi, qt, di, dt, ql, dl)
    assert both["i2t"] == pytest.approx(reference_ap(qi, dt, ql, dl))
    assert both["t2i"] == pytest.approx(reference_ap(qt, di, ql, dl))
    full = metrics.cross_modal_metrics(qi, qt, di, dt, ql, dl, precision_ns=[5, 10], with_pr=True)
    assert set(full["i2t"]["precision"]) == {5, 10}
    assert len(full["t2i"]["pr"]["recall"]) == 17


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.float32), np.zeros((2, 1), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 1))), "query_codes"),
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.uint8), np.zeros((2, 2), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 1))), "code widths"),
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.uint8), np.zeros((3, 1), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 1))), "db_labels"),
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.uint8), np.zeros((2, 1), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 2))), "label columns"),
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.uint8), np.zeros((2, 1), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 1)), k=0), "k must be positive"),
    (lambda: metrics.mean_average_precision(np.zeros((2, 1), np.uint8), np.zeros((2, 1), np.uint8),
                                            np.ones((2, 1)), np.ones((2, 1)), variant="x"), "variant"),
    (lambda: metrics.mean_average_precision(np.zeros((0, 1), np.uint8), np.zeros((2, 1), np.uint8),
                                            np.ones((0, 1)), np.ones((2, 1))), "query_codes is empty"),
    (lambda: metrics.precision_at_n(np.zeros((2, 1), np.uint8), np.zeros((2, 1), np.uint8),
                                    np.ones((2, 1)), np.ones((2, 1)), []), "n must be"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_numpy_fallback_without_extension_gives_the_same_numbers(tmp_path):
    """With kdkit._C blocked, every k/variant goes through the NumPy path; it must agree."""
    import json
    import subprocess
    import sys
    import textwrap

    rng = np.random.default_rng(7)
    centres = rng.integers(0, 256, (4, 2), dtype=np.uint8)  # few codes -> many ties
    q, d = centres[rng.integers(0, 4, 40)], centres[rng.integers(0, 4, 300)]
    ql, dl = rng.integers(0, 2, (40, 70)), rng.integers(0, 2, (300, 70))
    np.savez(tmp_path / "case.npz", q=q, d=d, ql=ql, dl=dl)
    cases = [(None, "truncated"), (20, "truncated"), (20, "dchmt"), (299, "dchmt")]
    code = textwrap.dedent(f"""
        import importlib.abc, json, sys, warnings
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "kdkit._C":
                    raise ImportError("blocked by test")
        sys.meta_path.insert(0, _Block())
        warnings.simplefilter("ignore")
        import numpy as np
        from kdkit import metrics, ops
        z = np.load({str(tmp_path / "case.npz")!r})
        assert not ops.extension_info()["loaded"]
        print(json.dumps([metrics.average_precisions(z["q"], z["d"], z["ql"], z["dl"], k, v).tolist()
                          for k, v in {cases!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fallback = json.loads(out.stdout.strip().splitlines()[-1])
    for (k, variant), got in zip(cases, fallback):
        np.testing.assert_allclose(got, metrics.average_precisions(q, d, ql, dl, k, variant), rtol=0, atol=1e-12)
