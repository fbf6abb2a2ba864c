"""CUDA kernels of kdkit._C: parity with the CPU ops, tie order, errors, opcheck, gradients.

Skipped (cleanly, without loading the extension) when no GPU is visible, and skipped when
the extension was built without CUDA kernels.
"""
from __future__ import annotations

import pytest
import torch

import kdkit.ops as ops


def _cuda_kernels_compiled() -> bool:
    try:
        return bool(ops.extension_info()["cuda_compiled"])
    except Exception:  # noqa: BLE001 - extension absent or broken: nothing to test here
        return False


if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="no CUDA device available")
elif not _cuda_kernels_compiled():
    pytestmark = pytest.mark.skip(reason="kdkit._C was built without CUDA kernels")

CUDA = torch.device("cuda")
CHUNK = 4096  # database codes per CUDA block in hamming_cuda.cu: exercise both sides of it


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_codes(n: int, nbytes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=_gen(seed))


def _clustered_codes(n: int, nbytes: int, seed: int, centres: int = 5, flip: float = 0.05):
    g = _gen(seed)
    bits = nbytes * 8
    c = torch.rand((centres, bits), generator=g) < 0.5
    labels = torch.randint(0, centres, (n,), generator=g)
    flips = torch.rand((n, bits), generator=g) < flip
    return ops.pack_bits(c[labels] ^ flips)


def _codes(kind: str, n: int, nbytes: int, seed: int) -> torch.Tensor:
    if kind == "random":
        return _random_codes(n, nbytes, seed)
    if kind == "clustered":
        return _clustered_codes(n, nbytes, seed)
    if kind == "equal":  # every code identical: all distances tie
        return _random_codes(1, nbytes, 99).expand(n, nbytes).contiguous()
    if kind == "two":  # two distinct codes: two distance values, huge tie groups
        base = _random_codes(2, nbytes, 98)
        return base[torch.randint(0, 2, (n,), generator=_gen(seed))]
    raise AssertionError(kind)


def _topk_both(q: torch.Tensor, db: torch.Tensor, k: int):
    cpu = ops.hamming_topk(q, db, k)
    gpu = ops.hamming_topk(q.to(CUDA), db.to(CUDA), k)
    return cpu, gpu


def _assert_topk_equal(cpu, gpu):
    (cd, ci), (gd, gi) = cpu, gpu
    assert gd.device.type == "cuda" and gi.device.type == "cuda"
    assert gd.dtype == torch.int32 and gi.dtype == torch.int64
    assert gd.shape == cd.shape and gi.shape == ci.shape
    torch.testing.assert_close(gd.cpu(), cd, rtol=0, atol=0)
    torch.testing.assert_close(gi.cpu(), ci, rtol=0, atol=0)


# ------------------------------------------------------------------ hamming_distance

@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 40, 64, 128, 130])
def test_hamming_distance_matches_cpu(nbytes):
    q = _random_codes(37, nbytes, 1)
    db = _random_codes(CHUNK + 123, nbytes, 2)
    expected = ops.hamming_distance(q, db)
    got = ops.hamming_distance(q.to(CUDA), db.to(CUDA))
    assert got.dtype == torch.int32 and got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("nbytes", [1, 4, 8, 16])
def test_hamming_distance_unaligned_and_strided(nbytes):
    # Row slices shift the data pointer by nbytes (8-, 4- and 1-byte aligned word paths);
    # column slices and transposes are non-contiguous.
    big_q = _random_codes(41, nbytes + 3, 3).to(CUDA)
    big_db = _random_codes(2 * CHUNK + 9, nbytes + 3, 4).to(CUDA)
    for q, db in [
        (big_q[1:, :nbytes], big_db[1:, :nbytes]),
        (big_q[:, 3:], big_db[:, 3:]),
        (big_q[1:, 1:1 + nbytes], big_db[3:, 2:2 + nbytes]),
        (big_q[:, :nbytes].t().contiguous().t(), big_db[:, :nbytes].t().contiguous().t()),
    ]:
        expected = ops.hamming_distance(q.cpu(), db.cpu())
        torch.testing.assert_close(ops.hamming_distance(q, db).cpu(), expected, rtol=0, atol=0)


