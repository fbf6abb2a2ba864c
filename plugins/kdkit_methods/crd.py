"""Contrastive representation distillation (CRD): the ``crd`` loss of the ``losses`` registry.

See :class:`CRDLoss`.  :func:`nce_loss` is the NCE objective on given scores, for tests and reuse.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import kdkit

__all__ = ["CRDLoss", "nce_loss"]


def nce_loss(probs: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """The NCE loss of RepDistiller's ``ContrastLoss`` on ``probs`` (``B x (K+1)``: column 0 the
    positive's ``P = exp(v . m / T) / Z``, columns 1..K the negatives'), noise ``Pn = 1 / N``::

        -(1/B) * sum_b [ log(P_b0 / (P_b0 + K Pn + eps)) + sum_k log(K Pn / (P_bk + K Pn + eps)) ]
    """
    k = probs.shape[1] - 1
    noise = k / float(num_samples)
    pos, neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order (ranks may hold different
    numbers of rows); the tensors themselves in a single process.  No gradient."""
    if not _is_distributed():
        return list(tensors)
    world = dist.get_world_size()
    rows = torch.tensor([tensors[0].shape[0]], device=tensors[0].device, dtype=torch.long)
    counts = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(counts, rows)
    counts = [int(c.item()) for c in counts]
    most = max(counts)
    out = []
    for t in tensors:
        t = t.detach().contiguous()
        if t.shape[0] < most:
            t = torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))])
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return out


