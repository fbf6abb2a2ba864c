"""Where the plugin keeps cached files, and small helpers for keyed, atomic cache files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kdkit import cache_root  # noqa: F401  (re-exported: the plugin's caches live in kdkit's cache root)


def digest(obj: Any, length: int = 20) -> str:
    """A stable hex digest of a JSON-serialisable object (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def tensor_digest(tensor) -> str:
    """A hex digest of a tensor's shape, dtype and bytes."""
    import numpy as np

    array = tensor.detach().cpu().contiguous().numpy()
    h = hashlib.sha256()
    h.update(repr((tuple(array.shape), str(array.dtype))).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:20]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (first 20 hex digits) of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:20]


def load_keyed(path: Path, key: dict) -> Any | None:
    """The payload stored by :func:`save_keyed` at ``path`` when its recorded key equals ``key``."""
    import torch

    if not path.is_file():
        return None
    try:
        # weights_only: tensors and plain containers only — a planted pickle in the cache directory (its file
        # names are predictable digests) cannot run code; it is rejected and the entry recomputed
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated, foreign or unsafe file is recomputed
        return None
    if not isinstance(blob, dict) or blob.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    return blob.get("payload")


def save_keyed(path: Path, key: dict, payload: Any) -> None:
    """Store ``payload`` with its full key (checked again on load, so digest collisions are harmless)."""
    from kdkit import atomic_torch_save

    try:
        atomic_torch_save({"key": json.loads(json.dumps(key, default=str)), "payload": payload}, path)
    except OSError:  # a read-only cache only costs recomputation
        pass