def test_hamming_distance_many_queries():
    q = _random_codes(70_000, 8, 5)  # more query rows than one grid dimension holds
    db = _random_codes(33, 8, 6)
    torch.testing.assert_close(ops.hamming_distance(q.to(CUDA), db.to(CUDA)).cpu(),
                               ops.hamming_distance(q, db), rtol=0, atol=0)


# ------------------------------------------------------------------ hamming_topk

@pytest.mark.parametrize("kind", ["random", "clustered", "equal", "two"])
@pytest.mark.parametrize("nbytes", [1, 3, 8, 16, 128])
@pytest.mark.parametrize("n,k", [(1, 1), (100, 7), (CHUNK, 100), (CHUNK + 1, CHUNK + 1),
                                 (3 * CHUNK + 17, 1), (3 * CHUNK + 17, 5000)])
def test_hamming_topk_matches_cpu(kind, nbytes, n, k):
    db = _codes(kind, n, nbytes, 10)
    q = _codes(kind, 13, nbytes, 11)
    _assert_topk_equal(*_topk_both(q, db, k))


def test_hamming_topk_all_equal_ties_take_lowest_indices():
    n, k = 5 * CHUNK + 3, 3 * CHUNK - 5  # tie groups spanning several blocks
    db = _codes("equal", n, 16, 0)
    q = torch.cat([db[:1], _random_codes(2, 16, 12)])
    d, i = ops.hamming_topk(q.to(CUDA), db.to(CUDA), k)
    torch.testing.assert_close(i.cpu(), torch.arange(k).expand(3, k), rtol=0, atol=0)
    assert bool((d[0] == 0).all())
    assert bool((d == d[:, :1]).all())
    _assert_topk_equal(ops.hamming_topk(q, db, k), (d, i))


def test_hamming_topk_k_equals_n_is_a_full_sort():
    db = _codes("clustered", 2 * CHUNK + 5, 8, 13)
    q = _codes("clustered", 4, 8, 14)
    (cd, ci), (gd, gi) = _topk_both(q, db, db.shape[0])
    _assert_topk_equal((cd, ci), (gd, gi))
    full = ops.hamming_distance(q, db).to(torch.int64) * db.shape[0] + torch.arange(db.shape[0])
    torch.testing.assert_close(gi.cpu(), full.sort(dim=1).values % db.shape[0], rtol=0, atol=0)


def test_hamming_topk_wide_codes_global_histogram():
    # 1600 bytes -> 12,801 histogram bins: more than the shared-memory histogram holds.
    db = _codes("clustered", 3000, 1600, 15)
    q = _codes("clustered", 5, 1600, 16)
    _assert_topk_equal(*_topk_both(q, db, 50))


def test_hamming_topk_unaligned_and_strided():
    big_db = _codes("two", 2 * CHUNK + 50, 12, 17).to(CUDA)
    big_q = _codes("two", 9, 12, 18).to(CUDA)
    for q, db in [(big_q[1:, :8], big_db[1:, :8]), (big_q[:, 4:], big_db[:, 4:]),
                  (big_q[2:, 1:5], big_db[5:, 3:7]), (big_q.t().contiguous().t(), big_db)]:
        _assert_topk_equal(ops.hamming_topk(q.cpu(), db.cpu(), 300), ops.hamming_topk(q, db, 300))


def test_hamming_topk_many_queries():
    q = _codes("two", 70_000, 8, 19)
    db = _codes("two", 257, 8, 20)
    _assert_topk_equal(*_topk_both(q, db, 33))


def test_hamming_topk_deterministic():
    db = _codes("two", 4 * CHUNK + 1, 8, 21).to(CUDA)
    q = _codes("two", 64, 8, 22).to(CUDA)
    first = ops.hamming_topk(q, db, 2000)
    for _ in range(3):
        again = ops.hamming_topk(q, db, 2000)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_hamming_topk_matches_faiss():
    faiss = pytest.importorskip("faiss")
    db = _codes("clustered", 20_000, 16, 23)
    q = _codes("clustered", 50, 16, 24)
    index = faiss.IndexBinaryFlat(128)
    index.add(db.numpy())
    fd, _ = index.search(q.numpy(), 64)
    gd, _ = ops.hamming_topk(q.to(CUDA), db.to(CUDA), 64)
    torch.testing.assert_close(gd.cpu(), torch.from_numpy(fd).to(torch.int32), rtol=0, atol=0)


