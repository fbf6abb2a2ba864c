"""Logit-based distillation losses: DKD, DIST and logit-standardised KD.

Each class follows kdkit's loss contract: ``Loss(**options)`` validates its options (from a term's
``options:`` mapping) and ``loss(inputs)`` returns a scalar for one
:class:`kdkit.distill.DistillInputs`, already multiplied by the method's own scale (``T^2``).  The
term's ``weight`` multiplies the returned value; ``distill.alpha`` weights the cross-entropy.

The teacher's logits are detached: no gradient reaches a teacher.  Everything is computed in
float32 at least (float16 / bfloat16 logits are upcast, float64 stays float64).  The public
helpers (:func:`dkd_parts`, :func:`dkd_warmup_factor`, :func:`pearson_rows`,
:func:`dist_relations`, :func:`zscore`) expose the pieces so that the papers' identities can be
checked on their own.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import kdkit

__all__ = ["DISTLoss", "DKDLoss", "LogitStandardKDLoss", "dist_relations", "dkd_parts", "dkd_warmup_factor",
           "pearson_rows", "zscore"]


# --------------------------------------------------------------------------------------------- checks
def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _logits(loss: str, inputs):
    """``(student, teacher)`` logits of ``inputs``, checked to be the same ``B x C`` (``C >= 2``),
    at least float32, the teacher's detached."""
    s, t = inputs.student_logits, inputs.teacher_logits
    if t is None:
        raise kdkit.ConfigError(f"loss {loss} distils logits, but it was given no teacher logits")
    if s.dim() != 2 or tuple(s.shape) != tuple(t.shape):
        raise kdkit.ConfigError(f"loss {loss}: student logits have shape {tuple(s.shape)} and teacher logits "
                                f"{tuple(t.shape)}; both must be the same B x C (same batch, same classes)")
    if s.shape[1] < 2:
        raise kdkit.ConfigError(f"loss {loss}: logits of shape {tuple(s.shape)}: it needs at least 2 classes")
    return _upcast(s), _upcast(t.detach())