def _first_occurrences(idx: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``idx`` (deterministic)."""
    uniq, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.numel(), device=idx.device)
    first = torch.full((uniq.numel(),), idx.numel(), dtype=torch.long, device=idx.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


def _one(value, which: str):
    """A one-element list of features as its element (crd takes one feature per side)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise kdkit.ConfigError(f"loss crd takes one {which} feature (the penultimate, pooled one), got a list of "
                                    f"{len(value)}; give {which}: one module path (e.g. pool)")
        return value[0]
    return value


def _vector(value: torch.Tensor, which: str) -> torch.Tensor:
    if value.dim() == 4:
        return value.mean(dim=(2, 3))  # global average pooling
    if value.dim() != 2:
        raise kdkit.ConfigError(f"loss crd: the {which} feature has shape {tuple(value.shape)}; expected B x D vectors "
                                "or B x C x H x W maps (global-average-pooled)")
    return value


class CRDLoss(nn.Module):
    """Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699),
    registered as ``crd``.

    The penultimate student and teacher features (``B x D``; a ``B x C x H x W`` map is
    global-average-pooled first) go through linear heads to ``feat_dim`` and are L2-normalised:
    ``v_s``, ``v_t``.  Two memory banks of ``num_samples x feat_dim`` (buffers; rows initialised
    uniformly in ``[-1/sqrt(feat_dim/3), 1/sqrt(feat_dim/3)]``) hold a momentum average of each
    sample's student (``memory_s``) and teacher (``memory_t``) embedding.  For every sample ``i`` of
    the batch, ``K = min(nce_k, num_samples - 1)`` negatives ``j`` are drawn uniformly from the
    other samples with torch's global RNG, and with ``P_s(j) = exp(memory_t[j] . v_s / T) / Z_s``,
    ``P_t(j) = exp(memory_s[j] . v_t / T) / Z_t`` the term is::

        crd = nce(P_s) + nce(P_t),   nce(P) = -(1/B) sum_i [log(P_i,i / (P_i,i + K/N + eps))
                                                             + sum_j log((K/N) / (P_i,j + K/N + eps))]

    (:func:`nce_loss`; ``N = num_samples``, ``eps = 1e-7``).  ``Z_s`` / ``Z_t`` are estimated once,
    on the first training batch, as ``N * mean(exp(scores / T))`` over its positives and negatives
    (buffers ``z_s`` / ``z_t``; -1 until set).  After the loss, the banks' rows of the batch's
    sample indices become ``normalise(nce_mom * row + (1 - nce_mom) * v)``.  The banks, Z and the
    heads match RepDistiller ``crd/criterion.py`` and ``crd/memory.py`` (``memory_v1`` =
    ``memory_s``).

    kdkit specifics:

    * needs ``inputs.indices`` (the bank keys) and ``inputs.num_samples`` (the bank size); built on
      the first call (heads, banks, Z).  Bank and Z change only in training mode, so kdkit's
      materialising call (eval mode) and evaluation leave them alone.
    * several processes: the bank update uses the embeddings and indices gathered from every rank
      (``torch.distributed.all_gather``), and Z is averaged over ranks, so the banks stay identical
      on all ranks; a sample index present on several ranks (DistributedSampler padding) is
      updated once, from the lowest rank.  Negatives are drawn per rank.
    * negatives are drawn uniformly from all other samples (RepDistiller's ``ContrastMemory``
      sampler, which may also draw the positive itself; the reference CIFAR data loader, mode
      ``exact``, draws them from other classes instead — not available here, as kdkit does not
      know every sample's label).  :meth:`sample_negatives` draws them; ``forward(inputs,
      negatives=...)`` takes given ones (``B x K``).
    * computed in float32 with autocast off (``exp(1 / 0.07)`` overflows float16).

    Options (defaults from RepDistiller ``train_student.py``, as mdistiller ``engine/cfg.py``):

    :param feat_dim: embedding size, ``128``.
    :param nce_k: negatives per sample, ``16384`` (capped at ``num_samples - 1``).
    :param nce_t: temperature ``T``, ``0.07``.
    :param nce_mom: bank momentum, ``0.5``.

    Weights in the references: ``crd`` weight 0.8 (``-b 0.8``, mdistiller ``FEAT_WEIGHT 0.8``),
    cross-entropy weight 1, no KL term (``-a 0``; "CRD+KD" adds the KL term with weight 1, T=4).
    """

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_mom: float = 0.5):
        super().__init__()
        self.feat_dim = int(feat_dim)
        self.nce_k = int(nce_k)
        self.nce_t = float(nce_t)
        self.nce_mom = float(nce_mom)
        self.eps = 1e-7
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None
        #: scores against the whole bank (one B x N matmul) when N <= this multiple of K+1, else
        #: the rows of the drawn indices only (RepDistiller's gather + bmm)
        self.dense_ratio = 8

    # ------------------------------------------------------------------ building and checks
    @property
    def built(self) -> bool:
        return self.embed_s is not None

    @property
    def num_samples(self) -> int:
        return self.memory_s.shape[0]

    @property
    def num_negatives(self) -> int:
        return min(self.nce_k, self.num_samples - 1)

    def _check(self, inputs):
        one = dataclasses.replace(inputs, student_feature=_one(inputs.student_feature, "student"),
                                  teacher_feature=_one(inputs.teacher_feature, "teacher"))
        ((f_s, f_t, _),) = one.feature_pairs("crd", example="{loss: crd, student: pool, teacher: pool}")
        f_s, f_t = _vector(f_s, "student"), _vector(f_t, "teacher")
        idx, n = inputs.indices, inputs.num_samples
        if idx is None:
            raise kdkit.ConfigError("loss crd needs the batch's sample indices (DistillInputs.indices), the keys of its "
                                    "memory bank; run it in the student stage (kdkit.distill.StudentStage indexes "
                                    "the training data itself), or pass indices= to the Distiller when calling it "
                                    "from a loop of your own")
        if n is None:
            raise kdkit.ConfigError("loss crd needs the size of the training split (DistillInputs.num_samples) for its "
                                    "memory bank; kdkit.distill.StudentStage sets it before training (from a loop of your own, "
                                    "set Distiller.num_samples to the size of the training split)")
        n = int(n)
        if n < 2:
            raise kdkit.ConfigError(f"loss crd: the training split has {n} sample(s); contrasting needs at least 2")
        idx = torch.as_tensor(idx).reshape(-1).long().to(f_s.device)
        if not (f_s.shape[0] == f_t.shape[0] == idx.shape[0]):
            raise kdkit.ConfigError(f"loss crd: student feature {tuple(f_s.shape)}, teacher feature {tuple(f_t.shape)} "
                                    f"and {idx.shape[0]} sample indices differ in batch size")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise kdkit.ConfigError(f"loss crd: sample indices must lie in [0, {n}) (num_samples), got "
                                    f"[{int(idx.min())}, {int(idx.max())}]")
        if self.built:
            got = (f_s.shape[1], f_t.shape[1], n)
            want = (self.embed_s.in_features, self.embed_t.in_features, self.num_samples)
            if got != want:
                raise kdkit.ConfigError(f"loss crd: built for (student dim, teacher dim, num_samples) {want}, now given "
                                        f"{got}; a term must tap the same layers of the same training split")
        return f_s, f_t, idx, n

    def _build(self, d_s: int, d_t: int, n: int, device) -> None:
        self.embed_s = nn.Linear(d_s, self.feat_dim).to(device)
        self.embed_t = nn.Linear(d_t, self.feat_dim).to(device)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_s", (torch.rand(n, self.feat_dim) * (2 * stdv) - stdv).to(device))
        self.register_buffer("memory_t", (torch.rand(n, self.feat_dim) * (2 * stdv) - stdv).to(device))
        self.register_buffer("z_s", torch.tensor(-1.0, device=device))
        self.register_buffer("z_t", torch.tensor(-1.0, device=device))

    # ------------------------------------------------------------------ the pieces
    def embeddings(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_s, v_t)``: the L2-normalised linear embeddings of ``B x D`` features."""
        return F.normalize(self.embed_s(f_s), dim=1), F.normalize(self.embed_t(f_t), dim=1)

    def sample_negatives(self, idx: torch.Tensor) -> torch.Tensor:
        """``B x K`` indices drawn uniformly (torch's global RNG) from ``[0, N)`` without each
        row's own index ``idx[b]``."""
        draws = torch.randint(0, self.num_samples - 1, (idx.shape[0], self.num_negatives), device=idx.device)
        return draws + (draws >= idx[:, None]).long()

    def _scores(self, v: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """``exp(memory[contrast[b, k]] . v_b / T)``, ``B x (K+1)``."""
        if memory.shape[0] <= self.dense_ratio * contrast.shape[1]:
            # a copy: the backward needs the bank as it is now, and the update changes it in place
            dots = (v @ memory.detach().clone().t()).gather(1, contrast)
        else:
            dots = torch.bmm(memory.detach()[contrast], v[:, :, None])[:, :, 0]
        return torch.exp(dots / self.nce_t)

    def _normaliser(self, name: str, scores: torch.Tensor) -> torch.Tensor:
        """Z: the stored one, else (first training batch) ``N * mean(scores)``, averaged over ranks and stored."""
        z = getattr(self, name)
        if float(z) > 0:
            return z
        estimate = scores.detach().mean() * self.num_samples
        if self.training:
            estimate = kdkit.all_reduce_mean(estimate)
            z.copy_(estimate)
        return estimate

    def contrast_loss(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor,
                      negatives: torch.Tensor) -> torch.Tensor:
        """``nce(P_s) + nce(P_t)`` for the embeddings, the positives ``idx`` (``B``) and the given
        ``negatives`` (``B x K``), against the current banks (Z set on the first training call)."""
        contrast = torch.cat([idx[:, None], negatives.to(idx.device).long()], dim=1)
        out_s = self._scores(v_s, self.memory_t, contrast)  # student embedding vs the teacher bank
        out_t = self._scores(v_t, self.memory_s, contrast)  # teacher embedding vs the student bank
        z_s, z_t = self._normaliser("z_s", out_s), self._normaliser("z_t", out_t)
        n = self.num_samples
        return nce_loss(out_s / z_s, n, self.eps) + nce_loss(out_t / z_t, n, self.eps)

    @torch.no_grad()
    def update_memory(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor) -> None:
        """Rows ``idx`` of the banks become ``normalise(nce_mom * row + (1 - nce_mom) * v)``, with
        every rank's ``(v, idx)`` (one update per distinct index: its first occurrence)."""
        v_s, v_t, idx = _gather_rows(v_s.detach().float(), v_t.detach().float(), idx)
        keep = _first_occurrences(idx)
        v_s, v_t, idx = v_s[keep], v_t[keep], idx[keep]
        m = self.nce_mom
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            mixed = memory[idx] * m + v * (1 - m)
            memory.index_copy_(0, idx, mixed / mixed.norm(dim=1, keepdim=True))

    # ------------------------------------------------------------------ the loss
    def forward(self, inputs, negatives: torch.Tensor | None = None) -> torch.Tensor:
        f_s, f_t, idx, n = self._check(inputs)
        if not self.built:
            self._build(f_s.shape[1], f_t.shape[1], n, f_s.device)
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            v_s, v_t = self.embeddings(f_s, f_t)
            if negatives is None:
                negatives = self.sample_negatives(idx)
            elif tuple(negatives.shape) != (idx.shape[0], self.num_negatives):
                raise kdkit.ConfigError(f"loss crd: negatives of shape {tuple(negatives.shape)}, expected "
                                        f"{(idx.shape[0], self.num_negatives)} (batch x K)")
            loss = self.contrast_loss(v_s, v_t, idx, negatives)
            if self.training:
                self.update_memory(v_s, v_t, idx)
        return loss
