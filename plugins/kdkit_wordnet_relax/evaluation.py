"""What ``wordnet_relax`` measures of an image classifier: top-1 with the softmax entropy the paper
reports.  Importing this module is cheap (torch loads when a function runs)."""
from __future__ import annotations

__all__ = ["entropy", "image_eval"]


def entropy(logits):
    """Mean entropy (nats) of ``softmax(logits)``."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean().item()) if logits.numel() else float("nan")


def image_eval(model, loader) -> dict:
    """``{"top1", "loss", "entropy"}`` of an image classifier over ``loader`` (the engine's
    classification evaluation with the softmax entropy the paper reports)."""
    from kdkit import classification_eval

    return classification_eval(model, loader, entropy=True)
