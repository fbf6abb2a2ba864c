"""More feature distillation losses: AB, FT, FSP, CC and MGD (``ab``, ``ft``, ``fsp``, ``cc``, ``mgd``).

Each class is a loss factory of the ``losses`` registry: ``Loss(**options)`` returns a callable
``loss(inputs) -> scalar Tensor`` that reads the term's tapped features through
:meth:`kdkit.distill.DistillInputs.feature_pairs` (float32, the teacher detached).  Those with
trainable parts (AB's connectors, FT's translator, CC's embedding heads, MGD's generation block) are
``nn.Module`` s: built on the first call from the shapes they see, in the loss's own train/eval
mode (so the set-up call, run in eval mode, leaves their BatchNorm statistics alone), trained with
the student, checkpointed with the stage.  Every loss is computed in float32 with autocast off.

AB, FSP and FT are the three methods RepDistiller trains in two stages (``train_student.py`` calls
``helper/pretrain.py``'s ``init()`` for them); the ``ab``, ``fsp`` and ``ft`` methods
(:mod:`kdkit_methods.init_stage`) run those stages.  :class:`Paraphraser` and :class:`Translator` are
FT's two modules, :func:`ab_hinge`, :func:`fsp_matrix`, :func:`rbf_correlation` the formulas on
their own, for tests and reuse.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

import kdkit
from kdkit.distill import conv_regressor
from kdkit_methods.feature import _check_maps, _no_autocast, _pool_to_smaller, _shape

__all__ = [
    "CC_KERNELS",
    "CONNECTORS",
    "FACTORS",
    "MGD_MASKS",
    "ABLoss",
    "CCLoss",
    "FSPLoss",
    "FTLoss",
    "MGDLoss",
    "Paraphraser",
    "Translator",
    "ab_hinge",
    "fsp_matrix",
    "rbf_correlation",
]

#: AB's connector rule: ``auto`` (RepDistiller: identity when the shapes match), ``always`` (the paper's)
CONNECTORS = ("auto", "always")
#: FT's factor map: ``attention`` (RepDistiller's ``FactorTransfer(p1=2)``), ``flat`` (the paper's)
FACTORS = ("attention", "flat")
#: CC's correlation: ``rbf`` (the paper's Taylor-expanded Gaussian kernel), ``consecutive`` (RepDistiller's)
CC_KERNELS = ("rbf", "consecutive")
#: MGD's mask: ``channel`` (the reference's classification code), ``spatial`` (its detection code)
MGD_MASKS = ("channel", "spatial")


# --------------------------------------------------------------------------------------------- helpers

def _choice(loss: str, option: str, value, choices) -> str:
    if value not in choices:
        raise kdkit.ConfigError(f"loss {loss}: option {option} is {value!r}; choose one of {', '.join(choices)}")
    return value


def _maps(loss: str, pairs) -> None:
    for s, t, where in pairs:
        _check_maps(loss, s, t, where)


def _built_for(loss: str, built, now, what: str) -> None:
    if built != now:
        raise kdkit.ConfigError(f"loss {loss}: built for {what} {built}, now given {now}; a term must tap the same "
                                "layers on every batch")


# ------------------------------------------------------------------------------------------------- AB

def ab_hinge(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """The activation-boundary loss of one layer, summed over every element (RepDistiller
    ``ABLoss.criterion_alternative_l2``): ``(s + m)^2`` where the teacher neuron is off (``t <= 0``)
    and the student's is not below ``-m``, plus ``(s - m)^2`` where the teacher neuron is on
    (``t > 0``) and the student's is not above ``m``."""
    off = ((source > -margin) & (target <= 0)).to(source.dtype)
    on = ((source <= margin) & (target > 0)).to(source.dtype)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


