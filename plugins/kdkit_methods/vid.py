"""Variational information distillation (VID): the ``vid`` loss of the ``losses`` registry.

See :class:`VIDLoss`.  :func:`vid_nll` is the per-layer formula on its own (a regressor output, a
target and a variance), and :func:`pred_variance` the learned variance, for tests and reuse.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdkit

__all__ = ["VIDLoss", "vid_nll", "pred_variance", "variance_logit"]


def variance_logit(init_pred_var: float, eps: float) -> float:
    """The ``alpha`` for which ``softplus(alpha) + eps == init_pred_var`` (RepDistiller's
    ``log(exp(init_pred_var - eps) - 1)``)."""
    return math.log(math.expm1(init_pred_var - eps))


def pred_variance(alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """The per-channel variance ``softplus(alpha) + eps`` (RepDistiller writes ``log(1 + exp(alpha))``)."""
    return F.softplus(alpha) + eps


def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``mean over B, C, H, W of 0.5 * (log var_c + (mu - t)^2 / var_c)``: the Gaussian negative
    log-likelihood of ``target`` under ``N(pred_mean, var_c)`` without the constant
    ``0.5 * log(2 pi)``, averaged over every element, as in RepDistiller/mdistiller ``VID``.

    ``pred_mean`` / ``target``: ``B x C x H x W``; ``variance``: ``C`` (one per channel)."""
    var = variance.view(1, -1, *([1] * (pred_mean.dim() - 2)))
    return torch.mean(0.5 * ((pred_mean - target) ** 2 / var + torch.log(var)))


def _shape(x) -> tuple:
    return tuple(x.shape)


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """``B x C`` vectors as ``B x C x 1 x 1`` maps (the regressor is made of 1x1 convolutions)."""
    return x[:, :, None, None] if x.dim() == 2 else x


