"""Feature-based distillation losses with trainable parts (registered in :mod:`kdkit.losses`)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit.errors import ConfigError

__all__ = ["REGRESSORS", "HintLoss", "conv_regressor"]

#: FitNet's regressor forms (the ``regressor`` option of the ``fitnet`` loss)
REGRESSORS = ("conv_bn_relu", "conv")


def _shape(x: torch.Tensor) -> tuple:
    return tuple(x.shape[1:])


def conv_regressor(student_channels: int, teacher_channels: int, student_size: tuple, teacher_size: tuple,
                   loss: str = "fitnet") -> nn.Module:
    """The convolution the references' regressors (RepDistiller / mdistiller ``ConvReg``) use to map a
    ``student_channels x student_size`` map onto a ``teacher_channels x teacher_size`` one: 1x1 when
    the sizes match, a 3x3 stride-2 convolution when the student map is twice the teacher's, a 4x4
    stride-2 transposed convolution when it is half, and a ``(1 + s - t)`` kernel (no padding) when it
    is otherwise larger; each with bias.  A smaller student map (not half) is a one-line
    :class:`kdkit.ConfigError` naming ``loss``.  FitNet's regressor and AB's connectors are built on it
    (their BatchNorm / ReLU are theirs)."""
    (s_h, s_w), (t_h, t_w) = tuple(student_size), tuple(teacher_size)
    c_s, c_t = int(student_channels), int(teacher_channels)
    if (s_h, s_w) == (t_h, t_w):
        return nn.Conv2d(c_s, c_t, kernel_size=1)
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        return nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    if (2 * s_h, 2 * s_w) == (t_h, t_w):
        return nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    if s_h >= t_h and s_w >= t_w:
        return nn.Conv2d(c_s, c_t, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    raise ConfigError(f"loss {loss}: student feature {c_s} x {s_h} x {s_w} is smaller than teacher feature "
                      f"{c_t} x {t_h} x {t_w} (and not half its size); tap a student layer of at least the "
                      "teacher layer's resolution")


class HintLoss(nn.Module):
    """FitNet's hint loss (Romero et al., ICLR 2015, arXiv:1412.6550): ``mean((r(f_s) - f_t)^2)``
    between the tapped student feature ``f_s`` and teacher feature ``f_t``, ``r`` a regressor
    trained with the student, built on the first batch from the two shapes.  Registered as
    ``fitnet`` (:mod:`kdkit.losses`).

    :param regressor: the form of ``r``:

        * ``conv_bn_relu`` (default) — the references' (RepDistiller ``models/util.py`` and mdistiller
          ``distillers/_common.py`` ``ConvReg``): a convolution with bias (1x1 for equal spatial
          sizes; strided, transposed or larger-kernel when they differ, see :func:`conv_regressor`),
          then BatchNorm, then ReLU, so that ``r(f_s)`` is non-negative like a post-ReLU hint
          target.  For ``B x C`` vectors: linear (with bias), BatchNorm1d, ReLU (the references
          have no vector form).
        * ``conv`` — kdkit's earlier form: a bare 1x1 convolution without bias (a linear layer
          without bias for vectors); spatial sizes must match.

    The regressor is built in the loss's own train/eval mode, so the set-up call
    (:meth:`kdkit.distill.Distiller.materialize`, in eval mode) leaves its BatchNorm statistics
    untouched.
    """

    def __init__(self, regressor: str = "conv_bn_relu"):
        super().__init__()
        if regressor not in REGRESSORS:
            raise ConfigError(f"loss fitnet: option regressor is {regressor!r}; choose one of "
                              f"{', '.join(REGRESSORS)}")
        self.form = regressor
        self.regressor: nn.Module | None = None

    def _build(self, student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
        if student.dim() == 4 and teacher.dim() == 4:
            c_s, c_t = student.shape[1], teacher.shape[1]
            if self.form == "conv":
                if student.shape[2:] != teacher.shape[2:]:
                    raise ConfigError(f"loss fitnet: student feature {_shape(student)} and teacher feature "
                                      f"{_shape(teacher)} differ in spatial size; tap layers of equal resolution "
                                      "(or use the default regressor: conv_bn_relu)")
                return nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
            conv = conv_regressor(c_s, c_t, tuple(student.shape[2:]), tuple(teacher.shape[2:]))
            return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))
        if student.dim() == 2 and teacher.dim() == 2:
            if self.form == "conv":
                return nn.Linear(student.shape[1], teacher.shape[1], bias=False)
            return nn.Sequential(nn.Linear(student.shape[1], teacher.shape[1]), nn.BatchNorm1d(teacher.shape[1]),
                                 nn.ReLU(inplace=True))
        raise ConfigError(f"loss fitnet: student feature {tuple(student.shape)} and teacher feature "
                          f"{tuple(teacher.shape)}: expected two B x C x H x W maps or two B x C vectors")

    def forward(self, inputs) -> torch.Tensor:
        pairs = inputs.feature_pairs("fitnet", example="{loss: fitnet, student: layer2, teacher: layer3}")
        if len(pairs) != 1:
            raise ConfigError(f"loss fitnet: the term pairs {len(pairs)} student and teacher features; a hint pairs "
                              "one student layer with one teacher layer: give student: and teacher: one module path "
                              "each (or one term per pair)")
        student, teacher, _ = pairs[0]
        if self.regressor is None:
            self.regressor = self._build(student, teacher).to(student.device).train(self.training)
        hint = self.regressor(student)
        if hint.shape != teacher.shape:
            raise ConfigError(f"loss fitnet: the regressor maps student feature {_shape(student)} to {_shape(hint)}, "
                              f"not the teacher's {_shape(teacher)}; tap layers whose sizes the regressor can match")
        return F.mse_loss(hint, teacher)
