"""Feature distillation losses without trainable parts: AT, PKT, RKD, SP and NST.

Each class is a loss factory of the ``losses`` registry (``at``, ``pkt``, ``rkd``, ``sp``, ``nst``):
``Loss(**options)`` returns a callable ``loss(inputs) -> scalar Tensor`` that reads the term's tapped
features ``inputs.student_feature`` / ``inputs.teacher_feature`` (:class:`kdkit.distill.DistillInputs`).

* One module path per side gives one tensor per side; a list of paths
  (``student: [layer1, layer2, layer3]``) gives lists, compared pair by pair in order, and the
  loss is the **sum** over the pairs (as RepDistiller and mdistiller sum their per-layer losses).
* Every value is normalised exactly as in the reference implementations (RepDistiller
  ``distiller_zoo/``, which mdistiller repeats), so the weights used there apply unchanged as the
  term's ``weight``.
* The teacher feature is detached; both sides are computed in float32 with autocast disabled.
* A missing feature, lists of different lengths, different batch sizes
  (:meth:`kdkit.distill.DistillInputs.feature_pairs`) or a feature the method cannot use is a
  one-line :class:`kdkit.ConfigError` naming the shapes.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import kdkit

__all__ = ["ATLoss", "NSTLoss", "PKTLoss", "RKDLoss", "SPLoss"]


# --------------------------------------------------------------------------------------------- helpers

def _shape(x: torch.Tensor) -> tuple:
    return tuple(x.shape)


def _no_autocast(device: torch.device):
    """A context with autocast off on ``device`` (the losses are computed in float32)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast
        return contextlib.nullcontext()


def _check_maps(loss: str, s: torch.Tensor, t: torch.Tensor, where: str) -> None:
    """A one-line error unless ``s`` and ``t`` are both ``B x C x H x W`` maps."""
    if s.dim() != 4 or t.dim() != 4:
        raise kdkit.ConfigError(f"loss {loss}: student feature {_shape(s)} and teacher feature {_shape(t)}{where}: "
                                "expected two B x C x H x W maps (tap convolutional stages such as layer1, layer2, "
                                "layer3)")


def _pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps brought to one spatial size: the larger one is adaptive-average-pooled to the smaller
    (per dimension), as RepDistiller's AT, NST, FSP and FT do."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if tuple(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def _maps(loss: str, s: torch.Tensor, t: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``B x C x H x W`` maps (:func:`_check_maps`) brought to the same spatial size (:func:`_pool_to_smaller`)."""
    _check_maps(loss, s, t, where)
    return _pool_to_smaller(s, t)


def _vectors(x: torch.Tensor, pool: bool) -> torch.Tensor:
    """``B x D``: ``x`` flattened, or (``pool``) averaged over its spatial dimensions first."""
    if pool and x.dim() > 2:
        x = x.flatten(2).mean(2)
    return x.flatten(1)


class _FeatureLoss:
    """Sum of :meth:`pair` over the term's (student, teacher) feature pairs."""

    name = ""

    def __call__(self, inputs) -> torch.Tensor:
        pairs = inputs.feature_pairs(self.name)
        with _no_autocast(pairs[0][0].device):
            values = [self.pair(s, t, where) for s, t, where in pairs]
        return values[0] if len(values) == 1 else torch.stack(values).sum()

    def pair(self, student: torch.Tensor, teacher: torch.Tensor, where: str) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


# ------------------------------------------------------------------------------------------------- AT