class ABLoss(nn.Module):
    """Activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019, arXiv:1811.03233), registered as ``ab``.

    ``student:`` / ``teacher:`` list the stages, shallow to deep (``B x C x H x W`` maps).  Each
    student stage ``s_i`` goes through a connector ``r_i`` to the teacher stage's shape and is
    compared with the sign of the teacher's pre-activation ``t_i`` through the margin hinge
    (:func:`ab_hinge`), summed over the elements; the stages are weighted ``w_i = 2^(i - n + 1)``
    (the deepest 1, each shallower one half the next) and the sum is scaled as in the reference::

        ab = 3/1000 * (1/B) * sum_i w_i * sum_{b,c,h,w} [ (r(s) + m)^2 * 1(r(s) > -m, t <= 0)
                                                        + (r(s) - m)^2 * 1(r(s) <= m, t > 0) ]

    **Pre-activations.**  The reference taps both networks *before* each stage's last ReLU
    (``preact=True``).  On the teacher side only the sign matters, and ``relu(t) > 0`` exactly when
    ``t > 0``, so the post-ReLU stage outputs (``layer1..3``) give the same loss.  On the student
    side the values matter: kdkit's CIFAR ResNets apply that ReLU functionally, so no module
    outputs it; with ``preact_pairs: true`` the student list gives two paths per stage — the last
    block's ``bn2`` and its ``shortcut`` — whose sum *is* the pre-activation
    (``relu(bn2(...) + shortcut(x))``).  Without it the student's tapped outputs are used as they are.

    Connectors (built on the first call, trained with the student; BatchNorm statistics update
    only in training mode): ``connector: auto`` (default) — RepDistiller's ``Connector``: none
    where the student stage already has the teacher's channels and size, else a convolution with
    bias and BatchNorm (``ConvReg(use_relu=False)``); ``always`` — the paper's, a connector on
    every stage.  ``ConvReg``'s convolution follows the two sizes: 1x1 when they are equal, 3x3
    stride 2 when the student's is twice the teacher's, a 4x4 stride-2 transposed one when half,
    a ``(1 + s - t)`` kernel when otherwise larger (a smaller one is a one-line error).

    Options (RepDistiller ``distiller_zoo/AB.py``, ``train_student.py``):

    :param margin: ``1.0`` (``ABLoss(feat_num, margin=1.0)``).
    :param connector: ``auto`` or ``always`` (above).
    :param preact_pairs: sum consecutive pairs of student features into one stage (above).

    Weights in the reference: the loss is used alone, weight 1, in the initialisation stage
    (``init()``: ``loss = sum(loss_group)``, 30 epochs), then the student trains with
    cross-entropy only (``-a 0 -b 1``, and ``loss_kd = 0`` for ``abound``): the ``ab`` method.
    """

    def __init__(self, margin: float = 1.0, connector: str = "auto", preact_pairs: bool = False):
        super().__init__()
        self.margin = float(margin)
        self.connector = _choice("ab", "connector", connector, CONNECTORS)
        self.preact_pairs = bool(preact_pairs)
        self.connectors: nn.ModuleList | None = None
        self._shapes: list | None = None

    @staticmethod
    def stage_weights(n: int) -> list[float]:
        """``[2^(i - n + 1) for i in range(n)]``: RepDistiller's ``ABLoss.w``."""
        return [2.0 ** (i - n + 1) for i in range(n)]

    def _student_stages(self, inputs):
        """The term's inputs with the student's (bn2, shortcut) pairs summed when ``preact_pairs``."""
        if not self.preact_pairs:
            return inputs
        student = inputs.student_feature
        if not isinstance(student, (list, tuple)) or len(student) % 2:
            count = len(student) if isinstance(student, (list, tuple)) else 1
            raise kdkit.ConfigError(f"loss ab: option preact_pairs needs two student paths per stage (the last "
                                    f"block's bn2 and its shortcut), got {count}; e.g. student: [layer1.0.bn2, "
                                    "layer1.0.shortcut, layer2.0.bn2, layer2.0.shortcut, layer3.0.bn2, "
                                    "layer3.0.shortcut]")
        summed = []
        for i in range(0, len(student), 2):
            a, b = student[i], student[i + 1]
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
                shapes = [_shape(x) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (a, b)]
                raise kdkit.ConfigError(f"loss ab: student paths {i + 1} and {i + 2} give {shapes[0]} and "
                                        f"{shapes[1]}; preact_pairs sums a block's bn2 and shortcut outputs, which "
                                        "have one shape")
            summed.append(a + b)
        return dataclasses.replace(inputs, student_feature=summed)

    def _make_connector(self, s: torch.Tensor, t: torch.Tensor, where: str) -> nn.Module:
        """RepDistiller's ``Connector``: none (``auto``, same channels and size), else ``ConvReg``
        without its ReLU — a convolution with bias chosen by the two sizes, then BatchNorm."""
        (c_s, s_h, s_w), (c_t, t_h, t_w) = s.shape[1:], t.shape[1:]
        if self.connector == "auto" and (c_s, s_h, s_w) == (c_t, t_h, t_w):
            return nn.Identity()
        conv = conv_regressor(c_s, c_t, (s_h, s_w), (t_h, t_w), loss="ab")
        return nn.Sequential(conv, nn.BatchNorm2d(c_t))

    def forward(self, inputs) -> torch.Tensor:
        example = "{loss: ab, student: [layer1, layer2, layer3], teacher: [layer1, layer2, layer3]}"
        pairs = self._student_stages(inputs).feature_pairs("ab", example=example)
        _maps("ab", pairs)
        with _no_autocast(pairs[0][0].device):
            shapes = [(_shape(s)[1:], _shape(t)[1:]) for s, t, _ in pairs]
            if self.connectors is None:
                built = [self._make_connector(s, t, where) for s, t, where in pairs]
                self.connectors = nn.ModuleList(built).to(pairs[0][0].device).train(self.training)
                self._shapes = shapes
            _built_for("ab", self._shapes, shapes, "(student, teacher) stage shapes")
            weights = self.stage_weights(len(pairs))
            batch = pairs[0][0].shape[0]
            total = None
            for (s, t, _), connector, w in zip(pairs, self.connectors, weights):
                value = w * ab_hinge(connector(s).float(), t, self.margin) / batch * 3.0 / 1000.0
                total = value if total is None else total + value
        return total


