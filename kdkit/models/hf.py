"""A Hugging Face classifier as a kdkit model: called on a batch, it returns plain logits."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["HFClassifier"]


class HFClassifier(nn.Module):
    """Wraps a ``...ForImageClassification`` / ``...ForSequenceClassification`` model (``self.model``)
    so that ``forward`` returns the logits tensor of its output object, as every kdkit model does.

    :param task: ``"image"``: ``forward(pixels)`` (``B x C x H x W``); ``"sequence"``:
        ``forward(input_ids)`` (positions holding the model's ``pad_token_id`` are masked out) or
        ``forward({"input_ids": ..., "attention_mask": ...})``.
    """

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs, **kwargs):
        if isinstance(inputs, Mapping):
            return self.model(**inputs, **kwargs).logits
        if self.task == "image":
            return self.model(pixel_values=inputs, **kwargs).logits
        # a padded batch of token ids (kdkit's text dataset): the padding is masked out, as a
        # tokenizer's attention_mask would; the model's pad_token_id is the tokenizer's pad id
        pad = getattr(self.model.config, "pad_token_id", None)
        if pad is not None and "attention_mask" not in kwargs:
            kwargs["attention_mask"] = inputs.ne(pad).long()
        return self.model(input_ids=inputs, **kwargs).logits
