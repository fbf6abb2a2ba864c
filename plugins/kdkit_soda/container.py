"""The container every cross-modal loader returns (:class:`CrossModalData`: all samples, their
labels and the counts of handled data problems) and :func:`_clean`, the one policy for samples
without a label or with an empty caption (``data.on_no_label``, ``data.on_empty_caption``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdkit import ConfigError, DataError


@dataclass
class CrossModalData:
    """All samples of a cross-modal dataset.

    :param images: ``uint8`` array ``(N, H, W, 3)`` or a list of ``N`` image file paths.
    :param texts: ``N`` captions/tag strings, or ``None`` when the text modality is a bag of words.
    :param labels: ``uint8`` multi-hot ``(N, C)``.
    :param classes: ``C`` category names (used in the label prompts).
    :param bow: optional ``float32`` bag-of-words ``(N, V)`` (DCMH ``YAll``); used as the text
        features when ``texts`` is ``None``.
    :param notes: ``{problem: count}`` of handled data problems (logged by the method).
    """

    name: str
    images: Any
    texts: list[str] | None
    labels: np.ndarray
    classes: list[str]
    bow: np.ndarray | None = None
    notes: dict = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, keep: np.ndarray) -> CrossModalData:
        keep = np.asarray(keep)
        images = self.images[keep] if isinstance(self.images, np.ndarray) else [self.images[i] for i in keep]
        return CrossModalData(self.name, images, None if self.texts is None else [self.texts[i] for i in keep],
                              self.labels[keep], list(self.classes), None if self.bow is None else self.bow[keep],
                              dict(self.notes), self.source)

    def fingerprint(self) -> str:
        """A content hash (labels, texts, image identities) — the key of the feature cache."""
        h = hashlib.sha1()
        h.update(self.name.encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\x00".join(self.classes).encode())
        if self.texts is not None:
            h.update("\x00".join(self.texts).encode())
        if self.bow is not None:
            h.update(np.ascontiguousarray(self.bow).tobytes())
        if isinstance(self.images, np.ndarray):
            h.update(str(self.images.shape).encode())
            h.update(self.images[:: max(1, len(self.images) // 64)].tobytes())
        else:
            h.update("\x00".join(map(str, self.images)).encode())
        return h.hexdigest()[:16]


def _clean(name: str, images, texts, labels, classes, bow, source: str, on_no_label: str,
           on_empty_caption: str, empty_placeholder: str, log=None) -> CrossModalData:
    notes: dict = {}
    labels = (np.asarray(labels) != 0).astype(np.uint8)
    data = CrossModalData(name, images, texts, labels, list(classes), bow, notes, source)
    keep = np.ones(len(labels), dtype=bool)
    no_label = labels.sum(1) == 0
    if no_label.any():
        count = int(no_label.sum())
        if on_no_label == "error":
            first = int(np.flatnonzero(no_label)[0])
            raise DataError(f"{source}: {count} samples have no label (first: sample {first}); set "
                            "data.on_no_label=drop to remove them or keep to keep them (never relevant)")
        if on_no_label == "drop":
            keep &= ~no_label
            notes["dropped_no_label"] = count
        elif on_no_label == "keep":
            notes["kept_no_label"] = count
        else:
            raise ConfigError(f"config key data.on_no_label: expected error|drop|keep, got {on_no_label!r}")
    if texts is not None:
        empty = np.array([not t.strip() for t in texts], dtype=bool)
        if empty.any():
            count = int(empty.sum())
            if on_empty_caption == "error":
                first = int(np.flatnonzero(empty)[0])
                raise DataError(f"{source}: {count} empty captions (first: sample {first}); set "
                                "data.on_empty_caption=placeholder or drop")
            if on_empty_caption == "placeholder":
                data.texts = [empty_placeholder if e else t for t, e in zip(texts, empty)]
                notes["empty_caption_placeholder"] = count
            elif on_empty_caption == "drop":
                keep &= ~empty
                notes["dropped_empty_caption"] = count
            else:
                raise ConfigError(f"config key data.on_empty_caption: expected error|placeholder|drop, "
                                  f"got {on_empty_caption!r}")
    if not keep.all():
        data = data.subset(np.flatnonzero(keep))
        data.notes = notes
    return data
