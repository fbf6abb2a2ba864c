"""What a method describes for ``ctx.fit``: a :class:`Stage` (one model trained for some epochs, with
its data, step and evaluation), and what it gets back, a :class:`StageResult`; the default step and
evaluation (cross-entropy, top-1) and :func:`freeze` for teachers.  :class:`~kdkit.engine.trainer.Trainer`
runs a stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdkit.engine.data import to_device

if TYPE_CHECKING:
    from kdkit.engine.trainer import Trainer

__all__ = ["Stage", "StageResult", "freeze", "classification_step", "classification_eval"]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter; returns ``model``.

    Use it for teachers: a frozen module is never wrapped in DDP, never put back in train mode by
    the trainer (only ``stage.model`` and ``stage.extra_modules`` are) and gets no gradients.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["image"] if "image" in batch else batch["input"], batch["label"]
    return batch[0], batch[1]


def classification_step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    """Default ``step_fn``: cross-entropy of ``model(x)`` against ``y`` for batches ``(x, y, ...)``."""
    x, y = _split_batch(batch)
    logits = model(x)
    return F.cross_entropy(logits, y), {}


@torch.no_grad()
def classification_eval(model: nn.Module, loader, entropy: bool = False) -> dict:
    """Default ``eval_fn``: ``{"top1": percent, "loss": mean cross-entropy}`` over ``loader``, and with
    ``entropy=True`` the mean entropy (nats) of the softmax (``functools.partial`` it into a stage)."""
    correct, total, loss_sum, entropy_sum = 0, 0, 0.0, 0.0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for batch in loader:
        batch = to_device(batch, device)
        x, y = _split_batch(batch)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        if entropy:
            logp = torch.log_softmax(logits, dim=-1)
            entropy_sum += float(-(logp.exp() * logp).sum().item())
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    total = max(total, 1)
    metrics = {"top1": 100.0 * correct / total, "loss": loss_sum / total}
    if entropy:
        metrics["entropy"] = entropy_sum / total
    return metrics


@dataclass
class Stage:
    """Everything ``ctx.fit`` needs to train one model.

    :param name: unique in the run (``"teacher.resnet20"``, ``"student"``); names the checkpoint
        folder ``checkpoints/<name>/`` and the ``stage`` field of ``metrics.jsonl``.
    :param model: the ``nn.Module`` trained (wrapped in DDP under torchrun when it has trainable
        parameters; ``step_fn`` receives the wrapped module, everything else the plain one).
    :param train_data: a ``Dataset`` (shuffled by a seeded ``DistributedSampler``).
    :param val_data: held-out validation data: a ``Dataset`` (batched by the trainer), any other
        object (passed unchanged to ``eval_fn``) or ``None`` (no evaluation; best = last).
    :param step_fn: ``step_fn(model, batch) -> (loss, logs)``; ``batch`` is on the device,
        ``loss`` a scalar tensor, ``logs`` a ``dict[str, float | Tensor]`` averaged per epoch into
        ``train.<key>``.  Default: cross-entropy on ``(x, y, ...)``.
    :param eval_fn: ``eval_fn(model, loader_or_val_data) -> dict[str, float]`` (runs under
        ``torch.no_grad`` with the model in eval mode).  Default: ``{"top1", "loss"}``.
    :param epochs: number of epochs; ``None`` uses ``optimizer["epochs"]``.
    :param optimizer: optimisation settings, a ``train`` section (:func:`kdkit.config.train_section`):
        ``batch_size``, ``optimizer``, ``optimizer_options``, ``lr``, ``scheduler``,
        ``scheduler_options``, ``accumulate``, ``precision``, ``early_stop``, ...; missing keys come
        from the run config's ``train`` section (``early_stop``'s too); each is checked like the config.
    :param extra_modules: other state trained or updated with the model (learnable embeddings,
        combination-rule statistics as buffers); saved in checkpoints, trainable parameters join
        the optimizer and their gradients are averaged across ranks.
    :param param_groups: ``param_groups(model, extra_modules) -> list[dict]`` (torch optimizer
        groups with per-group overrides); default one group with all trainable parameters.
    :param before_epoch_fn: ``before_epoch_fn(trainer, epoch)`` at the start of every epoch (after
        the epoch's reseed, before the hook), e.g. recompute per-teacher weights.
    :param after_step_fn: ``after_step_fn(trainer, step)`` after every optimiser step, e.g.
        re-normalise embeddings.
    :param test_data: evaluated once with the best weights when the stage ends
        (``StageResult.test_metrics``, a ``test.*`` line in ``metrics.jsonl``).
    :param select_metric: the validation metric that picks ``best.pt`` (``"top1"``, ``"loss"``,
        ``"map"`` ...).
    :param select_mode: whether the best value of ``select_metric`` is its ``"max"`` (``top1``,
        ``map``) or its ``"min"`` (``loss``).
    :param taps: :class:`kdkit.distill.FeatureTaps` on the student or the teachers; attached when
        the stage starts training and removed when it ends (also when it fails), so ``step_fn`` only
        calls their ``pop()``.
    """

    name: str
    model: nn.Module
    train_data: Dataset
    val_data: Any = None
    step_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]] | None = None
    eval_fn: Callable[[nn.Module, Any], dict] | None = None
    epochs: int | None = None
    optimizer: dict = field(default_factory=dict)
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    param_groups: Callable[[nn.Module, dict], list[dict]] | None = None
    before_epoch_fn: Callable[["Trainer", int], None] | None = None
    after_step_fn: Callable[["Trainer", int], None] | None = None
    test_data: Any = None
    select_metric: str = "top1"
    select_mode: str = "max"
    collate_fn: Callable | None = None
    find_unused_parameters: bool = False
    taps: list = field(default_factory=list)


@dataclass
class StageResult:
    """What ``ctx.fit`` returns.  Metric dicts have un-prefixed keys (``{"top1": ..., "loss": ...}``)."""

    best_metrics: dict
    best_epoch: int
    final_metrics: dict
    test_metrics: dict = field(default_factory=dict)
    resumed_finished: bool = False  # True when the stage had already finished (resume)
    stopped_epoch: int | None = None  # the epoch after which train.early_stop stopped it (None: it did not)

    def as_dict(self) -> dict:
        return {"best_metrics": dict(self.best_metrics), "best_epoch": self.best_epoch,
                "final_metrics": dict(self.final_metrics), "test_metrics": dict(self.test_metrics),
                "stopped_epoch": self.stopped_epoch}
