"""The multimodal teacher T_x and the relaxed-noun embedding bank."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdkit import ConfigError

from kdkit_wordnet_relax.config import EMBEDDING_MODES  # declared with the config


class NounBank(nn.Module):
    """The relaxed nouns' embeddings ``N`` [M, d] and the exact class-name embeddings [C, d].

    Modes (the paper's Table 3 ablation):

    * ``learnable`` (default): ``N`` is an ``nn.Parameter`` initialised from CLIP, trained with
      T_x (own optimiser group, weight decay 1e-4) and re-normalised after every step
      (:meth:`renormalize`); ``anchor`` keeps the CLIP embeddings for ``L_cosreg``;
    * ``fixed``: ``N`` stays the CLIP embeddings (a buffer);
    * ``noise``: ``N`` is replaced by random unit vectors (seeded) — text without meaning.

    ``class_emb`` (exact class names, template ensemble) is a buffer used for the un-relaxed
    samples (label leakage) and as the target of ``L_hier``.
    """

    def __init__(self, noun_emb: torch.Tensor, class_emb: torch.Tensor, mode: str = "learnable", seed: int = 0):
        super().__init__()
        if mode not in EMBEDDING_MODES:
            raise ConfigError(f"tx.embedding: expected one of {', '.join(EMBEDDING_MODES)}; got {mode!r}")
        self.mode = mode
        noun_emb = F.normalize(noun_emb.detach().float(), dim=-1)
        if mode == "noise":
            g = torch.Generator().manual_seed(int(seed))
            noun_emb = F.normalize(torch.randn(noun_emb.shape, generator=g), dim=-1)
        self.register_buffer("anchor", noun_emb.clone())
        if mode == "learnable":
            self.nouns = nn.Parameter(noun_emb.clone())
        else:
            self.register_buffer("nouns", noun_emb.clone())
        self.register_buffer("class_emb", F.normalize(class_emb.detach().float(), dim=-1))

    @property
    def learnable(self) -> bool:
        return self.mode == "learnable"

    def retrieve(self, v: torch.Tensor, tau: float) -> torch.Tensor:
        """``normalize(softmax(v @ N.T / tau) @ N)`` for image embeddings ``v`` [B, d]."""
        n = self.nouns
        weights = torch.softmax((v.float() @ n.float().T) / float(tau), dim=-1)
        return F.normalize(weights @ n.float(), dim=-1)

    def text_for(self, v: torch.Tensor, y: torch.Tensor | None, relaxed: torch.Tensor | None, tau: float):
        """Text embeddings per sample: retrieved where ``relaxed`` is True (or ``y``/``relaxed``
        is None), the exact class name ``class_emb[y]`` elsewhere."""
        t = self.retrieve(v, tau)
        if y is None or relaxed is None:
            return t
        exact = self.class_emb[y]
        return torch.where(relaxed.view(-1, 1).bool(), t, exact)

    def cosreg(self) -> torch.Tensor:
        """``mean_j (1 - cos(n_j, n_j_pretrained))``."""
        return (1.0 - F.cosine_similarity(self.nouns.float(), self.anchor, dim=-1)).mean()

    @torch.no_grad()
    def renormalize(self) -> None:
        if self.learnable:
            self.nouns.copy_(F.normalize(self.nouns, dim=-1))


class MLPHead(nn.Module):
    """``[BatchNorm] -> 2d -> hidden -> hidden -> C`` with ReLU and dropout (the authors' rebuttal MLP)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.1,
                 input_norm: bool = True):
        super().__init__()
        # Unit-norm CLIP embeddings have tiny coordinates dominated by a shared direction; a
        # BatchNorm on the input standardises them (``tx.input_norm``; the authors' MLP has none).
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim) if input_norm else nn.Identity(),
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultimodalTeacher(nn.Module):
    """T_x: ``logits = backbone(concat(v, t))``.

    ``backbone`` is an :class:`MLPHead` on the ``2d`` vector, or a convolutional network whose
    first convolution takes ``2d`` channels (the authors' ResNet-50 with
    ``conv1 = Conv2d(2d, 64, 7, 2, 3)``), fed the vector as a ``[B, 2d, 1, 1]`` image.
    """

    def __init__(self, backbone: nn.Module, spatial: bool):
        super().__init__()
        self.backbone = backbone
        self.spatial = bool(spatial)

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([v.float(), t.float()], dim=-1)
        if self.spatial:
            x = x[:, :, None, None]
        return self.backbone(x)
