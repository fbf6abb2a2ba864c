"""Lazy loading of the compiled ``kdkit._C`` extension and its Python-side registrations.

Nothing here runs at ``import kdkit``: the extension is imported on the first op call or
:func:`extension_info`. When it cannot be imported, one warning is emitted and the public
ops in :mod:`kdkit.ops` route to the pure-torch references.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any

import torch

_LOCK = threading.Lock()
_STATE: dict[str, Any] | None = None
_C = None

REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .`"


def _register() -> None:
    """register_fake for every op and register_autograd for the penalty."""

    @torch.library.register_fake("kdkit::hamming_distance")
    def _hamming_distance_fake(query_codes, db_codes):
        return query_codes.new_empty((query_codes.shape[0], db_codes.shape[0]), dtype=torch.int32)

    @torch.library.register_fake("kdkit::hamming_topk")
    def _hamming_topk_fake(query_codes, db_codes, k):
        q = query_codes.shape[0]
        return (
            query_codes.new_empty((q, k), dtype=torch.int32),
            query_codes.new_empty((q, k), dtype=torch.int64),
        )

    @torch.library.register_fake("kdkit::hamming_average_precision")
    def _hamming_ap_fake(query_codes, db_codes, query_labels, db_labels, k, variant):
        return query_codes.new_empty((query_codes.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("kdkit::binarization_penalty")
    def _penalty_fake(h, reduction):
        loss = h.new_empty(h.shape if reduction == 0 else ())
        return loss, h.new_empty(h.shape)

    @torch.library.register_fake("kdkit::binarization_penalty_backward")
    def _penalty_backward_fake(grad_output, grad_factor, reduction):
        return grad_factor.new_empty(grad_factor.shape)

    def _setup_context(ctx, inputs, output):
        _h, reduction = inputs
        _loss, grad_factor = output
        ctx.reduction = reduction
        ctx.save_for_backward(grad_factor)
        # grad_factor is not differentiable; without this autograd would materialise a
        # zeros tensor the size of h as its incoming gradient on every backward.
        ctx.mark_non_differentiable(grad_factor)
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_loss, _grad_grad_factor):
        # grad_factor is an implementation detail (never returned to users), so its incoming
        # gradient is ignored. We always go through the backward op, even when grad_loss is
        # exactly 1: returning the saved grad_factor itself would let AccumulateGrad steal it
        # into h.grad, and with retain_graph=True a second backward would then accumulate
        # into the very buffer it reads.
        (grad_factor,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None
        return torch.ops.kdkit.binarization_penalty_backward(grad_loss, grad_factor, ctx.reduction), None

    torch.library.register_autograd(
        "kdkit::binarization_penalty", _backward, setup_context=_setup_context
    )


def load() -> dict[str, Any]:
    """Import ``kdkit._C`` once (thread-safe); returns the load state."""
    global _STATE, _C
    if _STATE is not None:
        return _STATE
    with _LOCK:
        if _STATE is not None:
            return _STATE
        state: dict[str, Any] = {"loaded": False, "error": None}
        try:
            from kdkit import _C as ext  # noqa: N811

            _register()
        except Exception as exc:  # ImportError, OSError (bad .so), RuntimeError (registration)
            state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"kdkit._C extension not available ({state['error']}); using slow pure-torch "
                f"reference ops — {REBUILD_HINT}",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            _C = ext
            state["loaded"] = True
        _STATE = state
    return _STATE


@torch.compiler.assume_constant_result
def use_extension() -> bool:
    """True when the compiled ops are available (a constant for torch.compile)."""
    return bool(load()["loaded"])


def extension_info() -> dict[str, Any]:
    """{"loaded", "cpu_isa", "cpu_threaded", "cuda_compiled", "error"} of the compiled extension (loads it)."""
    state = load()
    if not state["loaded"]:
        return {"loaded": False, "cpu_isa": None, "cpu_threaded": False, "cuda_compiled": False,
                "error": state["error"]}
    return {
        "loaded": True,
        "cpu_isa": _C.cpu_isa(),
        "cpu_threaded": bool(_C.cpu_threaded()),
        "cuda_compiled": bool(_C.cuda_compiled()),
        "error": None,
    }


def available_cpu_isas() -> list[str]:
    """CPU ISA paths usable on this machine, best first ([] without the extension)."""
    return list(_C.available_cpu_isas()) if load()["loaded"] else []


def set_cpu_isa(name: str) -> str:
    """Force the CPU kernels' ISA path ("scalar", "avx2", "avx512", "auto"); returns the active
    name. Raises ValueError when unavailable. The initial path comes from env KDKIT_CPU_ISA."""
    if not load()["loaded"]:
        raise RuntimeError(f"kdkit._C extension not available ({_STATE['error']})")
    return _C.set_cpu_isa(name)


def clear_cpu_buffer_cache() -> None:
    """Release the large CPU buffers the penalty ops keep for reuse (no-op without _C)."""
    if _C is not None:
        _C.clear_cpu_buffer_cache()
