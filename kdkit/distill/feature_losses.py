"""Feature-based distillation losses with trainable parts (registered in :mod:`kdkit.losses`)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit.errors import ConfigError

__all__ = ["HintLoss"]


class HintLoss(nn.Module):
    """FitNet's hint loss (Romero et al., 2015): ``mean((r(f_s) - f_t)^2)`` between the tapped student
    feature ``f_s`` and teacher feature ``f_t``, ``r`` a regressor trained with the student (a 1x1
    convolution for ``B x C x H x W`` maps, a linear layer for ``B x C`` vectors), built on the first
    batch from the two shapes.  Spatial sizes must match.  Registered as ``fitnet`` (:mod:`kdkit.losses`)."""

    def __init__(self):
        super().__init__()
        self.regressor: nn.Module | None = None

    def _build(self, student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
        if student.dim() == 4 and teacher.dim() == 4:
            if student.shape[2:] != teacher.shape[2:]:
                raise ConfigError(f"loss fitnet: student feature {tuple(student.shape[1:])} and teacher feature "
                                  f"{tuple(teacher.shape[1:])} differ in spatial size; tap layers of equal "
                                  "resolution")
            return nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1, bias=False)
        if student.dim() == 2 and teacher.dim() == 2:
            return nn.Linear(student.shape[1], teacher.shape[1], bias=False)
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
            self.regressor = self._build(student, teacher).to(student.device)
        return F.mse_loss(self.regressor(student), teacher)
