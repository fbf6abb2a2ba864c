"""Knowledge review (ReviewKD): the ``reviewkd`` loss of the ``losses`` registry.

See :class:`ReviewKDLoss`.  :class:`ABF` is the attention-based fusion module and :func:`hcl_loss`
the hierarchical context loss, for tests and reuse.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdkit

__all__ = ["ReviewKDLoss", "ABF", "hcl_loss", "HCL_LEVELS", "warmup_factor"]

#: the pooled pyramid levels of the hierarchical context loss (mdistiller / ReviewKD ``hcl``)
HCL_LEVELS = (4, 2, 1)


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """``min((epoch + 1) / warmup_epochs, 1)`` for kdkit's 0-based ``epoch`` (1 when
    ``warmup_epochs`` is 0): mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epochs."""
    if warmup_epochs <= 0:
        return 1.0
    return min((int(epoch) + 1) / float(warmup_epochs), 1.0)


def hcl_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor],
             levels: Sequence[int] = HCL_LEVELS) -> torch.Tensor:
    """The hierarchical context loss, summed over the stage pairs: per pair
    ``(mse(s, t) + sum_l w_l * mse(pool_l(s), pool_l(t))) / (1 + sum_l w_l)`` over the pyramid
    levels ``l`` smaller than the map (``min(H, W)``), ``pool_l`` adaptive average pooling to
    ``l x l`` and weights ``w = 1/2, 1/4, 1/8`` in the order the levels are used (mdistiller
    ``hcl_loss``; MSE is the mean over elements)."""
    total = None
    for s, t in zip(students, teachers):
        loss = F.mse_loss(s, t)
        weight, norm = 1.0, 1.0
        for level in levels:
            if level >= min(s.shape[2], s.shape[3]):
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            norm += weight
        loss = loss / norm
        total = loss if total is None else total + loss
    return total


class ABF(nn.Module):
    """Attention-based fusion (ReviewKD): ``conv1`` (1x1 conv + BN) maps the student stage to
    ``mid`` channels; when ``fuse``, the deeper stage's fused map ``residual`` is upsampled
    (nearest) to this stage's size and the two are mixed with two sigmoid attention maps from a
    1x1 conv on their concatenation; ``conv2`` (3x3 conv + BN) maps the fused map to the teacher's
    ``out`` channels.  ``forward(x, residual) -> (output, fused)``; the fused map feeds the next,
    shallower stage."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("ABF: a fusing module needs the deeper stage's fused map")
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        return self.conv2(x), x


def _shape(x) -> tuple:
    return tuple(x.shape)


def _stage(x: torch.Tensor, which: str, where: str) -> torch.Tensor:
    if x.dim() == 2:
        x = x[:, :, None, None]  # a pooled B x C feature is a 1 x 1 stage (the references' last one)
    if x.dim() != 4:
        raise kdkit.ConfigError(f"loss reviewkd: {which} {where} has shape {_shape(x)}; "
                                "expected B x C x H x W maps (or pooled B x C vectors)")
    return x