def test_raw_ops_zero_queries_like_cpu():
    db = _random_codes(10, 8, 25)
    q = db[:0]
    for dev in ("cpu", "cuda"):
        d = torch.ops.kdkit.hamming_distance(q.to(dev), db.to(dev))
        assert d.shape == (0, 10) and d.dtype == torch.int32
        td, ti = torch.ops.kdkit.hamming_topk(q.to(dev), db.to(dev), 3)
        assert td.shape == (0, 3) and ti.shape == (0, 3)


# ------------------------------------------------------------------ hamming_average_precision

def _labels(n: int, ncls: int, p: float, seed: int) -> torch.Tensor:
    return ops.pack_labels(torch.rand((n, ncls), generator=_gen(seed)) < p)


def _ap_both(q, db, ql, dl, k, variant):
    cpu = ops.hamming_average_precision(q, db, ql, dl, k, variant)
    gpu = ops.hamming_average_precision(q.to(CUDA), db.to(CUDA), ql.to(CUDA), dl.to(CUDA), k, variant)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    # Same kept items and terms; only the order of the double sum differs.
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-15)
    return gpu


@pytest.mark.parametrize("variant", ["truncated", "dchmt"])
@pytest.mark.parametrize("kind", ["random", "clustered", "two"])
@pytest.mark.parametrize("nbytes,ncls", [(1, 3), (8, 10), (16, 80), (12, 130), (64, 21)])
def test_average_precision_matches_cpu(kind, nbytes, ncls, variant):
    n = 3 * 1024 + 37  # segments of unequal length, tie groups across segments
    db, q = _codes(kind, n, nbytes, 40), _codes(kind, 19, nbytes, 41)
    dl, ql = _labels(n, ncls, 0.15, 42), _labels(19, ncls, 0.15, 43)
    ql[3] = 0  # a query without labels: AP 0
    for k in (1, 2, 50, 1000, n - 1, None):
        _ap_both(q, db, ql, dl, k, variant)


