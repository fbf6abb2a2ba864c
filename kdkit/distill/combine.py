"""Combining several teachers into one distillation loss: :class:`TeacherCombiner`."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit.distill import COMBINE_RULES
from kdkit.errors import ConfigError

__all__ = ["TeacherCombiner", "COMBINE_RULES"]


class TeacherCombiner(nn.Module):
    """Combines per-teacher logits into one distillation loss.

    * ``avg_logits`` — the KD loss towards the average of the teachers' logits (default);
    * ``mean_loss`` — the mean of the per-teacher KD losses;
    * ``inv_val_loss`` — per-teacher losses weighted by ``w_i ∝ 1 / L_i`` where ``L_i`` is the
      teacher's cross-entropy on the held-out validation split, recomputed every epoch
      (:meth:`set_weights_from_losses`);
    * ``ema_inv_loss`` — weights ``∝ EMA(1 / CE_i(batch))`` with momentum ``momentum``
      (0.9): after every training batch the EMA of each teacher's inverse cross-entropy on
      that batch is updated; the weights used for a batch are those before its update.

    Weights and the EMA are buffers, so they are checkpointed with the stage (exact resume).
    """

    def __init__(self, rule: str = "avg_logits", num_teachers: int = 1, momentum: float = 0.9):
        super().__init__()
        if rule not in COMBINE_RULES:
            raise ConfigError(f"config key distill.combine: unknown rule {rule!r}; valid: {', '.join(COMBINE_RULES)}")
        self.rule = rule
        self.momentum = float(momentum)
        self.register_buffer("weights", torch.full((num_teachers,), 1.0 / num_teachers))
        self.register_buffer("ema", torch.zeros(num_teachers))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def set_weights_from_losses(self, losses) -> None:
        inv = 1.0 / torch.as_tensor(losses, dtype=torch.float32).clamp_min(1e-8)
        self.weights.copy_((inv / inv.sum()).to(self.weights.device))

    def forward(self, student_logits, teacher_logits: list, targets, loss_fn, temperature: float):
        if self.rule == "avg_logits" or len(teacher_logits) == 1:
            mean = torch.stack([t.float() for t in teacher_logits]).mean(0)
            return loss_fn(student_logits, mean, temperature)
        losses = torch.stack([loss_fn(student_logits, t, temperature) for t in teacher_logits])
        if self.rule == "mean_loss":
            return losses.mean()
        if self.rule == "ema_inv_loss":
            with torch.no_grad():
                ce = torch.stack([F.cross_entropy(t.float(), targets) for t in teacher_logits])
                from kdkit.engine.distributed import all_reduce_mean

                ce = all_reduce_mean(ce)  # every rank keeps the same EMA under DDP
                inv = 1.0 / ce.clamp_min(1e-8)
                if self.ema_steps.item() == 0:
                    new_ema = inv
                else:
                    new_ema = self.momentum * self.ema + (1.0 - self.momentum) * inv
                weights = (new_ema / new_ema.sum()) if self.ema_steps.item() == 0 else self.ema / self.ema.sum()
                if self.training:
                    self.ema.copy_(new_ema)
                    self.ema_steps += 1
                    self.weights.copy_(new_ema / new_ema.sum())
            return (weights.to(losses.dtype) * losses).sum()
        # inv_val_loss
        return (self.weights.to(losses.dtype) * losses).sum()
