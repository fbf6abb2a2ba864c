"""A Hugging Face classifier as a kdkit model: called on a batch, it returns plain logits."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["HFClassifier"]


class HFClassifier(nn.Module):
    """Wraps a ``...ForImageClassification`` / ``...ForSequenceClassification`` model (``self.model``)
    so that ``forward`` returns the logits tensor of its output object, as every kdkit model does.

    :param task: ``"image"``: ``forward(pixels)`` (``B x C x H x W``); ``"sequence"``:
        ``forward(input_ids)`` or ``forward({"input_ids": ..., "attention_mask": ...})``.
    """

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs, **kwargs):
        if isinstance(inputs, Mapping):
            return self.model(**inputs, **kwargs).logits
        name = "pixel_values" if self.task == "image" else "input_ids"
        return self.model(**{name: inputs}, **kwargs).logits
