"""The ``pooled_cosine`` feature loss (see :func:`kdkit_example.pooled_cosine`)."""
from __future__ import annotations

import torch
from torch import nn

import kdkit


def _pooled(feature: torch.Tensor) -> torch.Tensor:
    """``B x C x ...`` -> ``B x C`` (mean over every position)."""
    feature = feature.float()
    return feature.flatten(2).mean(2) if feature.dim() > 2 else feature


class PooledCosine(nn.Module):
    """``1 - cos(P(pool(f_s)), pool(f_t))``; ``P`` is built on the first batch when channels differ."""

    def __init__(self):
        super().__init__()
        self.project: nn.Module | None = None

    def forward(self, inputs) -> torch.Tensor:
        if inputs.student_feature is None or inputs.teacher_feature is None:
            raise kdkit.ConfigError("loss pooled_cosine compares features: give its term student: and teacher: "
                                    "module paths")
        student, teacher = _pooled(inputs.student_feature), _pooled(inputs.teacher_feature)
        if self.project is None and student.shape[1] != teacher.shape[1]:
            self.project = nn.Linear(student.shape[1], teacher.shape[1], bias=False).to(student.device)
        if self.project is not None:
            student = self.project(student)
        return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=1)).mean()
