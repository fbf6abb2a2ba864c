"""CPU Hamming ops: packing layout, kernels vs the pure-torch reference and faiss, every ISA
path, every selection path (query-parallel, database-split + merge, full counting select),
ties, non-contiguous inputs, bad inputs, opcheck and torch.compile."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import kdkit.ops as ops
from kdkit.ops import _extension, reference

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

needs_ext = pytest.mark.skipif(
    not ops.extension_info()["loaded"], reason="kdkit._C not built (fallback tested elsewhere)"
)


def _codes(rng: np.random.Generator, n: int, nbytes: int, mode: str = "random") -> torch.Tensor:
    if mode == "random":
        a = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    elif mode == "lowentropy":  # few distinct bits set -> many exact distance ties
        a = (rng.random((n, nbytes)) < 0.1).astype(np.uint8) * rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        a &= 0x03
    elif mode == "equal":
        a = np.repeat(rng.integers(0, 256, (1, nbytes), dtype=np.uint8), n, axis=0)
    else:
        raise ValueError(mode)
    return torch.from_numpy(np.ascontiguousarray(a))


def _numpy_topk(q: torch.Tensor, db: torch.Tensor, k: int):
    """Independent oracle: numpy unpackbits + lexsort by (distance, index)."""
    qb = np.unpackbits(q.numpy(), axis=1)
    dbb = np.unpackbits(db.numpy(), axis=1)
    d = (qb[:, None, :] != dbb[None, :, :]).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1).astype(np.int32), order.astype(np.int64)


# ----------------------------------------------------------------------------- packing


@given(n=st.integers(0, 9), nbytes=st.integers(1, 16), seed=st.integers(0, 2**32 - 1),
       as_bool=st.booleans())
@HYP
def test_pack_bits_matches_numpy_little_endian(n, nbytes, seed, as_bool):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, nbytes * 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0  # sgn(0) = +1 -> bit set
    t = torch.from_numpy(x >= 0) if as_bool else torch.from_numpy(x)
    got = ops.pack_bits(t)
    assert got.dtype == torch.uint8 and got.shape == (n, nbytes)
    np.testing.assert_array_equal(got.numpy(), np.packbits(x >= 0, axis=1, bitorder="little"))
    back = ops.unpack_bits(got, nbytes * 8)
    assert back.dtype == torch.float32
    np.testing.assert_array_equal(back.numpy(), np.where(x >= 0, 1.0, -1.0))


def test_pack_bits_is_faiss_layout():
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    expect = np.zeros((5, 8), dtype=np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(x), faiss.swig_ptr(expect), 64, 5)
    np.testing.assert_array_equal(ops.pack_bits(torch.from_numpy(x)).numpy(), expect)


def test_pack_bits_errors_name_x():
    with pytest.raises(ValueError, match=r"pack_bits: x .*multiple of 8"):
        ops.pack_bits(torch.randn(3, 12))
    with pytest.raises(ValueError, match="pack_bits: x must be 2-D"):
        ops.pack_bits(torch.randn(12))
    with pytest.raises(TypeError, match="pack_bits: x must be a torch.Tensor"):
        ops.pack_bits(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="unpack_bits: L=17"):
        ops.unpack_bits(torch.zeros(2, 2, dtype=torch.uint8), 17)


# ----------------------------------------------------------------------------- kernels


@needs_ext
@given(q=st.integers(1, 9), n=st.integers(1, 300), nbytes=st.integers(1, 128),
       seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["random", "lowentropy", "equal"]))
@HYP
def test_hamming_distance_matches_reference(q, n, nbytes, seed, mode):
    rng = np.random.default_rng(seed)
    qc, db = _codes(rng, q, nbytes, mode), _codes(rng, n, nbytes, mode)
    got = ops.hamming_distance(qc, db)
    assert got.dtype == torch.int32 and got.shape == (q, n)
    assert torch.equal(got, reference.hamming_distance(qc, db))


@needs_ext
@given(q=st.integers(1, 6), n=st.integers(1, 400), nbytes=st.sampled_from([1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 40, 64, 128]),
       kfrac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(["random", "lowentropy", "equal"]))
@HYP
def test_hamming_topk_matches_numpy_oracle(q, n, nbytes, kfrac, seed, mode):
    rng = np.random.default_rng(seed)
    qc, db = _codes(rng, q, nbytes, mode), _codes(rng, n, nbytes, mode)
    k = max(1, min(n, int(round(kfrac * n))))
    d, i = ops.hamming_topk(qc, db, k)
    assert d.dtype == torch.int32 and i.dtype == torch.int64 and d.shape == i.shape == (q, k)
    ed, ei = _numpy_topk(qc, db, k)
    np.testing.assert_array_equal(d.numpy(), ed)
    np.testing.assert_array_equal(i.numpy(), ei)


@needs_ext
@pytest.mark.parametrize("nbytes", [1, 4, 8, 16, 20, 32, 64, 128])
@pytest.mark.parametrize("mode", ["random", "lowentropy", "equal"])
def test_hamming_topk_vs_faiss(nbytes, mode):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(nbytes)
    n, k = 3000, 25
    qc, db = _codes(rng, 7, nbytes, mode), _codes(rng, n, nbytes, mode)
    fd, fi = faiss.knn_hamming(qc.numpy(), db.numpy(), k)
    d, i = ops.hamming_topk(qc, db, k)
    np.testing.assert_array_equal(d.numpy(), fd)
    # faiss's heap orders by (distance, id) as well; check indices give the same distances and
    # that our tie order is (distance, index) ascending.
    dist = reference.hamming_distance(qc, db)
    assert torch.equal(torch.gather(dist, 1, i), d)
    key = d.long() * n + i
    assert bool((key[:, 1:] > key[:, :-1]).all())
    if mode != "random":
        # with all-equal codes every distance ties: the answer must be 0..k-1
        if mode == "equal":
            assert torch.equal(i, torch.arange(k).expand(7, k))


def _all_paths_cases():
    # (Q, N, B, k): query-parallel (many queries), db-split + merge (few queries, large N),
    # full counting selection (k large relative to N), tails not multiple of 8/16/32.
    return [
        (64, 5000, 8, 10),
        (1, 70001, 8, 33),
        (3, 50003, 16, 100),
        (2, 40000, 4, 7),
        (1, 20011, 32, 5),
        (1, 9999, 64, 64),
        (5, 3001, 13, 2),
        (4, 1000, 8, 200),  # k * 8 > N -> full path
        (2, 777, 16, 777),  # k = N
    ]


@needs_ext
@pytest.mark.parametrize("case", _all_paths_cases())
@pytest.mark.parametrize("mode", ["random", "lowentropy"])
def test_isa_paths_and_thread_counts_agree(case, mode):
    q, n, b, k = case
    rng = np.random.default_rng(q * 7 + n)
    qc, db = _codes(rng, q, b, mode), _codes(rng, n, b, mode)
    expect = reference.hamming_topk(qc, db, k)
    expect_dist = reference.hamming_distance(qc, db)
    isas = _extension.available_cpu_isas()
    assert "scalar" in isas
    threads = torch.get_num_threads()
    try:
        for isa in isas:
            assert _extension.set_cpu_isa(isa) == ops.extension_info()["cpu_isa"]
            for nt in sorted({1, 2, threads}):
                torch.set_num_threads(nt)
                d, i = ops.hamming_topk(qc, db, k)
                assert torch.equal(d, expect[0]), (isa, nt)
                assert torch.equal(i, expect[1]), (isa, nt)
            assert torch.equal(ops.hamming_distance(qc, db), expect_dist), isa
    finally:
        torch.set_num_threads(threads)
        _extension.set_cpu_isa("auto")


@needs_ext
def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        _extension.set_cpu_isa("sse9")


@needs_ext
def test_noncontiguous_inputs():
    rng = np.random.default_rng(3)
    base_q, base_db = _codes(rng, 10, 32, "random"), _codes(rng, 500, 32, "random")
    q = base_q[::2, ::2]  # (5, 16) strided
    db = base_db.t().contiguous().t()[:, 8:24]  # column-major slice
    assert not q.is_contiguous() and not db.is_contiguous()
    qc, dbc = q.contiguous(), db.contiguous()
    assert torch.equal(ops.hamming_distance(q, db), reference.hamming_distance(qc, dbc))
    for a, b in zip(ops.hamming_topk(q, db, 9), reference.hamming_topk(qc, dbc, 9)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "fn, args, exc, pattern",
    [
        (ops.hamming_distance, (torch.zeros(2, 8), torch.zeros(3, 8, dtype=torch.uint8)), TypeError, "query_codes must be uint8"),
        (ops.hamming_distance, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.int32)), TypeError, "db_codes must be uint8"),
        (ops.hamming_distance, (torch.zeros(8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8)), ValueError, "query_codes must be 2-D"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.uint8), 1), ValueError, "code widths differ"),
        (ops.hamming_topk, (torch.zeros(0, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), 1), ValueError, "query_codes is empty"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(0, 8, dtype=torch.uint8), 1), ValueError, "db_codes is empty"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), 0), ValueError, r"k=0 out of range; expected 1 <= k <= 3"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), 4), ValueError, r"k=4 out of range"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), 1.5), TypeError, "k must be an int"),
        # bool is an int subclass: True must not silently mean k=1 (issue 12)
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), True), TypeError, "k must be an int, got bool"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8), torch.tensor(True)), TypeError, "k must be an int"),
        (ops.unpack_bits, (torch.zeros(2, 2, dtype=torch.uint8), True), TypeError, "unpack_bits: L must be an int, got bool"),
        (ops.pack_bits, (torch.tensor([[0.5] * 8, [1.0] * 7 + [float("nan")]]),), ValueError, r"pack_bits: x holds NaN \(first in row 1\)"),
        (ops.hamming_topk, (torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8, device="meta"), 1), ValueError, "query_codes is on cpu but db_codes is on meta"),
    ],
)
def test_bad_inputs_name_the_argument(fn, args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(*args)


def test_integer_scalars_still_work_as_k_and_l():
    q = torch.zeros(2, 8, dtype=torch.uint8)
    assert ops.hamming_topk(q, q, np.int64(2))[0].shape == (2, 2)
    assert ops.hamming_topk(q, q, torch.tensor(2))[0].shape == (2, 2)
    assert ops.unpack_bits(q, np.int32(5)).shape == (2, 5)


def test_pack_bits_nan_check_spares_infinities_and_ints():
    x = torch.tensor([[float("inf"), float("-inf")] * 4])
    assert ops.pack_bits(x).tolist() == [[0b01010101]]
    assert ops.pack_bits(torch.tensor([[-1, 0] * 4])).tolist() == [[0b10101010]]


@needs_ext
def test_cpp_checks_are_a_second_line_of_defence():
    q = torch.zeros(2, 8, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="k=0 out of range"):
        torch.ops.kdkit.hamming_topk(q, q, 0)
    with pytest.raises(RuntimeError, match="code widths differ"):
        torch.ops.kdkit.hamming_distance(q, torch.zeros(2, 4, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="query_codes must be uint8"):
        torch.ops.kdkit.hamming_distance(q.float(), q)


# ----------------------------------------------------------------------------- torch.library


@needs_ext
def test_opcheck_hamming_ops():
    rng = np.random.default_rng(5)
    q, db = _codes(rng, 3, 8, "random"), _codes(rng, 200, 8, "lowentropy")
    torch.library.opcheck(torch.ops.kdkit.hamming_distance.default, (q, db))
    torch.library.opcheck(torch.ops.kdkit.hamming_topk.default, (q, db, 5))
    torch.library.opcheck(torch.ops.kdkit.hamming_topk.default, (q[:, :3], db[:, :3], 200))


@needs_ext
def test_torch_compile_fullgraph_hamming():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def search(x, db_codes):
        codes = ops.pack_bits(x)
        d, i = ops.hamming_topk(codes, db_codes, 4)
        return d, i, ops.hamming_distance(codes, db_codes)

    rng = np.random.default_rng(6)
    db = _codes(rng, 300, 4, "random")
    x = torch.randn(5, 32)
    d, i, full = search(x, db)
    qc = ops.pack_bits(x)
    ed, ei = reference.hamming_topk(qc, db, 4)
    assert torch.equal(d, ed) and torch.equal(i, ei)
    assert torch.equal(full, reference.hamming_distance(qc, db))