def test_average_precision_small_databases_and_every_k():
    for n in (1, 2, 7, 31, 33, 257):
        db, q = _codes("two", n, 8, 44 + n), _codes("two", 5, 8, 45 + n)
        dl, ql = _labels(n, 4, 0.4, 46), _labels(5, 4, 0.4, 47)
        for k in range(1, n + 1, max(1, n // 9)):
            for variant in ("truncated", "dchmt"):
                _ap_both(q, db, ql, dl, k, variant)


def test_average_precision_wide_codes_count_in_global_memory():
    # 1024 bytes -> 8,193 distance bins: the counts do not fit in shared memory.
    db, q = _codes("clustered", 2000, 1024, 48), _codes("clustered", 6, 1024, 49)
    dl, ql = _labels(2000, 5, 0.3, 50), _labels(6, 5, 0.3, 51)
    for k in (10, None):
        _ap_both(q, db, ql, dl, k, "truncated")


def test_average_precision_unaligned_strided_many_queries_deterministic():
    big_db, big_q = _codes("two", 5000, 12, 52), _codes("two", 3000, 12, 53)
    dl, ql = _labels(5000, 7, 0.2, 54), _labels(3000, 7, 0.2, 55)
    for q, db in [(big_q[:, 4:], big_db[:, 4:]), (big_q[:, 1:6], big_db[:, 3:8]), (big_q, big_db)]:
        first = _ap_both(q, db, ql, dl, 100, "dchmt")
        again = ops.hamming_average_precision(q.to(CUDA), db.to(CUDA), ql.to(CUDA), dl.to(CUDA), 100, "dchmt")
        assert torch.equal(first, again)


def test_average_precision_hand_computed_on_cuda():
    # Ranking (distance, index): item 1 (d=0, rel), item 0 (d=1, -), item 2 (d=1, rel): AP = (1/1 + 2/3) / 2
    db = torch.tensor([[0b1], [0b0], [0b1000]], dtype=torch.uint8, device=CUDA)
    q = torch.tensor([[0b0]], dtype=torch.uint8, device=CUDA)
    dl = ops.pack_labels(torch.tensor([[0, 1], [1, 0], [1, 1]], device=CUDA))
    ql = ops.pack_labels(torch.tensor([[1, 0]], device=CUDA))
    ap = ops.hamming_average_precision(q, db, ql, dl)
    assert ap.item() == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)


def test_average_precision_opcheck_and_raw_checks_cuda():
    q, db = _codes("two", 6, 8, 56).to(CUDA), _codes("two", 300, 8, 57).to(CUDA)
    ql, dl = _labels(6, 9, 0.3, 58).to(CUDA), _labels(300, 9, 0.3, 59).to(CUDA)
    kd = torch.ops.kdkit
    for k, variant in ((300, "truncated"), (17, "truncated"), (17, "dchmt")):
        torch.library.opcheck(kd.hamming_average_precision.default, (q, db, ql, dl, k, variant))
    for fn, match in [(lambda: kd.hamming_average_precision(q, db, ql, dl, 0, "truncated"), "k"),
                      (lambda: kd.hamming_average_precision(q, db, ql, dl, 301, "dchmt"), "k"),
                      (lambda: kd.hamming_average_precision(q, db, ql, dl, 5, "other"), "variant"),
                      (lambda: kd.hamming_average_precision(q, db, ql.cpu(), dl, 5, "dchmt"), "device"),
                      (lambda: kd.hamming_average_precision(q, db, ql[:, :0], dl[:, :0], 5, "dchmt"), "words"),
                      (lambda: kd.hamming_average_precision(q, db, ql[:2], dl, 5, "dchmt"), "rows")]:
        with pytest.raises(RuntimeError, match=match):
            fn()
    empty = kd.hamming_average_precision(q[:0], db, ql[:0], dl, 5, "truncated")
    assert empty.shape == (0,) and empty.device.type == "cuda"
    torch.cuda.synchronize()


# ------------------------------------------------------------------ bad input

def test_public_api_errors_on_cuda():
    q = _random_codes(4, 8, 26).to(CUDA)
    db = _random_codes(50, 8, 27).to(CUDA)
    with pytest.raises(ValueError, match="k"):
        ops.hamming_topk(q, db, 0)
    with pytest.raises(ValueError, match="k"):
        ops.hamming_topk(q, db, 51)
    with pytest.raises(ValueError, match="db_codes"):
        ops.hamming_topk(q, db.cpu(), 5)
    with pytest.raises(ValueError, match="width"):
        ops.hamming_distance(q, db[:, :4])
    with pytest.raises(TypeError, match="query_codes"):
        ops.hamming_distance(q.int(), db)
    with pytest.raises(TypeError, match="float64"):
        ops.binarization_penalty(torch.zeros(3, device=CUDA, dtype=torch.float64))


def test_raw_op_checks_on_cuda():
    # The C++ checks, behind the Python ones: RuntimeError naming the argument, no crash.
    q = _random_codes(4, 8, 28).to(CUDA)
    db = _random_codes(50, 8, 29).to(CUDA)
    kd = torch.ops.kdkit
    cases = [
        (lambda: kd.hamming_topk(q, db, 0), "k"),
        (lambda: kd.hamming_topk(q, db, 51), "k"),
        (lambda: kd.hamming_topk(q, db.cpu(), 5), "same device"),
        (lambda: kd.hamming_distance(q.cpu(), db), "same device"),
        (lambda: kd.hamming_distance(q, db[:, :4]), "widths"),
        (lambda: kd.hamming_distance(q.int(), db), "query_codes"),
        (lambda: kd.hamming_distance(q, db[0]), "db_codes"),
        (lambda: kd.hamming_topk(q, db[:0], 1), "db_codes"),
        (lambda: kd.hamming_distance(q[:, :0], db[:, :0]), "byte"),
        (lambda: kd.binarization_penalty(torch.zeros(3, device=CUDA), 3), "reduction"),
        (lambda: kd.binarization_penalty(torch.zeros(3, device=CUDA, dtype=torch.int32), 1), "h"),
        (lambda: kd.binarization_penalty_backward(torch.ones(2, device=CUDA),
                                                  torch.ones(3, device=CUDA), 0), "grad_output"),
        (lambda: kd.binarization_penalty_backward(torch.ones(2, device=CUDA),
                                                  torch.ones(3, device=CUDA), 1), "grad_output"),
        (lambda: kd.binarization_penalty_backward(torch.ones((), device=CUDA),
                                                  torch.ones(3), 1), "device"),
    ]
    for fn, match in cases:
        with pytest.raises(RuntimeError, match=match):
            fn()
    torch.cuda.synchronize()  # no asynchronous error left behind


# ------------------------------------------------------------------ binarization_penalty

PENALTY_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (loss, gradient) tolerances against the CPU float32 result rounded to the dtype
TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 1e-3), torch.bfloat16: (1e-2, 8e-3)}