def _upcast(x):
    """``x`` in float32 at least (half / bfloat16 logits are computed in float32, float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _temperature(loss: str, option, inputs) -> float:
    t = option if option is not None else inputs.temperature
    t = float(t)
    if not (math.isfinite(t) and t > 0):
        raise kdkit.ConfigError(f"loss {loss}: temperature must be in (0, inf), got {t!r}")
    return t


# ---------------------------------------------------------------------------------------------- DKD
def dkd_parts(student_logits, teacher_logits, labels, temperature: float = 1.0):
    """Per-sample ``(tckd, nckd)`` of decoupled KD, each of shape ``(B,)``, *not* scaled by ``T^2``.

    With ``p = softmax(s / T)`` (student), ``q = softmax(t / T)`` (teacher) and ``y`` the label:

    * ``tckd = KL([q_y, 1 - q_y] || [p_y, 1 - p_y])`` — the binary target-vs-rest distributions;
    * ``nckd = KL(q_{\\y} / (1 - q_y) || p_{\\y} / (1 - p_y))`` — the distributions over the
      non-target classes (the target class removed, the rest renormalised).

    Classical KD decomposes exactly as ``KL(q || p) = tckd + (1 - q_y) * nckd`` (Zhao et al. 2022,
    Sec. 3.1).  Computed in log space (the non-target mass as a logsumexp), so it stays finite when a
    probability rounds to 0 or 1.
    """
    s = _upcast(student_logits) / temperature
    t = _upcast(teacher_logits) / temperature
    b, c = s.shape
    y = labels.reshape(-1).long().unsqueeze(1)
    # the C-1 non-target class indices of each row (gathered: no host sync, unlike a boolean mask)
    other = torch.arange(c - 1, device=s.device).unsqueeze(0).expand(b, -1)
    other = other + (other >= y).long()
    log_p, log_q = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    # binary distributions [target, rest], in log space
    log_p_y, log_q_y = log_p.gather(1, y).squeeze(1), log_q.gather(1, y).squeeze(1)
    log_p_rest = log_p.gather(1, other).logsumexp(dim=1)
    log_q_rest = log_q.gather(1, other).logsumexp(dim=1)
    log_pb = torch.stack([log_p_y, log_p_rest], dim=1)
    log_qb = torch.stack([log_q_y, log_q_rest], dim=1)
    tckd = F.kl_div(log_pb, log_qb, reduction="none", log_target=True).sum(dim=1)
    # distributions over the C-1 non-target classes
    log_p_nt = F.log_softmax(s.gather(1, other), dim=1)
    log_q_nt = F.log_softmax(t.gather(1, other), dim=1)
    nckd = F.kl_div(log_p_nt, log_q_nt, reduction="none", log_target=True).sum(dim=1)
    return tckd, nckd


def dkd_warmup_factor(epoch: int, warmup: float) -> float:
    """``min((epoch + 1) / warmup, 1)`` for kdkit's 0-based ``epoch`` (1 when ``warmup`` is 0).

    mdistiller computes ``min(epoch / warmup, 1)`` with 1-based epochs; ``epoch + 1`` gives the same
    factor per epoch (1/20 in the first epoch with ``warmup: 20``, 1 from the 20th), never 0.
    """
    if warmup <= 0:
        return 1.0
    return min((int(epoch) + 1) / float(warmup), 1.0)


class DKDLoss:
    """Decoupled knowledge distillation (DKD): Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge
    Distillation", CVPR 2022, arXiv:2203.08679.

    ``loss = w(epoch) * T^2 * mean_b(alpha * TCKD_b + beta * NCKD_b)`` with ``TCKD`` and ``NCKD``
    of :func:`dkd_parts` (binary target/non-target KL, and KL among the non-target classes) and
    ``w(epoch) = min((epoch + 1) / warmup, 1)`` (:func:`dkd_warmup_factor`).  Needs the labels.

    :param alpha: TCKD weight, ``[0, inf)``; default 1.0.
    :param beta: NCKD weight, ``[0, inf)``; default 8.0 (the paper's CIFAR-100 ResNet32x4 ->
        ResNet8x4 value; mdistiller's configs use 2.0 for ResNet56/110 -> ResNet20/32, 6.0 for the
        VGG/WRN pairs, 0.5 (R34 -> R18) and 2.0 (R50 -> MobileNet) on ImageNet).
    :param temperature: ``T``; ``None`` (default) uses ``distill.temperature`` (``inputs.temperature``,
        kdkit's default 4.0 — the paper's CIFAR-100 value; ImageNet uses 1.0).
    :param warmup: epochs of linear warm-up, ``[0, inf)``; default 20 (CIFAR-100; 1 on ImageNet);
        0 disables it.

    Defaults from mdistiller ``mdistiller/engine/cfg.py`` (``DKD.ALPHA 1.0, BETA 8.0, T 4.0,
    WARMUP 20, CE_WEIGHT 1.0``) and ``mdistiller/distillers/DKD.py``, where the factor is
    ``min(epoch / WARMUP, 1)`` with epochs counted from 1 (``mdistiller/engine/trainer.py``).  kdkit
    counts epochs from 0, hence ``epoch + 1``: the factor per epoch is the reference's.  NCKD is
    computed over the non-target classes exactly (the reference subtracts 1000 from the target
    logit instead) and TCKD in log space.
    """

    name = "dkd"

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float | None = None,
                 warmup: float = 20):
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = _optional_float(temperature)
        self.warmup = float(warmup)

    def __repr__(self) -> str:
        return (f"DKDLoss(alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
                f"warmup={self.warmup:g})")

    def __call__(self, inputs):
        s, t = _logits(self.name, inputs)
        labels = inputs.labels
        if labels is None:
            raise kdkit.ConfigError("loss dkd needs the batch's labels (DistillInputs.labels is None)")
        if labels.reshape(-1).shape[0] != s.shape[0]:
            raise kdkit.ConfigError(f"loss dkd: labels of shape {tuple(labels.shape)} for logits of shape "
                                    f"{tuple(s.shape)}")
        temp = _temperature(self.name, self.temperature, inputs)
        tckd, nckd = dkd_parts(s, t, labels.to(s.device), temp)
        value = (self.alpha * tckd + self.beta * nckd).mean() * (temp * temp)
        return dkd_warmup_factor(inputs.epoch, self.warmup) * value


# --------------------------------------------------------------------------------------------- DIST
def pearson_rows(a, b, eps: float = 1e-8):
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (shape ``(rows,)``):
    the cosine of the mean-centred rows, ``eps`` added to the product of their norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(y_s, y_t, eps: float = 1e-8):
    """``(inter, intra)`` of DIST for probabilities ``y_s, y_t`` (``B x C``):
    ``inter = 1 - mean_b pearson(y_s[b, :], y_t[b, :])`` (across classes, per sample) and
    ``intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])`` (across the batch, per class)."""
    inter = 1.0 - pearson_rows(y_s, y_t, eps).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t(), eps).mean()
    return inter, intra


class DISTLoss:
    """DIST: Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022, arXiv:2205.10536.

    ``loss = tau^2 * (beta * inter + gamma * intra)`` on ``y = softmax(z / tau)`` of student and
    teacher, ``inter = 1 - mean_b rho(y_s[b,:], y_t[b,:])`` (Pearson across classes, per sample)
    and ``intra = 1 - mean_c rho(y_s[:,c], y_t[:,c])`` (Pearson across the batch, per class);
    see :func:`dist_relations`.  Pearson is the cosine of the centred vectors with ``1e-8`` added
    to the product of norms, as in the reference.  With a batch of 1, ``intra`` is the constant 1
    (no gradient).

    :param beta: inter-class weight, ``[0, inf)``; default 1.0.
    :param gamma: intra-class weight, ``[0, inf)``; default 1.0.
    :param tau: softmax temperature, ``(0, inf)``, or ``None`` for ``distill.temperature``;
        default 1.0 (ImageNet; the CIFAR-100 recipe uses 4.0).

    Defaults from hunto/image_classification_sota (the code DIST_KD points to)
    ``lib/models/losses/dist_kd.py`` (``DIST(beta=1.0, gamma=1.0, tau=1.0)``, the ``tau^2``
    factor) and ``lib/models/losses/kd_loss.py`` (``'dist'`` -> tau 1, ``'dist_t4'`` -> tau 4);
    its configs ``configs/strategies/distill/{resnet_dist,dist_b2,dist_cifar}.yaml`` weight the
    term by ``kd_loss_weight: 2`` with ``ori_loss_weight: 1`` (CE), i.e. effective
    ``beta = gamma = 2`` relative to the CE: use term weight 2.0 with the defaults here.
    """

    name = "dist"

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float | None = 1.0):
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.tau = _optional_float(tau)

    def __repr__(self) -> str:
        return f"DISTLoss(beta={self.beta}, gamma={self.gamma}, tau={self.tau})"

    def __call__(self, inputs):
        s, t = _logits(self.name, inputs)
        tau = _temperature(self.name, self.tau, inputs)
        inter, intra = dist_relations(F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1))
        return (tau * tau) * (self.beta * inter + self.gamma * intra)


# --------------------------------------------------------------------------------------------- LSKD
def zscore(logits, eps: float = 1e-7):
    """Each row's z-score: ``(z - mean(z)) / (std(z) + eps)``, ``std`` the unbiased (``C - 1``)
    standard deviation over the classes, as in the reference."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


