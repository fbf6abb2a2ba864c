"""CIFAR-10 / CIFAR-100 in torchvision's on-disk format (the "python version" pickles).

Layout under ``root`` (torchvision's): ``cifar-100-python/{train,test,meta}`` or
``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.  ``root`` may also point at
that folder itself.  Nothing is downloaded unless ``download=True`` (``--set data.download=true``),
which uses torchvision's downloader.

The pickles are read like torchvision reads them (``encoding="latin1"``) but through a
restricted unpickler that only rebuilds numpy arrays, lists, dicts and strings, so a tampered
file cannot run code.  A missing folder or file, or a corrupt one, is a :class:`DataError`
naming the path.
"""
from __future__ import annotations

import pickle
import pickletools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdkit.data.base import TensorImageDataset, check_split
from kdkit.errors import DataError
from kdkit.files import regular_file
from kdkit.paths import user_path

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _check_memo_indices(f) -> None:
    """CPython's unpickler grows its memo table to the largest index a PUT names, so five corrupt
    bytes (``LONG_BINPUT 10**9``) cost gigabytes.  A pickler numbers the memo from 0, one entry per
    opcode at most: a larger index is corruption.  ``pickletools.genops`` reads, never runs."""
    opcodes, largest = 0, -1
    for opcode, arg, _pos in pickletools.genops(f):
        opcodes += 1
        if opcode.name in _MEMO_OPCODES:
            largest = max(largest, int(arg))
    if largest >= opcodes:
        raise pickle.UnpicklingError(f"memo index {largest} in a pickle of {opcodes} opcodes")
    f.seek(0)