# ------------------------------------------------------------------------------------------------ FSP

def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The FSP matrix of two ``B x C x H x W`` maps (the larger pooled to the smaller size):
    ``G[b, j, i] = mean_{h,w} second[b, j, h, w] * first[b, i, h, w]``, ``B x C_second x C_first``
    (RepDistiller ``FSP.compute_fsp``)."""
    first, second = _pool_to_smaller(first, second)
    return torch.bmm(second.flatten(2), first.flatten(2).transpose(1, 2)) / (first.shape[2] * first.shape[3])


class FSPLoss:
    """Flow of solution procedure (Yim, Joo, Bae & Kim, *A Gift from Knowledge Distillation*, CVPR
    2017), registered as ``fsp``.

    ``student:`` / ``teacher:`` list ``n >= 2`` feature maps, shallow to deep.  Each consecutive
    pair ``(f_k, f_{k+1})`` gives an FSP matrix (:func:`fsp_matrix`: the inner products of their
    channels averaged over the positions, the larger map average-pooled to the smaller), and the
    loss is the mean squared difference of the student's and the teacher's matrices, summed over
    the ``n - 1`` pairs::

        fsp = sum_k mean_{b,j,i} (G_s^k[b, j, i] - G_t^k[b, j, i])^2

    The matrices are ``C_{k+1} x C_k``, so student and teacher must have the same channel count at
    every tapped layer (the reference raises too: "num of channels not equal").

    Taps: RepDistiller compares ``feat[:-1]`` — the stem's output (after its ReLU) and the three
    stage outputs, i.e. each stage's input and output.  In kdkit's CIFAR ResNets the stem's ReLU is
    functional, but the first block's identity shortcut outputs exactly its input:
    ``[layer1.0.shortcut, layer1, layer2, layer3]``.

    Source: HobbitLong/RepDistiller ``distiller_zoo/FSP.py`` (used alone, weight 1, in the
    initialisation stage: ``init()``'s ``loss = sum(loss_group)``; the second stage trains with
    cross-entropy only, ``loss_kd = 0``): the ``fsp`` method.  No options.
    """

    name = "fsp"

    def __init__(self):
        pass

    def __call__(self, inputs) -> torch.Tensor:
        example = "{loss: fsp, student: [layer1.0.shortcut, layer1, layer2, layer3], teacher: [...the same]}"
        pairs = inputs.feature_pairs("fsp", example=example)
        _maps("fsp", pairs)
        if len(pairs) < 2:
            raise kdkit.ConfigError("loss fsp compares the flow between consecutive layers: give student: and teacher: "
                                    f"lists of at least 2 module paths ({example})")
        for s, t, where in pairs:
            if s.shape[1] != t.shape[1]:
                raise kdkit.ConfigError(f"loss fsp: student feature {_shape(s)} and teacher feature {_shape(t)}{where} "
                                        "have different channel counts; FSP matrices need equal ones (a student of the "
                                        "teacher's width)")
        with _no_autocast(pairs[0][0].device):
            total = None
            for (s0, t0, _), (s1, t1, _) in itertools.pairwise(pairs):
                value = (fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).mean()
                total = value if total is None else total + value
        return total

    def __repr__(self) -> str:
        return "FSPLoss()"


# ------------------------------------------------------------------------------------------------- FT

def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class Paraphraser(nn.Module):
    """FT's paraphraser (RepDistiller ``models/util.py``, ``use_bn=False``): an encoder of three 3x3
    convolutions ``C -> C -> k -> k`` and a decoder of three 3x3 transposed convolutions
    ``k -> k -> C -> C``, each followed by LeakyReLU(0.1).  ``forward(x) -> (factor, reconstruction)``;
    :meth:`encode` gives the factor alone."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, k = int(channels), int(factor_channels)
        self.channels, self.factor_channels = c, k
        self.encoder = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), _leaky(), nn.Conv2d(c, k, 3, 1, 1), _leaky(),
                                     nn.Conv2d(k, k, 3, 1, 1), _leaky())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(k, k, 3, 1, 1), _leaky(), nn.ConvTranspose2d(k, c, 3, 1, 1),
                                     _leaky(), nn.ConvTranspose2d(c, c, 3, 1, 1), _leaky())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor):
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's translator (RepDistiller ``models/util.py``, ``use_bn=True``): three 3x3 convolutions
    ``C_s -> C_s -> k -> k``, each followed by BatchNorm and LeakyReLU(0.1)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, k = int(channels), int(factor_channels)
        self.encoder = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), _leaky(),
                                     nn.Conv2d(c, k, 3, 1, 1), nn.BatchNorm2d(k), _leaky(),
                                     nn.Conv2d(k, k, 3, 1, 1), nn.BatchNorm2d(k), _leaky())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class FTLoss(nn.Module):
    """Factor transfer (Kim, Park & Kwak, *Paraphrasing Complex Network*, NeurIPS 2018,
    arXiv:1802.04977), registered as ``ft``.

    One student and one teacher map (``B x C x H x W``).  A :class:`Paraphraser`, trained
    beforehand as an autoencoder of the teacher's map and then frozen, gives the teacher factor
    ``F_t = enc(t)`` (``k = int(rate * C_t)`` channels); a :class:`Translator`, built on the first
    call and trained with the student, gives the student factor ``F_s = trans(s)`` with the same
    ``k`` channels.  The larger factor is average-pooled to the smaller's size, each is mapped to
    a normalised vector ``phi`` and the term is their mean ``p``-distance::

        ft = mean_{b,j} |phi(F_s)[b, j] - phi(F_t)[b, j]|^p
        phi(F) = normalise(mean_c F_c^2)   (factor: attention; RepDistiller's FactorTransfer(p1=2))
        phi(F) = normalise(vec F)          (factor: flat; the paper's F / ||F||_2)

    ``normalise``: L2 per sample.  The paraphraser comes from the ``ft`` method, which trains it
    first (:meth:`set_paraphraser`); the loss without one is a one-line error.  The paraphraser
    stays frozen and in eval mode (RepDistiller keeps it out of the optimiser and calls
    ``.eval()`` on it); it is part of the loss's state, so checkpoints keep it.

    Options (RepDistiller ``distiller_zoo/FT.py``, ``models/util.py``, ``train_student.py``):

    :param rate: ``0.5``, the paraphraser's ``k`` (factor channels ``int(C_t * k)``).
    :param p: ``1``, the distance exponent (``p2=1``: the L1 distance, as the paper).
    :param factor: ``attention`` (default, RepDistiller) or ``flat`` (the paper, the authors' code,
        torchdistill's ``FTLoss``).

    Weights in the reference: cross-entropy 1, no KL term, ``ft`` weight 200 (``-a 0 -b 200``) on the
    last stage's output (``feat[-2]`` = ``layer3``).
    """

    def __init__(self, rate: float = 0.5, p: float = 1.0, factor: str = "attention"):
        super().__init__()
        self.rate = float(rate)
        if not 0 < self.rate <= 1:
            raise kdkit.ConfigError(f"loss ft: option rate is {rate!r}; it must lie in (0, 1]")
        self.p = float(p)
        self.factor = _choice("ft", "factor", factor, FACTORS)
        self.translator: Translator | None = None
        self.paraphraser: Paraphraser | None = None
        self._channels: tuple | None = None

    def factor_channels(self, teacher_channels: int) -> int:
        """``int(teacher_channels * rate)`` (RepDistiller ``Paraphraser``), at least 1."""
        return max(1, int(teacher_channels * self.rate))

    def make_paraphraser(self, teacher_channels: int) -> Paraphraser:
        """A new (untrained) paraphraser for a teacher map of ``teacher_channels``."""
        return Paraphraser(teacher_channels, self.factor_channels(teacher_channels))

    def set_paraphraser(self, paraphraser: Paraphraser) -> None:
        """Use ``paraphraser`` (trained): frozen, in eval mode, kept in the loss's state."""
        for p in paraphraser.parameters():
            p.requires_grad_(False)
        self.paraphraser = paraphraser.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.paraphraser is not None:
            self.paraphraser.eval()  # frozen: the stage's train() does not wake it
        return self

    def _phi(self, f: torch.Tensor) -> torch.Tensor:
        if self.factor == "attention":
            f = f.pow(2).mean(1)
        return F.normalize(f.flatten(1), p=2, dim=1)

    def forward(self, inputs) -> torch.Tensor:
        pairs = inputs.feature_pairs("ft", example="{loss: ft, student: layer3, teacher: layer3}")
        _maps("ft", pairs)
        if len(pairs) != 1:
            raise kdkit.ConfigError(f"loss ft: the term pairs {len(pairs)} student and teacher features; factor transfer "
                                    "pairs one student map with one teacher map: give student: and teacher: one module "
                                    "path each")
        s, t, _ = pairs[0]
        if self.paraphraser is None:
            raise kdkit.ConfigError("loss ft has no trained paraphraser; the ft method trains one on the teacher's "
                                    "feature first (kdkit train --method ft), or give the loss one "
                                    "(FTLoss.set_paraphraser)")
        if self.paraphraser.channels != t.shape[1]:
            raise kdkit.ConfigError(f"loss ft: the paraphraser takes {self.paraphraser.channels} channels, the teacher "
                                    f"feature {_shape(t)} has {t.shape[1]}; train it on the feature the term taps")
        with _no_autocast(s.device):
            if self.translator is None:
                k = self.paraphraser.factor_channels
                self.translator = Translator(s.shape[1], k).to(s.device).train(self.training)
                self._channels = (s.shape[1], t.shape[1])
            _built_for("ft", self._channels, (s.shape[1], t.shape[1]), "(student, teacher) channels")
            with torch.no_grad():
                factor_t = self.paraphraser.encode(t).float()
            factor_s = self.translator(s).float()
            factor_s, factor_t = _pool_to_smaller(factor_s, factor_t)
            diff = self._phi(factor_s) - self._phi(factor_t)
            return diff.abs().mean() if self.p == 1 else diff.abs().pow(self.p).mean()