class ATLoss(_FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928).

    For a ``B x C x H x W`` map ``A`` the spatial attention map is
    ``Q(A) = vec(mean_c |A_c|^p)`` (``B x HW``), L2-normalised per sample.  One pair of layers gives
    ``mean_{b, j} (Q_s[b, j] / ||Q_s[b]|| - Q_t[b, j] / ||Q_t[b]||)^2``; a list of layers gives the
    sum over the pairs.  Channel counts may differ; when the spatial sizes differ the larger map
    is adaptive-average-pooled to the smaller one (RepDistiller/mdistiller do the same).

    :param p: the exponent (default 2, the paper's and the references' choice).

    Source: HobbitLong/RepDistiller ``distiller_zoo/AT.py`` (``Attention(p=2)``,
    ``(at(f_s) - at(f_t)).pow(2).mean()`` summed over ``layer1..layer3``; weight ``-b 1000``,
    ``-a 0``), mdistiller ``AT.P = 2``, ``FEAT_WEIGHT = 1000``, ``CE_WEIGHT = 1``.  Usual term weight
    1000.  The references raise to ``p`` without ``abs``; for even ``p`` (the default) that is the
    same, for other ``p`` this takes ``|A|^p`` as in the paper.
    """

    name = "at"

    def __init__(self, p: float = 2.0):
        self.p = float(p)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        q = x.pow(2) if self.p == 2 else x.abs().pow(self.p)
        return F.normalize(q.mean(1).flatten(1), p=2, dim=1)

    def pair(self, student, teacher, where):
        student, teacher = _maps("at", student, teacher, where)
        return (self._attention(student) - self._attention(teacher)).pow(2).mean()


# ------------------------------------------------------------------------------------------------ PKT

class PKTLoss(_FeatureLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, arXiv:1803.10837).

    The features (flattened to ``B x D``) are divided by their L2 norm plus ``eps``; their cosine
    similarities ``K_ij``, shifted to ``[0, 1]`` as ``(K_ij + 1) / 2``, are normalised per row into
    conditional distributions ``P_ij = K_ij / sum_k K_ik`` (the diagonal included), and the loss is
    ``mean_{i, j} P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps))`` — KL(teacher || student) averaged
    over all ``B^2`` entries (not summed per row), as in the reference.  Channel counts may differ.

    :param eps: 1e-7, the reference's.
    :param pool: average 4-D features over their spatial positions before flattening (default
        false: flatten, as the reference does with what it is given).  The reference uses the
        pooled penultimate embedding: tap kdkit's ``pool`` module (``B x feature_dim``), or, in a
        model without such a module, its last stage with ``pool: true``.

    Source: HobbitLong/RepDistiller ``distiller_zoo/PKT.py`` (code from the authors' repository
    passalis/probabilistic_kt; applied to the pooled feature ``feat[-1]``, ``-a 0 -b 30000``),
    mdistiller ``PKT.LOSS.FEAT_WEIGHT = 30000``.  Usual term weight 30000.
    """

    name = "pkt"

    def __init__(self, eps: float = 1e-7, pool: bool = False):
        self.eps = float(eps)
        self.pool = bool(pool)

    def _distribution(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + self.eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        similarity = (x @ x.t() + 1.0) / 2.0
        return similarity / similarity.sum(dim=1, keepdim=True)

    def pair(self, student, teacher, where):
        p_s = self._distribution(_vectors(student, self.pool))
        p_t = self._distribution(_vectors(teacher, self.pool))
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


# ------------------------------------------------------------------------------------------------ RKD

class RKDLoss(_FeatureLoss):
    """Relational knowledge distillation (Park et al., CVPR 2019, arXiv:1904.05068).

    On ``B x D`` features (flattened):

    * distance-wise: ``psi_D(i, j) = ||x_i - x_j|| / mu`` with ``mu`` the mean of the positive
      distances in the batch (the squared distances are clamped at ``eps`` before the square root,
      the diagonal is 0); ``L_D = smooth_l1(psi_D^s, psi_D^t)`` averaged over the ``B^2`` pairs;
    * angle-wise: ``psi_A(i, j, k) = <e_ij, e_ik>`` with ``e_ij = (x_j - x_i) / ||x_j - x_i||`` (0 when
      ``x_j = x_i``, as with ``F.normalize``); ``L_A = smooth_l1(psi_A^s, psi_A^t)`` averaged over the
      ``B^3`` triplets (the degenerate ones included, as in the reference);
    * loss ``= distance_weight * L_D + angle_weight * L_A`` (smooth L1 = Huber with beta 1).

    Invariant to a global scale of either feature; channel counts may differ.  A batch of one
    sample has no pairs: the loss is 0.  Memory grows as ``B^2 * D`` (the angle term), so tap a
    pooled embedding, as the paper does.

    :param distance_weight: 25; :param angle_weight: 50 (RepDistiller ``RKDLoss(w_d=25, w_a=50)``,
        mdistiller ``RKD.DISTANCE_WEIGHT = 25``, ``RKD.ANGLE_WEIGHT = 50``).
    :param squared: compare squared distances (default false; mdistiller ``RKD.PDIST.SQUARED``).
    :param eps: 1e-12, the clamp of the squared distances (mdistiller ``RKD.PDIST.EPSILON``).
    :param pool: average 4-D features over their spatial positions first (see :class:`PKTLoss`);
        the references use the pooled penultimate embedding (RepDistiller ``feat[-1]``, mdistiller
        ``pooled_feat``).

    Usual term weight 1 (RepDistiller ``-a 0 -b 1``, mdistiller ``RKD.LOSS.FEAT_WEIGHT = 1``).
    """

    name = "rkd"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, squared: bool = False,
                 eps: float = 1e-12, pool: bool = False):
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise kdkit.ConfigError("loss rkd: options distance_weight and angle_weight are both 0, so the term would "
                                    "distil nothing; make at least one positive")
        self.squared = bool(squared)
        self.eps = float(eps)
        self.pool = bool(pool)

    def _distances(self, x: torch.Tensor) -> torch.Tensor:
        sq = x.pow(2).sum(1)
        d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())).clamp(min=self.eps)
        if not self.squared:
            d = d.sqrt()
        off_diagonal = 1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype)
        d = d * off_diagonal
        return d / d[d > 0].mean()

    @staticmethod
    def _angles(x: torch.Tensor) -> torch.Tensor:
        edges = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(x_j - x_i)
        return torch.bmm(edges, edges.transpose(1, 2)).flatten()

    def pair(self, student, teacher, where):
        student, teacher = _vectors(student, self.pool), _vectors(teacher, self.pool)
        if len(student) < 2:
            return student.sum() * 0.0
        loss = student.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(self._distances(student), self._distances(teacher))
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(self._angles(student), self._angles(teacher))
        return loss


