"""Internal default plugin: kdkit's built-in distillation losses.

Loss contract (:func:`kdkit.hookspecs.kdkit_register_losses`): ``factory(**options)`` returns
``loss(inputs) -> scalar Tensor`` where ``inputs`` is a :class:`kdkit.distill.DistillInputs`
(student and teacher logits, the term's tapped features, labels, sample indices, temperature,
epoch and step).  A loss that owns trainable modules is an ``nn.Module``; it may create them on
its first call, from the shapes it sees (kdkit makes that call on one batch before training, so
the optimiser and the checkpoints include them).
"""
from __future__ import annotations

import kdkit
from kdkit.config.keys import ConfigKey


def hinton_kd(student_logits, teacher_logits, temperature: float = 1.0, scale_by_t2: bool = True):
    """``T^2 * KL_batchmean(softmax(t/T) || softmax(s/T))`` (Hinton et al., 2015)."""
    import torch.nn.functional as F

    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl * (t * t) if scale_by_t2 else kl


class KLDivLoss:
    """Hinton KD on the logits: :func:`hinton_kd` of ``inputs.student_logits`` and ``inputs.teacher_logits``."""

    def __init__(self, scale_by_t2: bool = True):
        self.scale_by_t2 = bool(scale_by_t2)

    def __call__(self, inputs):
        return hinton_kd(inputs.student_logits, inputs.teacher_logits, inputs.temperature, self.scale_by_t2)


class LogitMSELoss:
    """Mean squared error between raw logits (Ba & Caruana); the temperature is not used."""

    def __call__(self, inputs):
        import torch.nn.functional as F

        return F.mse_loss(inputs.student_logits.float(), inputs.teacher_logits.float())


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("kl", KLDivLoss, description="Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean",
             options={"scale_by_t2": ConfigKey(True, "multiply the KL by T^2 (Hinton et al.: keeps gradient "
                                                     "magnitudes across temperatures)")}, inputs="logits")
    register("mse", LogitMSELoss, description="mean squared error between student and teacher logits", options={},
             inputs="logits")
    # FitNet's hint loss (Romero et al., 2015): mean((r(f_s) - f_t)^2) between the tapped student and
    # teacher features, r a regressor trained with the student, built on the first batch
    register("fitnet", "kdkit.distill.feature_losses:HintLoss",
             options={"regressor": ConfigKey("conv_bn_relu", "the regressor: conv_bn_relu (the references': conv "
                                                             "with bias, BatchNorm, ReLU) or conv (a bare 1x1 "
                                                             "convolution without bias)",
                                             choices=("conv_bn_relu", "conv"))},
             description="FitNet hint: MSE(regressor(student feature), teacher feature); "
                         "needs student: and teacher: module paths", inputs="features")