def _penalty_input(shape, dtype, seed):
    h = torch.randn(shape, generator=_gen(seed)) * 1.5
    flat = h.view(-1)
    flat[: min(8, flat.numel())] = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0])[
        : min(8, flat.numel())]
    return h.to(dtype)


@pytest.mark.parametrize("dtype", PENALTY_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3, 5), (1000, 77), ((1 << 20) + 3,)], ids=str)
def test_binarization_penalty_matches_cpu(dtype, reduction, shape):
    h = _penalty_input(shape, dtype, 30)
    # CPU kernels take float32: compute there on the same (already rounded) values
    h_cpu = h.float().clone().requires_grad_(True)  # clone: h itself stays a plain tensor
    h_gpu = h.to(CUDA).requires_grad_(True)
    loss_cpu = ops.binarization_penalty(h_cpu, reduction)
    loss_gpu = ops.binarization_penalty(h_gpu, reduction)
    assert loss_gpu.dtype == dtype and loss_gpu.shape == loss_cpu.shape
    gout = None
    if reduction == "none":
        gout = torch.randn(shape, generator=_gen(31))
        loss_cpu.backward(gout.to(dtype).float())
        loss_gpu.backward(gout.to(dtype).to(CUDA))
    else:
        (loss_cpu * 3).backward()
        (loss_gpu * 3).backward()
    rtol_loss, rtol_grad = TOL[dtype]
    torch.testing.assert_close(loss_gpu.float().cpu(), loss_cpu.detach().to(dtype).float(),
                               rtol=rtol_loss, atol=1e-6 if reduction == "none" else 0)
    assert h_gpu.grad.dtype == dtype and h_gpu.grad.shape == h.shape
    expected_grad = h_cpu.grad.to(dtype).float()
    # half: mean gradients can be subnormal, where one rounding step is 2**-24 absolute
    floor = 2.0 ** -22 if dtype == torch.float16 else 1e-30
    torch.testing.assert_close(h_gpu.grad.float().cpu(), expected_grad, rtol=rtol_grad,
                               atol=float(expected_grad.abs().max()) * rtol_grad + floor)


def test_binarization_penalty_sign_of_zero_and_nonfinite():
    h = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("nan")], device=CUDA)
    loss, grad = torch.ops.kdkit.binarization_penalty(h, 0)
    expected_loss, expected_grad = torch.ops.kdkit.binarization_penalty(h.cpu(), 0)
    torch.testing.assert_close(loss.cpu(), expected_loss, equal_nan=True)
    torch.testing.assert_close(grad.cpu(), expected_grad, equal_nan=True)
    assert loss[0].item() == 1.0 and grad[0].item() == -2.0  # sgn(0) = +1


def test_binarization_penalty_non_contiguous():
    base = _penalty_input((300, 200), torch.float32, 32).to(CUDA)
    for h in (base.t(), base[::2, 1::3]):
        h = h.detach().requires_grad_(True)
        ops.binarization_penalty(h, "sum").backward()
        ref = h.detach().cpu().requires_grad_(True)
        ops.binarization_penalty(ref, "sum").backward()
        torch.testing.assert_close(h.grad.cpu(), ref.grad)