class ReviewKDLoss(nn.Module):
    """Distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021,
    arXiv:2104.09044), registered as ``reviewkd``.

    ``student:`` and ``teacher:`` list the same number of stages, **shallow to deep**
    (``B x C x H x W`` maps; a pooled ``B x C`` feature counts as a ``1 x 1`` stage, as the
    references' last stage).  Channel counts may differ between student and teacher; spatial sizes
    must match stage by stage and must not grow with depth.  One :class:`ABF` per stage, built on
    the first call, maps the student stages — fused from the deepest to the shallowest, each stage
    attending over its own map and the upsampled fused map of the stage below — to the teacher's
    channel count at that stage.  The term is the hierarchical context loss (:func:`hcl_loss`)
    between those outputs ``r_i`` and the (detached) teacher stages ``t_i``, times a linear
    warm-up::

        reviewkd = min((epoch + 1) / warmup_epochs, 1) * sum_i HCL(r_i, t_i)
        HCL(r, t) = (mse(r, t) + 1/2 mse_4 + 1/4 mse_2 + 1/8 mse_1) / (1 + 1/2 + 1/4 + 1/8)

    (``mse_l``: of the ``l x l`` adaptive-average-pooled maps, only levels ``l`` below the map's
    size.)  kdkit's epochs count from 0, so ``epoch + 1`` gives mdistiller's factor (1-based
    epochs): 1/20 in the first epoch, 1 from the 20th.  The ABFs are built in the loss's own mode,
    so their BatchNorm statistics update only in training mode (not in the set-up call).

    Options (defaults from mdistiller ``mdistiller/distillers/ReviewKD.py`` and ``engine/cfg.py``,
    which follow dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py``):

    :param mid_channels: the ABFs' fused width; ``None`` (default): the references' rule
        ``min(512, C)`` with ``C`` the channel count of the student's deepest stage (256 for
        resnet8x4, 64 for resnet20, and so suited to kdkit's small widths).
    :param warmup_epochs: epochs of linear warm-up, ``20`` (mdistiller ``WARMUP_EPOCHS``,
        ReviewKD ``--kd-warm-up``); 0 switches it off.

    Weights in the references: cross-entropy 1, no KL term; ``reviewkd`` weight 1.0 by default in
    mdistiller (``REVIEWKD_WEIGHT``), 5.0 in its resnet32x4 -> resnet8x4 config and the ReviewKD
    scripts for x4/WRN pairs, 0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32.
    """

    def __init__(self, mid_channels: int | None = None, warmup_epochs: float = 20):
        super().__init__()
        self.mid_channels = mid_channels
        self.warmup_epochs = float(warmup_epochs)
        self.abfs: nn.ModuleList | None = None
        self._channels: list[tuple[int, int]] | None = None

    def _stages(self, inputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The student and teacher stages (float32, the teacher detached), shallow to deep."""
        pairs = inputs.feature_pairs(
            "reviewkd", example="{loss: reviewkd, student: [layer1, layer2, layer3, pool], "
                                "teacher: [layer1, layer2, layer3, pool]}, shallow to deep")
        students, teachers = [], []
        for i, (s, t, _) in enumerate(pairs):
            where = f"stage {i + 1} of {len(pairs)}"
            s, t = _stage(s, "student", where), _stage(t, "teacher", where)
            if s.shape[2:] != t.shape[2:]:
                raise kdkit.ConfigError(f"loss reviewkd: student {_shape(s)} and teacher {_shape(t)} at {where} differ "
                                        "in spatial size; pair stages of equal resolution")
            if i and (s.shape[2] > students[-1].shape[2] or s.shape[3] > students[-1].shape[3]):
                raise kdkit.ConfigError(f"loss reviewkd: {where} {_shape(s)} is larger than stage {i} "
                                        f"{_shape(students[-1])}; list the stages shallow to deep")
            students.append(s)
            teachers.append(t)
        return students, teachers

    def _build(self, students, teachers, device) -> None:
        channels = [(s.shape[1], t.shape[1]) for s, t in zip(students, teachers)]
        mid = self.mid_channels or min(512, channels[-1][0])
        last = len(channels) - 1
        abfs = nn.ModuleList(ABF(c_s, mid, c_t, fuse=i < last) for i, (c_s, c_t) in enumerate(channels))
        # in the loss's own mode: the set-up call (Distiller.materialize, eval mode) must not move BN statistics
        self.abfs = abfs.to(device).train(self.training)
        self._channels = channels

    def review(self, students: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs for the student stages (shallow to deep in, shallow to deep out): the
        deepest stage first, each shallower one fused with the fused map of the one below."""
        outputs: list[torch.Tensor] = [None] * len(students)  # type: ignore[list-item]
        residual = None
        for i in range(len(students) - 1, -1, -1):
            outputs[i], residual = self.abfs[i](students[i], residual)
        return outputs

    def forward(self, inputs) -> torch.Tensor:
        students, teachers = self._stages(inputs)
        if self.abfs is None:
            self._build(students, teachers, students[0].device)
        channels = [(s.shape[1], t.shape[1]) for s, t in zip(students, teachers)]
        if channels != self._channels:
            raise kdkit.ConfigError(f"loss reviewkd: built for (student, teacher) channels {self._channels}, now given "
                                    f"{channels}; a term must tap the same stages on every batch")
        results = [r.float() for r in self.review(students)]
        return warmup_factor(inputs.epoch, self.warmup_epochs) * hcl_loss(results, teachers)