def _layers(inputs) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``[(student, teacher, where)]``: one pair per tapped layer (float32, the teacher detached:
    :meth:`kdkit.distill.DistillInputs.feature_pairs`) as two maps of one spatial size."""
    pairs = []
    for s, t, where in inputs.feature_pairs(
            "vid", example="{loss: vid, student: [layer1, layer2, layer3], teacher: [layer1, layer2, layer3]}"):
        if s.dim() not in (2, 4) or t.dim() != s.dim():
            raise kdkit.ConfigError(f"loss vid: student feature {_shape(s)} and teacher feature {_shape(t)}{where}: "
                                    "expected two B x C x H x W maps or two B x C vectors")
        s, t = _as_map(s), _as_map(t)
        (sh, sw), (th, tw) = s.shape[2:], t.shape[2:]
        if (sh, sw) != (th, tw):
            # RepDistiller/mdistiller: average-pool the larger map down to the smaller one
            if sh >= th and sw >= tw:
                s = F.adaptive_avg_pool2d(s, (th, tw))
            elif th >= sh and tw >= sw:
                t = F.adaptive_avg_pool2d(t, (sh, sw))
            else:
                raise kdkit.ConfigError(
                    f"loss vid: student feature {_shape(s)} and teacher feature {_shape(t)}{where} cannot be pooled "
                    "to one spatial size (each is larger in one dimension); tap layers of comparable resolution")
        pairs.append((s, t, where))
    return pairs


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019,
    arXiv:1904.05835), registered as ``vid``.

    For each tapped layer pair ``(s, t)`` a regressor ``mu(s)`` — three 1x1 convolutions without
    bias, ``C_s -> C_mid -> C_mid -> C_t`` with ReLU between them — predicts the mean of a Gaussian
    over the teacher feature, with a learned variance per teacher channel
    ``var_c = softplus(alpha_c) + eps``; the term is the negative log-likelihood averaged over every
    element (:func:`vid_nll`, the constant ``0.5 log 2 pi`` dropped as in the reference)::

        vid = sum over layers of mean_{b,c,h,w} 0.5 * (log var_c + (mu(s) - t)^2 / var_c)

    ``student:`` / ``teacher:`` name one module each or equal-length lists (paired in order); the
    per-layer values are **summed** (RepDistiller ``train_student.py`` ``sum(group_loss)``,
    mdistiller ``loss_vid +=``).  ``B x C`` vectors are treated as ``B x C x 1 x 1`` maps.  When the
    spatial sizes of a pair differ, the larger map is adaptive-average-pooled down to the smaller
    one, as RepDistiller/mdistiller do (a pair that is larger in one dimension and smaller in the
    other is a ConfigError).  The teacher feature is detached; the term is computed in float32.

    Regressors and ``alpha`` (``log_scales``) are built on the first call from the channel counts
    it sees and train with the student; later calls must bring the same layers.

    Options (defaults from RepDistiller ``distiller_zoo/VID.py`` and ``train_student.py``, which
    mdistiller ``mdistiller/distillers/VID.py`` / ``engine/cfg.py`` repeat):

    :param init_pred_var: the initial variance, ``5.0`` (``alpha`` starts at
        ``log(exp(init_pred_var - eps) - 1)``).
    :param eps: the variance floor, ``1e-5``.
    :param mid_channels: ``C_mid`` of the regressors; ``None`` (default): the teacher layer's
        channel count, as ``VIDLoss(s, t, t)`` in RepDistiller.

    Weights in the references: ``vid`` weight 1 (``-b 1``, ``FEAT_WEIGHT 1.0``) with cross-entropy
    weight 1 and no KL term, on ``layer1``, ``layer2``, ``layer3`` of the CIFAR ResNets.
    (mdistiller keeps ``alpha`` in a plain list, so it is never trained there; RepDistiller and the
    paper train it, and so does kdkit.)
    """

    def __init__(self, init_pred_var: float = 5.0, eps: float = 1e-5, mid_channels: int | None = None):
        super().__init__()
        self.eps = float(eps)
        self.init_pred_var = float(init_pred_var)
        if self.init_pred_var <= self.eps:
            raise kdkit.ConfigError(f"loss vid: option init_pred_var ({init_pred_var!r}) must exceed eps ({eps!r})")
        self.mid_channels = mid_channels
        self.regressors: nn.ModuleList | None = None
        self.log_scales: nn.ParameterList | None = None
        self._channels: list[tuple[int, int]] | None = None

    def _build(self, pairs, device) -> None:
        channels = [(s.shape[1], t.shape[1]) for s, t, _ in pairs]
        regressors, scales = [], []
        for c_s, c_t in channels:
            mid = self.mid_channels or c_t
            regressors.append(nn.Sequential(
                nn.Conv2d(c_s, mid, kernel_size=1, bias=False), nn.ReLU(),
                nn.Conv2d(mid, mid, kernel_size=1, bias=False), nn.ReLU(),
                nn.Conv2d(mid, c_t, kernel_size=1, bias=False)))
            scales.append(nn.Parameter(torch.full((c_t,), variance_logit(self.init_pred_var, self.eps))))
        self.regressors = nn.ModuleList(regressors).to(device)
        self.log_scales = nn.ParameterList(scales).to(device)
        self._channels = channels

    def _check_layers(self, pairs) -> None:
        channels = [(s.shape[1], t.shape[1]) for s, t, _ in pairs]
        if channels != self._channels:
            raise kdkit.ConfigError(f"loss vid: built for (student, teacher) channels {self._channels}, now given "
                                    f"{channels}; a term must tap the same layers on every batch")

    def variances(self) -> list[torch.Tensor]:
        """Each layer's per-channel variance ``softplus(alpha) + eps`` (after the first call)."""
        return [pred_variance(a, self.eps) for a in self.log_scales]

    def forward(self, inputs) -> torch.Tensor:
        pairs = _layers(inputs)
        if self.regressors is None:
            self._build(pairs, pairs[0][0].device)
        self._check_layers(pairs)
        total = None
        for (s, t, _), regressor, alpha in zip(pairs, self.regressors, self.log_scales):
            value = vid_nll(regressor(s).float(), t, pred_variance(alpha.float(), self.eps))
            total = value if total is None else total + value
        return total
