"""torch.distributed helpers: torchrun environment, rank-0 helpers, small collectives.

``torchrun --nproc_per_node=N -m kdkit train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_distributed` then starts a process group with ``nccl`` on CUDA and ``gloo`` on CPU, and
:func:`shutdown_distributed` ends it.  They are the only place kdkit starts and stops process groups:
``kdkit train`` and ``kdkit search`` use them through :func:`torchrun_process_group`.
Every helper here is a no-op (or the identity) in a single process.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "env_world_size",
    "init_distributed",
    "shutdown_distributed",
    "torchrun_process_group",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "broadcast_object",
    "all_reduce_mean",
    "all_reduce_grads",
    "all_gather_with_grad",
]


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device_type: str) -> bool:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1.  Returns whether it did."""
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


@contextmanager
def torchrun_process_group(device_type: str):
    """Run a block in the process group torchrun describes: started on entry by
    :func:`init_distributed` (``nccl`` on CUDA, ``gloo`` otherwise; nothing when ``WORLD_SIZE`` is
    1 or unset) and ended on exit, also on error, by :func:`shutdown_distributed`.  A group that was
    already running on entry is left running.  Yields whether the block runs in several processes::

        with torchrun_process_group("cpu") as distributed:
            ...  # rank(), world_size(), collectives
    """
    started = not (dist.is_available() and dist.is_initialized()) and init_distributed(device_type)
    try:
        yield is_distributed()
    finally:
        if started:
            shutdown_distributed()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; small objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (a detached copy)."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_grads(params) -> None:
    """Average the gradients of parameters that DDP does not manage (e.g. a stage's extra modules)."""
    if not is_distributed():
        return
    n = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= n


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # every rank computed the loss of the whole gathered batch: the gradient of this rank's rows
        # is the sum of what each rank's loss sends to them (all_reduce, which gloo supports too)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-ordered concatenation of every rank's ``tensor`` (same shape on all ranks), with
    gradients flowing back to each rank's own rows; ``tensor`` itself in a single process.

    For losses over pairs within a batch (contrastive, hashing): computed on the gathered global
    batch, such a loss is the single-process loss, and with DDP's gradient averaging the parameter
    gradients are the single-process ones as well (each rank's rows get ``world_size`` times their
    share here, which DDP's mean over ranks divides back out).
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
