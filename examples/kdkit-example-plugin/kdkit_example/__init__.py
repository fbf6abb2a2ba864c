"""kdkit example plugin: the ``mse_logits`` and ``pooled_cosine`` losses and the ``example_tinynet`` teacher.

The module is imported whenever kdkit starts, so it stays cheap: torch is imported inside the
factories, not at module level.
"""
from __future__ import annotations

import kdkit

__version__ = "0.1.0"


def mse_logits(center: bool = True, scale: float = 0.5):
    """Build the ``mse_logits`` loss: ``scale * mean((s - t)**2)`` over batch and classes.

    With ``center=True`` each row of logits has its mean removed first (softmax ignores a
    per-row shift), and with the default ``scale=0.5`` the loss equals the high-temperature
    limit of ``T**2 * KL(softmax(t/T) || softmax(s/T))`` (batch mean), i.e.
    ``sum_c (s_c - t_c)**2 / (2 * C)`` per sample — so its gradients have the scale of the KD
    term it replaces.  Like every kdkit loss it receives one ``kdkit.distill.DistillInputs``;
    MSE on logits needs no temperature.
    """
    if scale <= 0:
        raise kdkit.ConfigError(f"loss option 'scale' must be positive, got {scale!r}")

    def loss(inputs):
        student_logits, teacher_logits = inputs.student_logits, inputs.teacher_logits
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"mse_logits: student logits {tuple(student_logits.shape)} and "
                             f"teacher logits {tuple(teacher_logits.shape)} differ in shape")
        s, t = student_logits.float(), teacher_logits.float().detach()
        if center:
            s = s - s.mean(dim=-1, keepdim=True)
            t = t - t.mean(dim=-1, keepdim=True)
        return scale * (s - t).pow(2).mean()

    return loss


def pooled_cosine():
    """Build the ``pooled_cosine`` feature loss: ``1 - cos(P(pool(f_s)), pool(f_t))``, batch mean.

    ``f_s`` / ``f_t`` are the outputs of the modules the term names (``student:`` / ``teacher:``),
    average-pooled over their spatial positions; ``P`` is a linear projection trained with the
    student, created on the first batch when the channel counts differ.  Use it as a term::

        distill.terms: [{loss: kl, weight: 0.5}, {loss: pooled_cosine, weight: 1.0,
                         student: features.10, teacher: "8"}]
    """
    from kdkit_example.losses import PooledCosine  # torch is imported only when a run builds the loss

    return PooledCosine()


def example_tinynet(num_classes: int, width: int = 16, in_channels: int = 3):
    """Build the ``example_tinynet`` teacher: conv-BN-ReLU x3, global pooling, a linear head.

    Works for any input size.  It takes no ``pretrained`` option of its own: kdkit gives every
    teacher and student ``pretrained`` (a local weights file), ``pretrained_key`` and
    ``pretrained_strict``, and loads the file with ``kdkit.load_weights`` once this returns.
    """
    from torch import nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, width, 1),
        *block(width, 2 * width, 2),
        *block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


# Each component is declared once: what builds it (the callable, or a lazy "module:attribute" path)
# and the options it takes.  kdkit checks a config's options against these declarations before a
# run starts, lists them in `kdkit train --help-config`, and fills in their defaults.
@kdkit.hookimpl
def kdkit_register_losses(register):
    register("mse_logits", mse_logits,
             description="MSE between centred logits (high-temperature limit of T^2*KL)",
             options={"center": kdkit.ConfigKey(True, "remove each row's mean from the logits first"),
                      "scale": kdkit.ConfigKey(0.5, "factor of the mean squared error", range="(0, inf)")})
    register("pooled_cosine", pooled_cosine, options={}, inputs="features",
             description="1 - cosine of spatially pooled student/teacher features (projection trained)")


@kdkit.hookimpl
def kdkit_register_teachers(register):
    register("example_tinynet", example_tinynet,
             description="three-layer CNN teacher for small images (example plugin)",
             options={"width": kdkit.ConfigKey(16, "channels of the first layer", range="[1, inf)"),
                      "in_channels": kdkit.ConfigKey(3, "input channels", range="[1, inf)")})
