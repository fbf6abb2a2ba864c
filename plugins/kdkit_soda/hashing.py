"""SODA's hashing pieces: hash heads, the feature dataset, the pair losses, codes and features
(imported when a soda run starts, not at plugin registration)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdkit import ConfigError

# --- models ----------------------------------------------------------------------------------

class HashHead(nn.Module):
    """``Linear(in -> L) -> Dropout -> tanh`` (the method family's head); with ``hidden > 0``
    ``Linear(in -> hidden) -> ReLU -> Dropout -> Linear(hidden -> L) -> tanh``."""

    def __init__(self, in_dim: int, bits: int, hidden: int = 0, dropout: float = 0.2):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, bits))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, bits), nn.Dropout(dropout))
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class PairHashModel(nn.Module):
    """Two hash heads: ``a`` (images) and ``b`` (label prompts in the teacher, captions in the baseline)."""

    def __init__(self, dim_a: int, dim_b: int, bits: int, hidden: int, dropout: float):
        super().__init__()
        self.a = HashHead(dim_a, bits, hidden, dropout)
        self.b = HashHead(dim_b, bits, hidden, dropout)

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Training calls the (possibly DDP-wrapped) model itself: going through ``.module.a``
        # would skip DDP's forward, and the ranks' gradients would never be averaged.
        return self.a(features_a), self.b(features_b)


class FeatureDataset(Dataset):
    """``(position, image feature, text feature, label-prompt feature, multi-hot label)`` for a subset."""

    def __init__(self, feats: dict, labels: torch.Tensor, indices: np.ndarray):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.image = feats["image"][idx]
        self.text = feats["text"][idx]
        self.label_feat = feats["label"][idx]
        self.labels = labels[idx]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int):
        return i, self.image[i], self.text[i], self.label_feat[i], self.labels[i]


# --- losses ----------------------------------------------------------------------------------

def similarity(la: torch.Tensor, lb: torch.Tensor, kind: str = "hard") -> torch.Tensor:
    """``S_ij = 1`` when samples share a label (``hard``), or the cosine of the label vectors (``cosine``)."""
    if kind == "hard":
        return (la @ lb.T > 0).float()
    if kind == "cosine":
        return F.normalize(la, dim=1) @ F.normalize(lb, dim=1).T
    raise ConfigError(f"config key soda.similarity: expected hard|cosine, got {kind!r}")


def pairwise_nll(ha: torch.Tensor, hb: torch.Tensor, s: torch.Tensor, scale: float) -> torch.Tensor:
    """DCMH's negative log-likelihood of the similarities, averaged over pairs:
    ``theta = scale * ha @ hb.T``; ``mean(softplus(theta) - S * theta)``."""
    theta = scale * (ha @ hb.T)
    return (F.softplus(theta) - s * theta).mean()


def _penalty(h: torch.Tensor) -> torch.Tensor:
    from kdkit import ops  # lazy: loads the compiled extension on first use

    return ops.binarization_penalty(h, reduction="mean")


def mean_average_precision(*args, **kwargs) -> float:
    from kdkit import mean_average_precision as _map

    return _map(*args, **kwargs)


def _balance(h: torch.Tensor) -> torch.Tensor:
    return (h.mean(0) ** 2).mean()


def pack(h: torch.Tensor) -> torch.Tensor:
    """Real codes -> packed uint8 (faiss layout): bit set where ``h >= 0``."""
    from kdkit import ops

    return ops.pack_bits(h.detach().float().cpu().contiguous())


@torch.no_grad()
def encode_features(head: nn.Module, x: torch.Tensor, device, batch_size: int = 4096) -> torch.Tensor:
    """Real-valued head outputs (N, L) in eval mode."""
    was = head.training
    head.eval()
    out = [head(x[s:s + batch_size].to(device)).float().cpu() for s in range(0, x.shape[0], batch_size)]
    head.train(was)
    return torch.cat(out)


def sign_codes(h: torch.Tensor) -> torch.Tensor:
    """``sign`` with ``sign(0) = +1`` (as ``pack_bits``)."""
    return torch.where(h >= 0, 1.0, -1.0)


def normalize_features(feats: dict, fit_idx, mode: str = "standardize") -> dict:
    """``standardize``: per-dimension z-score with the statistics of the training (fit) split;
    ``l2``: unit length; ``none``.  Statistics are kept under ``"_stats"`` for encoding new inputs."""
    if mode == "none":
        return dict(feats)
    out, stats = {}, {}
    idx = torch.as_tensor(np.asarray(fit_idx), dtype=torch.long)
    for k, x in feats.items():
        x = x.float()
        if mode == "standardize":
            mu, sd = x[idx].mean(0), x[idx].std(0).clamp_min(1e-6)
            out[k], stats[k] = (x - mu) / sd, (mu, sd)
        elif mode == "l2":
            out[k] = F.normalize(x, dim=1)
        else:
            raise ConfigError(f"config key soda.feature_norm: expected standardize|l2|none, got {mode!r}")
    out["_stats"] = stats
    return out