# ------------------------------------------------------------------------------------------------- CC

def rbf_correlation(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """The ``B x B`` correlation of the rows of ``x`` under the Gaussian RBF kernel expanded to
    ``order`` (the rows L2-normalised, ``s_ij`` their cosine):
    ``C_ij = sum_{p=0}^{order} exp(-2 gamma) (2 gamma)^p / p! * s_ij^p``."""
    x = F.normalize(x, p=2, dim=1)
    sim = x @ x.t()
    corr = torch.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return corr


def _vector(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


class CCLoss(nn.Module):
    """Correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, ICCV 2019,
    arXiv:1904.01802), registered as ``cc``.

    The penultimate student and teacher features (``B x D``; a map is global-average-pooled) go
    through linear embedding heads to ``embed_dim`` — RepDistiller's ``LinearEmbed`` on both sides,
    built on the first call and trained with the student (the teacher's head too, as in the
    reference) — and the term compares the correlations among the samples of the batch::

        cc = mean_{i,j} (C^s_ij - C^t_ij)^2,   C_ij = sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * cos(e_i, e_j)^p

    (``kernel: rbf``, :func:`rbf_correlation`: the paper's Gaussian RBF kernel
    ``exp(-gamma ||e_i - e_j||^2)`` of L2-normalised embeddings, Taylor-expanded to order ``P``).
    ``kernel: consecutive`` is RepDistiller's ``Correlation`` instead (the code its authors shared):
    ``mean_i sum_d |e^s_i - e^t_i|_d * |e^s_{i+1} - e^t_{i+1}|_d`` over consecutive samples, which
    needs ``embed_dim`` (both sides of one width).

    Options:

    :param gamma: ``0.4``; :param order: ``2`` — the paper's 2nd-order expansion with the values
        of AberHu/Knowledge-Distillation-Zoo ``train_kd.py`` (``--gamma 0.4 --P_order 2``), whose
        ``kd_losses/cc.py`` is this formula (RepDistiller has no RBF form).
    :param embed_dim: ``128``, the heads' width (RepDistiller ``--feat_dim 128``,
        ``LinearEmbed(feat[-1], feat_dim)``); ``null``: no heads, the features themselves.
    :param kernel: ``rbf`` (default) or ``consecutive`` (above).

    Weights: with ``rbf`` the CC term weight 100 of Knowledge-Distillation-Zoo
    (``--lambda_kd 100.0``, cross-entropy 1, no KL term); RepDistiller's weight 0.02 (``-a 0
    -b 0.02``) belongs to its ``consecutive`` form.
    """

    def __init__(self, gamma: float = 0.4, order: int = 2, embed_dim: int | None = 128, kernel: str = "rbf"):
        super().__init__()
        self.gamma = float(gamma)
        self.order = int(order)
        if self.order < 0:
            raise kdkit.ConfigError(f"loss cc: option order is {order!r}; it must be 0 or more")
        self.embed_dim = None if embed_dim is None else int(embed_dim)
        self.kernel = _choice("cc", "kernel", kernel, CC_KERNELS)
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None

    def _pair(self, inputs):
        pairs = inputs.feature_pairs("cc", example="{loss: cc, student: pool, teacher: pool}")
        if len(pairs) != 1:
            raise kdkit.ConfigError(f"loss cc: the term pairs {len(pairs)} student and teacher features; it takes one "
                                    "embedding per side: give student: and teacher: one module path each (e.g. pool)")
        s, t, _ = pairs[0]
        if s.dim() not in (2, 4) or t.dim() not in (2, 4):
            raise kdkit.ConfigError(f"loss cc: student feature {_shape(s)} and teacher feature {_shape(t)}: expected "
                                    "B x D vectors or B x C x H x W maps (global-average-pooled)")
        return _vector(s), _vector(t)

    def embeddings(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' outputs (the features themselves without heads)."""
        if self.embed_dim is None:
            return f_s, f_t
        if self.embed_s is None:
            heads = (nn.Linear(f_s.shape[1], self.embed_dim), nn.Linear(f_t.shape[1], self.embed_dim))
            self.embed_s, self.embed_t = (h.to(f_s.device).train(self.training) for h in heads)
        _built_for("cc", (self.embed_s.in_features, self.embed_t.in_features), (f_s.shape[1], f_t.shape[1]),
                   "(student, teacher) widths")
        return self.embed_s(f_s), self.embed_t(f_t)

    def forward(self, inputs) -> torch.Tensor:
        f_s, f_t = self._pair(inputs)
        with _no_autocast(f_s.device):
            e_s, e_t = (e.float() for e in self.embeddings(f_s, f_t))
            if self.kernel == "consecutive":
                if e_s.shape != e_t.shape:
                    raise kdkit.ConfigError(f"loss cc: kernel consecutive compares the embeddings element by element, "
                                            f"but they are {_shape(e_s)} and {_shape(e_t)}; set embed_dim")
                delta = (e_s - e_t).abs()
                return (delta[:-1] * delta[1:]).sum(1).mean()
            return (rbf_correlation(e_s, self.gamma, self.order)
                    - rbf_correlation(e_t, self.gamma, self.order)).pow(2).mean()


# ------------------------------------------------------------------------------------------------ MGD

class MGDLoss(nn.Module):
    """Masked generative distillation (Yang, Li, Shu, Li, Yuan & Zhang, ECCV 2022,
    arXiv:2205.01529), registered as ``mgd``.

    One student and one teacher map of the same spatial size.  The student map is aligned to the
    teacher's channels by a 1x1 convolution (with bias; none when the counts already match),
    randomly masked — each channel of each sample (``mask: channel``, the reference's
    classification code) or each position (``mask: spatial``, its detection and segmentation code)
    is zeroed with probability ``lambda_mgd`` (torch's global RNG) — and a generation block
    (3x3 conv, ReLU, 3x3 conv, with biases, ``C_t`` channels) must rebuild the teacher's map from it::

        mgd = alpha_mgd * (1/B) * sum_{b,c,h,w} (G(M * align(s)) - t)^2

    The align and generation convolutions are built on the first call and trained with the student.

    Options (yzd-v/MGD ``cls/mmcls/distillation/losses/mgd.py`` and the classification configs
    ``cls/configs/distillers/mgd/res34_distill_res18_img.py``, ``res50_distill_mv1_img.py``):

    :param alpha_mgd: ``7e-5`` (``alpha_mgd=0.00007``).
    :param lambda_mgd: ``0.15``, the masked ratio (``lambda_mgd=0.15``).
    :param mask: ``channel`` (default) or ``spatial``.

    Weights in the reference: the student's cross-entropy 1, no KL term, ``mgd`` weight 1 (the
    scale is ``alpha_mgd``), on the last stage's output (``fea_s[-1]``: ``layer3`` of kdkit's CIFAR
    ResNets).
    """

    def __init__(self, alpha_mgd: float = 7e-5, lambda_mgd: float = 0.15, mask: str = "channel"):
        super().__init__()
        self.alpha_mgd = float(alpha_mgd)
        self.lambda_mgd = float(lambda_mgd)
        if not 0 <= self.lambda_mgd < 1:
            raise kdkit.ConfigError(f"loss mgd: option lambda_mgd is {lambda_mgd!r}; it must lie in [0, 1)")
        self.mask = _choice("mgd", "mask", mask, MGD_MASKS)
        self.align: nn.Module | None = None
        self.generation: nn.Sequential | None = None
        self._channels: tuple | None = None

    def draw_mask(self, like: torch.Tensor) -> torch.Tensor:
        """``B x C x 1 x 1`` (channel) or ``B x 1 x H x W`` (spatial) of 0 (probability
        ``lambda_mgd``) and 1, from torch's global RNG."""
        b, c, h, w = like.shape
        shape = (b, c, 1, 1) if self.mask == "channel" else (b, 1, h, w)
        return (torch.rand(shape, device=like.device) >= self.lambda_mgd).to(like.dtype)

    def forward(self, inputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        pairs = inputs.feature_pairs("mgd", example="{loss: mgd, student: layer3, teacher: layer3}")
        _maps("mgd", pairs)
        if len(pairs) != 1:
            raise kdkit.ConfigError(f"loss mgd: the term pairs {len(pairs)} student and teacher features; give student: "
                                    "and teacher: one module path each (the last stage, e.g. layer3)")
        s, t, _ = pairs[0]
        if s.shape[2:] != t.shape[2:]:
            raise kdkit.ConfigError(f"loss mgd: student feature {_shape(s)} and teacher feature {_shape(t)} differ in "
                                    "spatial size; tap maps of equal resolution")
        with _no_autocast(s.device):
            c_s, c_t = s.shape[1], t.shape[1]
            if self.generation is None:
                self.align = (nn.Conv2d(c_s, c_t, kernel_size=1) if c_s != c_t else nn.Identity()).to(s.device)
                self.generation = nn.Sequential(nn.Conv2d(c_t, c_t, 3, padding=1), nn.ReLU(inplace=True),
                                                nn.Conv2d(c_t, c_t, 3, padding=1)).to(s.device)
                self.align.train(self.training)
                self.generation.train(self.training)
                self._channels = (c_s, c_t)
            _built_for("mgd", self._channels, (c_s, c_t), "(student, teacher) channels")
            aligned = self.align(s)
            mask = self.draw_mask(aligned) if mask is None else mask.to(aligned)
            generated = self.generation(aligned * mask).float()
            return self.alpha_mgd * (generated - t).pow(2).sum() / s.shape[0]
