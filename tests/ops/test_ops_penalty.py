"""binarization_penalty on CPU: values and gradients vs the reference, gradcheck, opcheck,
torch.compile, the reused-buffer cache, retain_graph, determinism and bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kdkit.ops as ops
from kdkit.ops import _extension, reference

needs_ext = pytest.mark.skipif(
    not ops.extension_info()["loaded"], reason="kdkit._C not built (fallback tested elsewhere)"
)


def _h(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    h.view(-1)[:: max(1, h.numel() // 7)] = 0.0  # sgn(0) = +1
    return h.to(dtype)


def _loss_and_grad(fn, h, reduction, upstream=None):
    h = h.detach().requires_grad_(True)
    loss = fn(h, reduction)
    if upstream is None:
        upstream = torch.ones_like(loss)
    loss.backward(upstream)
    return loss.detach(), h.grad


@needs_ext
@given(numel=st.integers(1, 5000), dtype=st.sampled_from([torch.float32, torch.float64]),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 1000),
       weight=st.sampled_from([1.0, 0.5, -3.0]))
@settings(max_examples=40, deadline=None)
def test_penalty_matches_reference(numel, dtype, reduction, seed, weight):
    h = _h((numel,), dtype, seed)
    up = None if reduction == "none" else torch.tensor(weight, dtype=dtype)
    if reduction == "none":
        up = torch.full((numel,), weight, dtype=dtype)
    got_l, got_g = _loss_and_grad(ops.binarization_penalty, h, reduction, up)
    exp_l, exp_g = _loss_and_grad(reference.binarization_penalty, h, reduction, up)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert got_l.shape == exp_l.shape and got_l.dtype == dtype
    torch.testing.assert_close(got_l, exp_l, **tol)
    torch.testing.assert_close(got_g, exp_g, **tol)


@needs_ext
def test_penalty_sign_convention_and_values():
    h = torch.tensor([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0])
    loss = ops.binarization_penalty(h, "none")
    torch.testing.assert_close(loss, torch.tensor([1.0, 0.25, 1.0, 0.5625, 0.0, 4.0]))
    h.requires_grad_(True)
    ops.binarization_penalty(h, "sum").backward()
    torch.testing.assert_close(h.grad, torch.tensor([-2.0, 1.0, -2.0, -1.5, 0.0, 4.0]))


@needs_ext
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_penalty_gradcheck_float64(reduction):
    h = _h((7, 5), torch.float64, 1).requires_grad_(True)
    # keep away from the kink at 0, where the penalty is not differentiable
    with torch.no_grad():
        h.add_(torch.where(h >= 0, 0.05, -0.05))
    assert torch.autograd.gradcheck(lambda x: ops.binarization_penalty(x, reduction), (h,))


@needs_ext
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck_penalty_ops(reduction):
    h = _h((6, 4), torch.float32, 2)
    torch.library.opcheck(torch.ops.kdkit.binarization_penalty.default, (h, reduction))
    torch.library.opcheck(
        torch.ops.kdkit.binarization_penalty.default, (h.double().requires_grad_(True), reduction)
    )
    _loss, gf = torch.ops.kdkit.binarization_penalty(h, reduction)
    go = torch.rand(()) if reduction else torch.rand(6, 4)
    torch.library.opcheck(torch.ops.kdkit.binarization_penalty_backward.default, (go, gf, reduction))


@needs_ext
def test_penalty_op_returns_fused_grad_factor():
    h = _h((50, 3), torch.float64, 3)
    for red in (0, 1, 2):
        loss, gf = torch.ops.kdkit.binarization_penalty(h, red)
        el, eg = reference.binarization_penalty_fwd(h, red)
        torch.testing.assert_close(loss, el)
        torch.testing.assert_close(gf, eg)
        go = torch.tensor(0.7, dtype=torch.float64) if red else torch.full_like(h, 0.7)
        torch.testing.assert_close(
            torch.ops.kdkit.binarization_penalty_backward(go, gf, red),
            reference.binarization_penalty_backward(go, gf, red),
        )


@needs_ext
def test_torch_compile_fullgraph_penalty_training_step():
    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 16).double()

    def step(x):
        h = torch.tanh(lin(x))
        return ops.binarization_penalty(h, "mean") * 0.5 + h.pow(2).mean()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 8, dtype=torch.float64)
    lin.zero_grad()
    step(x).backward()
    expect = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    compiled(x).backward()
    for p, e in zip(lin.parameters(), expect):
        torch.testing.assert_close(p.grad, e)


@needs_ext
def test_reused_buffers_never_alias_live_tensors():
    # Large enough (> 1 MiB) for the CPU buffer cache. Results held by the caller must
    # survive later calls untouched.
    shape = (1024, 512)
    h1, h2 = _h(shape, torch.float32, 4), _h(shape, torch.float32, 5)
    outs = []
    for h in (h1, h2, h1, h2, h1):
        loss, gf = torch.ops.kdkit.binarization_penalty(h, 0)
        outs.append((h, loss, gf))
    for h, loss, gf in outs:
        el, eg = reference.binarization_penalty_fwd(h, 0)
        torch.testing.assert_close(loss, el)
        torch.testing.assert_close(gf, eg)
    ptrs = {o[2].data_ptr() for o in outs} | {o[1].data_ptr() for o in outs}
    assert len(ptrs) == 2 * len(outs)
    # h.grad kept across iterations (accumulation) stays correct
    h = h1.clone().requires_grad_(True)
    for _ in range(3):
        ops.binarization_penalty(h, "sum").backward()
        ops.binarization_penalty(h2, "sum")  # unrelated call in between
    torch.testing.assert_close(h.grad, 3 * reference.binarization_penalty_fwd(h1, 2)[1])
    _extension.clear_cpu_buffer_cache()


@needs_ext
def test_retain_graph_backward_accumulates_correctly():
    h0 = _h((300, 700), torch.float32, 6)
    h = h0.clone().requires_grad_(True)
    loss = ops.binarization_penalty(h, "mean")
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(h.grad, 3 * reference.binarization_penalty_fwd(h0, 1)[1])


@needs_ext
def test_penalty_deterministic_across_thread_counts_and_isas():
    h = _h((300_001,), torch.float32, 7)
    threads = torch.get_num_threads()
    results = []
    try:
        for isa in _extension.available_cpu_isas():
            _extension.set_cpu_isa(isa)
            for nt in sorted({1, 2, threads}):
                torch.set_num_threads(nt)
                results.append(torch.ops.kdkit.binarization_penalty(h, 1))
    finally:
        torch.set_num_threads(threads)
        _extension.set_cpu_isa("auto")
    for loss, gf in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(gf, results[0][1])


@needs_ext
def test_penalty_noncontiguous():
    base = _h((40, 30), torch.float64, 8)
    h = base.t()[::2]
    assert not h.is_contiguous()
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(
            ops.binarization_penalty(h, red), reference.binarization_penalty(h.contiguous(), red)
        )


def test_penalty_bad_inputs():
    with pytest.raises(ValueError, match="reduction='avg'"):
        ops.binarization_penalty(torch.randn(3), "avg")
    with pytest.raises(TypeError, match="h must be a floating tensor"):
        ops.binarization_penalty(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="h is empty"):
        ops.binarization_penalty(torch.randn(0, 4))
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        ops.binarization_penalty([1.0, 2.0])


@needs_ext
def test_penalty_unsupported_cpu_dtype_names_h():
    with pytest.raises(TypeError, match="h has dtype torch.float16"):
        ops.binarization_penalty(torch.randn(3, dtype=torch.float16))
