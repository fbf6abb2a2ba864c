"""Cross-modal hashing datasets: MIRFLICKR-25K / NUS-WIDE layouts, a JSONL manifest, the embedded
procedural scenes, and the split presets of the method family.

Every loader returns a :class:`CrossModalData`: all samples of the dataset (images, texts, multi-hot
labels).  Splits are index arrays computed by :func:`make_splits`.  Bad data is never dropped
silently: every handled problem is counted and reported in ``CrossModalData.notes`` (the method
logs them), anything else is a :class:`kdkit.errors.DataError` naming the file and key.

This module holds the dataset view, the splits and the registered factories; the rest lives by
concern, and every name is importable from here as before: :mod:`kdkit_soda.container`
(:class:`CrossModalData`, the no-label / empty-caption policy), :mod:`kdkit_soda.files` (.mat /
HDF5 / text / image readers and value checks), :mod:`kdkit_soda.layouts` (MIRFLICKR-25K and
NUS-WIDE layouts), :mod:`kdkit_soda.manifest` (JSONL) and :mod:`kdkit_soda.scenes` (the procedural
scenes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdkit import ConfigError, DataError

from .container import CrossModalData
from .files import MatFile, _read_lines, load_image_rgb
from .layouts import (
    CAPTION_KEYS,
    DCMH_FILES,
    DCMH_SINGLE,
    INDEX_KEYS,
    LABEL_KEYS,
    MIRFLICKR_CLASSES,
    NUSWIDE_TC10_CLASSES,
    load_clip_layout,
    load_dcmh_layout,
)
from .manifest import MAX_CLASSES, load_jsonl
from .scenes import SCENE_CLASSES, make_scenes

__all__ = [
    "CAPTION_KEYS",
    "DCMH_FILES",
    "DCMH_SINGLE",
    "INDEX_KEYS",
    "LABEL_KEYS",
    "MAX_CLASSES",
    "MIRFLICKR_CLASSES",
    "NUSWIDE_TC10_CLASSES",
    "SCENE_CLASSES",
    "SPLIT_PRESETS",
    "CrossModalData",
    "CrossModalDataset",
    "MatFile",
    "Splits",
    "jsonl_factory",
    "load_clip_layout",
    "load_dcmh_layout",
    "load_image_rgb",
    "load_jsonl",
    "make_scenes",
    "make_splits",
    "mirflickr_factory",
    "nuswide_factory",
    "scenes_factory",
]


class CrossModalDataset:
    """Map-style dataset view of a :class:`CrossModalData` (what the registered factories return;
    usable with ``torch.utils.data.DataLoader``).

    Items are dicts ``{"index", "image" (uint8 H x W x 3 tensor or path), "text", "label"}``.
    ``.data`` is the underlying :class:`CrossModalData`; ``.classes`` the category names.
    """

    def __init__(self, data: CrossModalData, indices: np.ndarray | None = None):
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.classes = list(data.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        import torch

        j = int(self.indices[i])
        img = self.data.images[j]
        return {
            "index": j,
            "image": torch.from_numpy(np.asarray(img)) if isinstance(self.data.images, np.ndarray) else str(img),
            "text": self.data.texts[j] if self.data.texts is not None else "",
            "label": torch.from_numpy(self.data.labels[j].astype(np.float32)),
        }


# --- split presets ---------------------------------------------------------------------------

#: preset -> (query, train, seed) per dataset family; "dcmh" has no seed in the original code.
SPLIT_PRESETS = {
    "mith": {"mirflickr": (2000, 10000, 1), "nuswide": (2100, 10500, 1)},
    "dcmh": {"mirflickr": (2000, 10000, None), "nuswide": (2100, 10500, None)},
    "dchmt": {"mirflickr": (5120, 10240, 1814), "nuswide": (5120, 10240, 1814)},
    "dsph": {"mirflickr": (5000, 10000, 1814), "nuswide": (5000, 10000, 1814)},
}


@dataclass
class Splits:
    """Index arrays into the dataset.  ``retrieval`` = everything but ``query`` (train is inside it);
    ``fit`` + ``val`` = ``train`` (``val`` is held out for model selection)."""

    query: np.ndarray
    train: np.ndarray
    retrieval: np.ndarray
    fit: np.ndarray
    val: np.ndarray
    seed: int
    preset: str

    def sizes(self) -> dict:
        return {k: int(len(getattr(self, k))) for k in ("query", "train", "fit", "val", "retrieval")}


def make_splits(n: int, family: str, preset: str = "auto", query_size: int | None = None,
                train_size: int | None = None, seed: int | None = None, val_fraction: float = 0.1,
                val_seed: int = 0) -> Splits:
    """The method family's rule: ``perm = RandomState(seed).permutation(N); query = perm[:q];
    train = perm[q:q+t]; retrieval = perm[q:]``.

    ``preset`` is one of :data:`SPLIT_PRESETS` or ``"auto"`` (10 % query, 50 % train — for the
    embedded and manifest datasets); ``query_size``/``train_size``/``seed`` override the preset.  A
    preset without a seed (``dcmh``) uses ``seed`` or 0.  ``val`` is ``val_fraction`` of ``train``,
    chosen with ``val_seed``; ``fit`` is the rest.
    """
    if preset == "auto":
        q, t, s = max(1, n // 10), max(1, n // 2), 1
    else:
        if preset not in SPLIT_PRESETS:
            raise ConfigError(f"config key data.split: unknown split preset {preset!r}; valid: auto, "
                              + ", ".join(SPLIT_PRESETS))
        fam = family if family in SPLIT_PRESETS[preset] else "mirflickr"
        q, t, s = SPLIT_PRESETS[preset][fam]
    q = int(query_size) if query_size else q
    t = int(train_size) if train_size else t
    s = int(seed) if seed is not None else (s if s is not None else 0)
    if q + t > n:
        raise DataError(f"split {preset!r} needs {q} query + {t} train samples but the dataset has only {n}; "
                        "set data.query_size / data.train_size")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"config key data.val_fraction: expected 0 <= value < 1, got {val_fraction}")
    perm = np.random.RandomState(s).permutation(n)
    query, train, retrieval = perm[:q], perm[q:q + t], perm[q:]
    n_val = int(round(len(train) * val_fraction))
    vperm = np.random.RandomState(val_seed).permutation(len(train))
    val = np.sort(train[vperm[:n_val]])
    fit = train[np.sort(vperm[n_val:])]
    return Splits(query, train, retrieval, fit, val, s, preset)


# --- registered factories -------------------------------------------------------------------

_SPLITS = ("all", "train", "test", "query", "retrieval")


def _view(data: CrossModalData, split: str, family: str, split_preset: str, query_size, train_size, split_seed,
          val_fraction) -> CrossModalDataset:
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if split == "all":
        return CrossModalDataset(data)
    sp = make_splits(len(data), family, split_preset, query_size, train_size, split_seed, val_fraction)
    idx = {"train": sp.train, "test": sp.query, "query": sp.query, "retrieval": sp.retrieval}[split]
    ds = CrossModalDataset(data, idx)
    ds.splits = sp
    return ds


def scenes_factory(split: str, root: str | None, size: int = 3000, image_size: int = 64,
                   generator_seed: int = 0, split_preset: str = "auto", query_size: int | None = None,
                   train_size: int | None = None, split_seed: int | None = None,
                   val_fraction: float = 0.1) -> CrossModalDataset:
    """Embedded offline default: procedural multi-label scenes with captions (no files)."""
    data = make_scenes(size, image_size, generator_seed)
    ds = _view(data, split, "scenes", split_preset, query_size, train_size, split_seed, val_fraction)
    ds.family = "scenes"
    return ds


def _file_factory(family: str, display: str):
    def factory(split: str, root: str | None, layout: str = "auto", file: str | None = None,
                split_preset: str = "mith", query_size: int | None = None, train_size: int | None = None,
                split_seed: int | None = None, on_no_label: str = "drop", on_empty_caption: str = "placeholder",
                empty_placeholder: str = "123456", classes_file: str | None = None,
                vocab_file: str | None = None, val_fraction: float = 0.1) -> CrossModalDataset:
        if not root:
            raise ConfigError(f"dataset {display}: set data.root to the folder holding the files")
        r = Path(os.path.expanduser(str(root)))  # an unknown ~user stays as typed: "not found" names it
        if not r.is_dir():
            raise DataError(f"dataset {display}: data.root {r} is not a directory")
        chosen = layout
        if chosen == "auto":
            chosen = "clip" if (r / "label.mat").is_file() or (r / "index.mat").is_file() else "dcmh"
        if chosen == "clip":
            data = load_clip_layout(r, display, family, on_no_label, on_empty_caption, empty_placeholder, classes_file)
        elif chosen == "dcmh":
            data = load_dcmh_layout(r, display, family, file, on_no_label, on_empty_caption, empty_placeholder,
                                    classes_file, vocab_file)
        else:
            raise ConfigError(f"config key data.layout: expected auto|clip|dcmh, got {layout!r}")
        ds = _view(data, split, family, split_preset, query_size, train_size, split_seed, val_fraction)
        ds.family = family
        return ds

    factory.__name__ = f"{family}_factory"
    return factory


mirflickr_factory = _file_factory("mirflickr", "mirflickr25k")
nuswide_factory = _file_factory("nuswide", "nuswide")


def jsonl_factory(split: str, root: str | None, manifest: str = "manifest.jsonl",
                  classes_file: str | None = None, split_preset: str = "auto", query_size: int | None = None,
                  train_size: int | None = None, split_seed: int | None = None, on_no_label: str = "drop",
                  on_empty_caption: str = "placeholder", empty_placeholder: str = "",
                  val_fraction: float = 0.1) -> CrossModalDataset:
    """A JSONL manifest ``{"image", "text", "labels"}`` per line (paths relative to the manifest)."""
    path = Path(manifest)
    if not path.is_absolute():
        path = Path(root or ".") / path
    classes = None
    if classes_file:
        cpath = Path(classes_file) if Path(classes_file).is_absolute() else path.parent / classes_file
        if not cpath.is_file():
            raise DataError(f"classes file not found: {cpath}")
        classes = [ln.strip() for ln in _read_lines(cpath, "classes file").splitlines() if ln.strip()]
    data = load_jsonl(path, "crossmodal_jsonl", classes, on_no_label, on_empty_caption, empty_placeholder)
    ds = _view(data, split, "jsonl", split_preset, query_size, train_size, split_seed, val_fraction)
    ds.family = "jsonl"
    return ds