class LogitStandardKDLoss:
    """Logit-standardised KD: Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024, arXiv:2403.01427.

    ``loss = T^2 * mean_b KL(softmax(Z(t_b) / T) || softmax(Z(s_b) / T))`` with
    ``Z(z) = (z - mean(z)) / (std(z) + eps)`` per sample (:func:`zscore`) — Hinton KD on z-scored
    logits, i.e. each sample's temperature is ``T * std(z)`` for student and teacher separately.
    Invariant to adding a constant to, or scaling by a positive factor, either model's logits.

    :param temperature: base temperature ``T``, ``(0, inf)``, or ``None`` for
        ``distill.temperature``; default 2.0.
    :param eps: added to the standard deviation, ``(0, inf)``; default 1e-7.

    From sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py`` (``normalize``:
    ``logit.std`` — unbiased — plus ``1e-7``; ``kd_loss``: KL summed over classes, batch mean,
    ``* temperature**2``) and ``tools/train.py`` (``--base-temp 2``, ``--kd-weight 9``) with
    ``mdistiller/engine/cfg.py`` (``KD.LOSS.CE_WEIGHT 0.1``): the CIFAR-100 recipe is
    ``distill.alpha: 0.1`` and term weight 9.0; the reference's ImageNet config keeps CE weight 1.0.
    """

    name = "lskd"

    def __init__(self, temperature: float | None = 2.0, eps: float = 1e-7):
        self.temperature = _optional_float(temperature)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"LogitStandardKDLoss(temperature={self.temperature}, eps={self.eps:g})"

    def __call__(self, inputs):
        s, t = _logits(self.name, inputs)
        temp = _temperature(self.name, self.temperature, inputs)
        log_p = F.log_softmax(zscore(s, self.eps) / temp, dim=1)
        log_q = F.log_softmax(zscore(t, self.eps) / temp, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (temp * temp)
