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

    @property
    def per_teacher(self) -> bool:
        """Whether terms are evaluated per teacher (else once, on the mean of the teachers' logits)."""
        return self.rule != "avg_logits" and self.weights.numel() > 1

    def teacher_weights(self, teacher_logits: list, targets):
        """This batch's per-teacher weights (``None`` for ``mean_loss`` / ``avg_logits``).

        ``ema_inv_loss`` updates its EMA here, so call it once per batch (in training mode) however
        many terms are combined; the weights returned are those before this batch's update.
        """
        if not self.per_teacher or self.rule == "mean_loss":
            return None
        if self.rule == "inv_val_loss":
            return self.weights
        with torch.no_grad():  # ema_inv_loss
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
        return weights

    def forward(self, teacher_logits: list, targets, term, weights=None):
        """Combine ``term(teacher_logits_i, i) -> scalar`` over the teachers by the rule.

        ``avg_logits`` (or one teacher): ``term(mean of the logits, None)``.  Otherwise the
        per-teacher values are averaged (``mean_loss``) or weighted by ``weights`` (default: this
        batch's :meth:`teacher_weights`).
        """
        if not self.per_teacher:
            mean = torch.stack([t.float() for t in teacher_logits]).mean(0)
            return term(mean, None)
        losses = torch.stack([term(t, i) for i, t in enumerate(teacher_logits)])
        if self.rule == "mean_loss":
            return losses.mean()
        if weights is None:
            weights = self.teacher_weights(teacher_logits, targets)
        return (weights.to(losses.dtype) * losses).sum()
