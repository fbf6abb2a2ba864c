"""kdkit's built-in datasets (registered by :mod:`kdkit.data.builtin`).

Every dataset is an :class:`~kdkit.data.base.ImageClassificationDataset`: it yields
``(float32 image 3 x H x W, int label)``, exposes ``classes`` (readable names for text use),
``raw_classes``, ``targets``, ``get_uint8(i)`` and ``with_augment(level)``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_root", "ImageClassificationDataset", "build_transform"]


def default_data_root() -> Path:
    """Where datasets live when ``data.root`` is not set: ``$KDKIT_DATA``, else ``data/`` in
    :func:`kdkit.paths.cache_root`."""
    from kdkit.paths import cache_root, user_path

    env = os.environ.get("KDKIT_DATA")
    return user_path(env) if env else cache_root() / "data"


def __getattr__(name):  # lazy: importing kdkit.data does not import torch
    if name == "ImageClassificationDataset":
        from kdkit.data.base import ImageClassificationDataset

        return ImageClassificationDataset
    if name == "build_transform":
        from kdkit.data.transforms import build_transform

        return build_transform
    raise AttributeError(name)