def read_pickle(path: Path) -> dict:
    """One CIFAR pickle as a ``dict`` with ``str`` keys (``encoding="latin1"`` like torchvision)."""
    regular_file(path, "CIFAR file", DataError)
    try:
        with open(path, "rb") as f:
            _check_memo_indices(f)
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR file missing: {path}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is a corrupt file
        reason = " ".join(str(exc).split())  # one line: some unpickling errors span two
        raise DataError(f"corrupt CIFAR file {path}: {type(exc).__name__}: {reason}") from None
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR file {path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _int_list(values, key: str, path: Path, display: str) -> list[int]:
    """Labels: a list (or integer array) of ints; bools, floats and strings are corruption."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        return [int(v) for v in values]
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"corrupt {display} file {path}: {key!r} must be a list of integers, found "
                        f"{_describe(values)}")
    return values


def _str_list(values, key: str, path: Path, display: str) -> list[str]:
    """Class names: a list of (byte) strings."""
    if not isinstance(values, list) or not all(isinstance(v, (str, bytes)) for v in values):
        raise DataError(f"corrupt {display} file {path}: {key!r} must be a list of names, found {_describe(values)}")
    return [_str(v) for v in values]


def _str(v) -> str:
    return v.decode("latin1") if isinstance(v, bytes) else str(v)


def text_name(raw: str) -> str:
    """CIFAR's ``aquarium_fish`` -> ``aquarium fish`` (for prompts and WordNet phrase look-ups)."""
    return raw.replace("_", " ").strip()


class _CIFARBase(TensorImageDataset):
    tv_class_name = ""           # torchvision.datasets class providing the file list and downloader
    label_key = ""
    display = ""
    native_size = 32

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        *,
        download: bool = False,
        image_size: int = 32,
        augment: str | None = "weak",
        normalize: bool = True,
        verify: bool = False,
        transform: Callable | None = None,
    ):
        import torchvision.datasets as tvd

        check_split(split, self.name)
        tv = getattr(tvd, self.tv_class_name)
        base = tv.base_folder
        root_path = user_path(root) if root else _default_root()
        folder = root_path if (root_path.name == base and not (root_path / base).is_dir()) else root_path / base
        files = [name for name, _ in (tv.train_list if split == "train" else tv.test_list)]
        needed = files + [tv.meta["filename"]]
        # exists(), not is_file(): a FIFO or directory there is refused by type below, not "missing"
        missing = [f for f in needed if not (folder / f).exists()]
        if missing and download:
            try:
                tv(str(folder.parent), train=split == "train", download=True)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"downloading {self.display} into {folder.parent} failed: {exc}") from None
            missing = [f for f in needed if not (folder / f).exists()]
        if missing:
            what = folder if not folder.is_dir() else folder / missing[0]
            raise DataError(
                f"{self.display} not found: {what} is missing; put torchvision's {base}/ folder under "
                f"{folder.parent} (set data.root) or download it with --set data.download=true"
            )
        for name in needed:  # before the MD5 check, which opens them
            regular_file(folder / name, f"{self.display} file", DataError)
        if verify:
            from torchvision.datasets.utils import check_integrity

            for name, md5 in (tv.train_list if split == "train" else tv.test_list) + [(tv.meta["filename"], tv.meta["md5"])]:
                if not check_integrity(str(folder / name), md5):
                    raise DataError(f"corrupt {self.display} file {folder / name}: MD5 mismatch (re-download it)")

        datas, labels, coarse = [], [], []
        for name in files:
            path = folder / name
            entry = read_pickle(path)
            for key in ("data", self.label_key):
                if key not in entry:
                    raise DataError(f"corrupt {self.display} file {path}: no key {key!r}")
            data = entry["data"]
            # a float or object array would be cast to bytes silently
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
                raise DataError(f"corrupt {self.display} file {path}: 'data' must be a uint8 array of 3072 values "
                                f"per image, found {_describe(data)}")
            data = data.reshape(-1, 3, 32, 32)
            lab = _int_list(entry[self.label_key], self.label_key, path, self.display)
            if len(lab) != len(data):
                raise DataError(f"corrupt {self.display} file {path}: {len(data)} images but {len(lab)} labels")
            datas.append(data)
            labels += lab
            if "coarse_labels" in entry:
                coarse += _int_list(entry["coarse_labels"], "coarse_labels", path, self.display)
        meta_path = folder / tv.meta["filename"]
        meta = read_pickle(meta_path)
        if tv.meta["key"] not in meta:
            raise DataError(f"corrupt {self.display} file {meta_path}: no key {tv.meta['key']!r}")
        self.raw_classes = _str_list(meta[tv.meta["key"]], tv.meta["key"], meta_path, self.display)
        if labels and (min(labels) < 0 or max(labels) >= len(self.raw_classes)):
            raise DataError(
                f"corrupt {self.display} data in {folder}: labels outside 0..{len(self.raw_classes) - 1}"
            )
        self.classes = [text_name(c) for c in self.raw_classes]
        self.coarse_targets = coarse if len(coarse) == len(labels) else None
        coarse_names = _str_list(meta.get("coarse_label_names", []), "coarse_label_names", meta_path, self.display)
        self.coarse_classes = [text_name(c) for c in coarse_names] or None
        self.images = torch.from_numpy(np.concatenate(datas) if datas else np.zeros((0, 3, 32, 32), np.uint8))
        self.targets = labels
        self.root = str(folder)
        self._init_transform(split, image_size, augment, normalize, transform)


def _default_root() -> Path:
    from kdkit.data import default_data_root

    return default_data_root()


class CIFAR100Dataset(_CIFARBase):
    """CIFAR-100: ``classes`` are the 100 ``fine_label_names`` with spaces (``raw_classes``
    keeps the underscores); ``coarse_targets`` / ``coarse_classes`` give the 20 superclasses.

    Options: ``download`` (False), ``image_size`` (32; other sizes resize, e.g. 224 for the
    paper recipe), ``augment`` (train: ``"weak"`` default, ``"none"``, ``"strong"``),
    ``normalize`` (True, CIFAR-100 mean/std), ``verify`` (False: check torchvision's MD5s).
    """

    name = "cifar100"
    display = "CIFAR-100"
    tv_class_name = "CIFAR100"
    label_key = "fine_labels"
    mean, std = CIFAR100_MEAN, CIFAR100_STD


class CIFAR10Dataset(_CIFARBase):
    """CIFAR-10 (same options as :class:`CIFAR100Dataset`)."""

    name = "cifar10"
    display = "CIFAR-10"
    tv_class_name = "CIFAR10"
    label_key = "labels"
    mean, std = CIFAR10_MEAN, CIFAR10_STD