def test_binarization_penalty_raw_op_empty_like_cpu():
    for red, check in [(0, lambda t: t.shape == (0, 4)), (1, lambda t: bool(t.isnan())),
                       (2, lambda t: t.item() == 0.0)]:
        loss, grad = torch.ops.kdkit.binarization_penalty(torch.empty(0, 4, device=CUDA), red)
        assert check(loss) and grad.shape == (0, 4)


def test_binarization_penalty_deterministic():
    h = torch.randn(3_000_001, generator=_gen(33)).to(CUDA)
    first = torch.ops.kdkit.binarization_penalty(h, 2)[0]
    for _ in range(3):
        assert torch.equal(torch.ops.kdkit.binarization_penalty(h, 2)[0], first)


def test_binarization_penalty_backward_scalar_grad_stays_on_device():
    gf = torch.randn(1000, device=CUDA)
    go = torch.tensor(2.5, device=CUDA)
    out = torch.ops.kdkit.binarization_penalty_backward(go, gf, 1)
    torch.testing.assert_close(out, gf * 2.5)
    go_half = torch.tensor(0.5, device=CUDA, dtype=torch.float16)
    out = torch.ops.kdkit.binarization_penalty_backward(go_half, gf, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gf * 0.5)
    # reduction none with a broadcast (stride-0) grad_output, as sum().backward() produces
    g = torch.ones((), device=CUDA).expand(1000)
    torch.testing.assert_close(torch.ops.kdkit.binarization_penalty_backward(g, gf, 0), gf)


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_binarization_penalty_gradcheck_float64(reduction):
    h = (torch.randn(40, generator=_gen(34), dtype=torch.float64) * 2).to(CUDA)
    h = h[h.abs() > 1e-3].requires_grad_(True)  # keep away from the kink at 0

    def f(x):
        return torch.ops.kdkit.binarization_penalty(x, reduction)[0]

    assert torch.autograd.gradcheck(f, (h,))


# ------------------------------------------------------------------ opcheck / compile

def test_opcheck_hamming_ops_cuda():
    q = _codes("two", 6, 8, 35).to(CUDA)
    db = _codes("two", 300, 8, 36).to(CUDA)
    torch.library.opcheck(torch.ops.kdkit.hamming_distance.default, (q, db))
    torch.library.opcheck(torch.ops.kdkit.hamming_topk.default, (q, db, 17))
    torch.library.opcheck(torch.ops.kdkit.hamming_topk.default, (q[:, 3:], db[:, 3:], 300))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck_penalty_cuda(dtype, reduction):
    h = torch.randn(7, 9, generator=_gen(37)).to(device=CUDA, dtype=dtype).requires_grad_(True)
    torch.library.opcheck(torch.ops.kdkit.binarization_penalty.default, (h, reduction))
    gf = torch.randn(7, 9, device=CUDA, dtype=dtype)
    go = torch.randn(7, 9, device=CUDA, dtype=dtype) if reduction == 0 else \
        torch.randn((), device=CUDA, dtype=dtype)
    torch.library.opcheck(torch.ops.kdkit.binarization_penalty_backward.default,
                          (go, gf, reduction))


def test_torch_compile_fullgraph_cuda():
    db = _codes("two", 500, 8, 38).to(CUDA)
    q = _codes("two", 7, 8, 39).to(CUDA)
    h = torch.randn(64, 32, device=CUDA, requires_grad=True)

    @torch.compile(fullgraph=True)
    def f(q, db, h):
        d, i = ops.hamming_topk(q, db, 10)
        return d, i, ops.binarization_penalty(h, "mean")

    d, i, loss = f(q, db, h)
    loss.backward()
    ed, ei = ops.hamming_topk(q, db, 10)
    assert torch.equal(d, ed) and torch.equal(i, ei)
    ref = h.detach().requires_grad_(True)
    ops.binarization_penalty(ref, "mean").backward()
    torch.testing.assert_close(h.grad, ref.grad)
