"""The per-step options of the training loop that are not the optimiser (:mod:`kdkit.engine.optim`):
``train.precision``'s autocast dtype, ``train.channels_last`` batches, DDP's ``no_sync`` under
``train.accumulate`` and ``train.early_stop``'s counters.  :class:`~kdkit.engine.trainer.Trainer` uses them.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from kdkit.config.settings import EarlyStop, TrainSettings
from kdkit.errors import ConfigError, KdkitError

if TYPE_CHECKING:
    from kdkit.engine.stage import Stage

__all__ = ["amp_dtype", "no_sync", "channels_last", "check_early_stop", "watch_early_stop"]


def amp_dtype(settings: TrainSettings, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (``None``: fp32); ``auto`` is the
    deprecated ``train.amp`` (fp16 on CUDA, fp32 elsewhere)."""
    precision = settings.precision
    if precision == "auto":
        return torch.float16 if settings.amp and device.type == "cuda" else None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"config key train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use fp16 or fp32")
    if precision != "fp32" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"config key train.precision: {precision} autocast runs on cpu and cuda only, not on "
                          f"{device.type}; use fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def no_sync(model: nn.Module):
    """DDP's ``no_sync()`` of ``model`` (under ``torch.compile`` too), else nothing to hold back."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    inner = getattr(model, "_orig_mod", model)
    return inner.no_sync() if isinstance(inner, DDP) else contextlib.nullcontext()


def channels_last(batch):
    """``batch`` with its 4-D floating tensors in the channels_last memory format."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 and batch.is_floating_point() \
            else batch
    if isinstance(batch, dict):
        return {k: channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(channels_last(v) for v in batch) if not hasattr(batch, "_fields") \
            else type(batch)(*(channels_last(v) for v in batch))
    return batch


def check_early_stop(es: EarlyStop, stage: "Stage", has_val: bool) -> None:
    """``train.early_stop`` needs a validation metric and a direction to watch it in."""
    if not es.patience:
        return
    if not has_val:
        raise ConfigError(f"stage {stage.name}: train.early_stop needs validation metrics and the stage has "
                          "none (no validation data, or checkpoint.select_on: last); set "
                          "train.early_stop.patience=0")
    if es.metric not in (None, stage.select_metric) and es.mode is None:
        raise ConfigError(f"stage {stage.name}: train.early_stop.metric {es.metric!r} is not the selection "
                          f"metric ({stage.select_metric!r}): give train.early_stop.mode (max or min)")


def watch_early_stop(es: EarlyStop, state: dict, val_metrics: dict, stage: "Stage") -> dict:
    """One epoch of ``train.early_stop``: update ``state`` (``{"best", "bad_epochs", "stopped"}``, kept
    in ``last.pt``) with the epoch's validation metrics; returns the fields of the epoch's
    ``metrics.jsonl`` line (``early_stop.bad_epochs``, and ``early_stop.stopped`` when it stops)."""
    if not es.patience:
        return {}
    metric = es.metric or stage.select_metric
    if metric not in val_metrics:
        raise KdkitError(f"stage {stage.name}: train.early_stop.metric {metric!r} is not a validation "
                         f"metric (got {sorted(val_metrics)})")
    value, best = val_metrics[metric], state["best"]
    if (es.mode or stage.select_mode) == "min":  # compare as a maximum
        value, best = -value, None if best is None else -best
    if not math.isnan(value) and (best is None or value > best + es.min_delta):
        state["best"], state["bad_epochs"] = val_metrics[metric], 0
    else:
        state["bad_epochs"] += 1
    state["stopped"] = state["bad_epochs"] >= es.patience
    return {"early_stop.bad_epochs": state["bad_epochs"], **({"early_stop.stopped": True} if state["stopped"] else {})}
