"""Internal default plugin: kdkit's built-in distillation losses.

Loss contract (:func:`kdkit.hookspecs.kdkit_register_losses`): ``factory(**options)`` returns
``loss(student_logits, teacher_logits, temperature) -> scalar Tensor``, already scaled.
"""
from __future__ import annotations

import kdkit


class KLDivLoss:
    """Hinton et al.: ``T^2 * KL_batchmean(log_softmax(s/T) || softmax(t/T))`` (the KD loss)."""

    def __init__(self, scale_by_t2: bool = True):
        self.scale_by_t2 = bool(scale_by_t2)

    def __call__(self, student_logits, teacher_logits, temperature: float = 1.0):
        import torch.nn.functional as F

        t = float(temperature)
        log_p = F.log_softmax(student_logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
        kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
        return kl * (t * t) if self.scale_by_t2 else kl


class LogitMSELoss:
    """Mean squared error between raw logits (Ba & Caruana); ``temperature`` is ignored."""

    def __call__(self, student_logits, teacher_logits, temperature: float = 1.0):
        import torch.nn.functional as F

        return F.mse_loss(student_logits.float(), teacher_logits.float())


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("kl", KLDivLoss, description="Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean")
    register("mse", LogitMSELoss, description="mean squared error between student and teacher logits")