# ------------------------------------------------------------------------------------------------- SP

class SPLoss(_FeatureLoss):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, arXiv:1907.09682).

    With ``F`` the feature flattened to ``B x D``, ``G = F F^T`` (``B x B``) is L2-normalised row by
    row, and one pair of layers gives ``||G_t - G_s||_F^2 / B^2``; a list gives the sum over the
    pairs (the paper sums over layer pairs).  Channel counts and spatial sizes may differ (only
    the ``B x B`` matrices are compared).  No options.

    Source: HobbitLong/RepDistiller ``distiller_zoo/SP.py`` ("verified by original author"; applied
    to the last stage's output ``feat[-2]`` = ``layer3``, ``-a 0 -b 3000``), mdistiller
    ``SP.LOSS.FEAT_WEIGHT = 3000`` on ``feats[-1]`` (``layer3``).  Usual term weight 3000.
    """

    name = "sp"

    def __init__(self):
        pass

    @staticmethod
    def _gram(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return F.normalize(x @ x.t(), p=2, dim=1)

    def pair(self, student, teacher, where):
        batch = student.shape[0]
        return (self._gram(teacher) - self._gram(student)).pow(2).sum() / (batch * batch)


# ------------------------------------------------------------------------------------------------ NST

class NSTLoss(_FeatureLoss):
    """Neuron selectivity transfer (Huang & Wang, 2017, arXiv:1707.01219).

    Each channel's spatial activation ``f_c`` (``HW`` values of a ``B x C x H x W`` map) is
    L2-normalised; the loss is the squared MMD between the student's and the teacher's sets of
    channels, per sample, with the polynomial kernel ``k(x, y) = (x^T y + constant)^degree``::

        mean_{i,j} k(t_i, t_j) + mean_{i,j} k(s_i, s_j) - 2 mean_{i,j} k(s_i, t_j)

    averaged over the batch (the biased estimate with every term, so it is 0 when the features
    agree; the teacher-teacher term is constant for the student).  Channel counts may differ;
    when the spatial sizes differ the larger map is adaptive-average-pooled to the smaller one
    (as in the references).  A list of layers gives the sum over the pairs.

    :param degree: 2; :param constant: 0 — the paper's polynomial kernel (d = 2, c = 0), the only
        kernel RepDistiller and mdistiller implement.

    Source: HobbitLong/RepDistiller ``distiller_zoo/NST.py`` (``full_loss = True``, summed over
    ``layer1..layer3``, ``-a 0 -b 50``), mdistiller ``NST.LOSS.FEAT_WEIGHT = 50`` on ``feats[1:]``.
    Usual term weight 50.
    """

    name = "nst"

    def __init__(self, degree: int = 2, constant: float = 0.0):
        self.degree = int(degree)
        self.constant = float(constant)

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.bmm(a, b.transpose(1, 2)) + self.constant).pow(self.degree)

    def pair(self, student, teacher, where):
        student, teacher = _maps("nst", student, teacher, where)
        s = F.normalize(student.flatten(2), p=2, dim=2)
        t = F.normalize(teacher.flatten(2), p=2, dim=2)
        return self._kernel(t, t).mean() + self._kernel(s, s).mean() - 2.0 * self._kernel(s, t).mean()
