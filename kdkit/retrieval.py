"""Hamming search over packed code databases: batched, and sharded across ``torch.distributed`` ranks.

Code files use faiss's layout: ``uint8`` arrays ``(N, L/8)``, bit ``j`` of a code is bit ``j % 8``
of byte ``j // 8`` (least significant bit first), so they go into faiss binary indexes unchanged.
A code file is a ``.npy`` array, optionally with a JSON sidecar ``<file>.json`` (metadata written
by ``kdkit encode``: bits, modality, dataset indices, ...).

Every result is ordered by ``(Hamming distance, database index)`` ascending — ties go to the
lower database index — so batched, single-process and sharded searches return identical results.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kdkit.errors import DataError
from kdkit.files import atomic_write_bytes, atomic_write_text, regular_file

__all__ = ["save_codes", "load_codes", "search", "merge_topk", "shard_range", "sharded_search"]


def save_codes(path: str | Path, codes, meta: dict | None = None) -> Path:
    """Write ``codes`` (uint8 ``(N, L/8)``) to ``path`` (``.npy``) and ``meta`` to ``path + ".json"``."""
    path = code_file_path(path)
    arr = codes.numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"codes must be uint8 (N, L/8), got {arr.dtype} {arr.shape}")
    # both files atomically (temp file in the same directory, os.replace, temp removed on failure):
    # a failed rename left CODES.tmp.npy behind and the sidecar could be half written
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(arr))
    atomic_write_bytes(path, buffer.getvalue())
    info = {"format": "kdkit-codes-1", "layout": "faiss binary: uint8 (N, L/8), bit j = byte j//8 bit j%8 (LSB first)",
            "count": int(arr.shape[0]), "bits": int(arr.shape[1] * 8)}
    info.update(meta or {})
    atomic_write_text(Path(str(path) + ".json"), json.dumps(_jsonable(info), indent=1) + "\n")
    return path


def code_file_path(path: str | Path) -> Path:
    """The file :func:`save_codes` writes for ``path``: ``.npy`` is appended unless already there."""
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_codes(path: str | Path, mmap: bool = False) -> tuple[np.ndarray, dict]:
    """Read a code file -> ``(uint8 (N, L/8) array, metadata dict)``; errors name the file."""
    path = regular_file(path, "code file", DataError)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"cannot read code file {path}: {exc.strerror or exc}") from None
    # np.load returns an .npz archive as an NpzFile (not an array), and blames pickling for any other file
    if magic != b"\x93NUMPY":
        what = "an .npz archive" if magic[:4] == b"PK\x03\x04" else "not a .npy file (no NUMPY header)"
        raise DataError(f"code file {path} is {what}; give packed uint8 codes (N, L/8) saved with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds
        raise DataError(f"cannot read code file {path}: {exc}") from None
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"{path}: expected packed uint8 codes (N, L/8), got dtype {arr.dtype} shape {arr.shape}")
    meta = _load_sidecar(Path(str(path) + ".json"))
    # the sidecar must describe this array: a 128-bit sidecar beside 64-bit packed codes was accepted
    if "bits" in meta and (isinstance(meta["bits"], bool) or meta["bits"] != arr.shape[1] * 8):
        raise DataError(f"{path}.json says bits={meta['bits']!r} but {path} holds {arr.shape[1] * 8}-bit codes "
                        f"({arr.shape[1]} bytes a code); fix or delete the sidecar (it is optional)")
    return arr, meta


def _load_sidecar(meta_path: Path) -> dict:
    if not os.path.lexists(meta_path):
        return {}
    # a FIFO or directory under the sidecar's name is refused by type, not taken for "no sidecar"
    regular_file(meta_path, "code metadata", DataError)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    # ValueError covers bad JSON and over-long integers; RecursionError deeply nested brackets
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"corrupt code metadata {meta_path}: {type(exc).__name__}: {exc}; "
                        "fix or delete it (it is optional)") from None
    if not isinstance(meta, dict):
        raise DataError(f"corrupt code metadata {meta_path}: expected a JSON object, found {type(meta).__name__}; "
                        "fix or delete it (it is optional)")
    return meta


def _as_tensor(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype != torch.uint8 or t.dim() != 2:
        raise ValueError(f"{name} must be packed uint8 codes (N, L/8), got {t.dtype} {tuple(t.shape)}")
    return t


def search(query_codes, db_codes, k: int, batch_size: int = 4096, offset: int = 0):
    """Top ``k`` of every query over ``db_codes``, in query batches of ``batch_size``.

    :returns: ``(distances int32 (Q, k'), indices int64 (Q, k'))`` with ``k' = min(k, N)``, each row
        ordered by (distance, index); ``offset`` is added to the indices (global indices of a shard).
    """
    from kdkit import ops

    q = _as_tensor(query_codes, "query_codes")
    d = _as_tensor(db_codes, "db_codes")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query_codes ({q.shape[1] * 8} bits) and db_codes ({d.shape[1] * 8} bits) differ in width")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    kk = min(k, d.shape[0])
    if kk == 0 or q.shape[0] == 0:
        return torch.empty(q.shape[0], 0, dtype=torch.int32), torch.empty(q.shape[0], 0, dtype=torch.int64)
    dists, idxs = [], []
    for s in range(0, q.shape[0], batch_size):
        dist, idx = ops.hamming_topk(q[s:s + batch_size], d, kk)
        dists.append(dist)
        idxs.append(idx + offset if offset else idx)
    return torch.cat(dists), torch.cat(idxs)


def merge_topk(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int):
    """Merge per-shard ``(distances, global indices)`` into the global top ``k`` by (distance, index).

    Exact: every global top-k item is in the top k of its own shard, because a shard's ranking
    by (distance, global index) is the global ranking restricted to it.
    """
    parts = [(d, i) for d, i in parts if d.numel() or d.shape[1] == 0]
    dist = torch.cat([p[0].to(torch.int64) for p in parts], dim=1)
    idx = torch.cat([p[1].to(torch.int64) for p in parts], dim=1)
    kk = min(k, dist.shape[1])
    span = int(idx.max().item()) + 1 if idx.numel() else 1
    key = dist * span + idx  # unique per row: sorting it is sorting by (distance, index)
    order = torch.sort(key, dim=1).indices[:, :kk]
    return torch.gather(dist, 1, order).to(torch.int32), torch.gather(idx, 1, order)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous shard ``[start, end)`` of ``n`` rows for ``rank`` of ``world`` (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sharded_search(query_codes, db_shard, k: int, shard_offset: int, batch_size: int = 4096, group=None):
    """Distributed search: this rank holds ``db_shard`` (rows ``shard_offset ...`` of the database).

    Every rank computes its shard's top ``k`` with global indices; the parts are gathered with
    ``torch.distributed.all_gather_object`` and merged by (distance, index).  All ranks return the
    same global result, equal to a single-process :func:`search` over the whole database.
    """
    import torch.distributed as dist

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    q = _as_tensor(query_codes, "query_codes")
    shard = _as_tensor(db_shard, "db_shard")
    if shard.shape[0]:
        local = search(q, shard, k, batch_size, offset=shard_offset)
    else:
        local = (torch.empty(q.shape[0], 0, dtype=torch.int32), torch.empty(q.shape[0], 0, dtype=torch.int64))
    if not (dist.is_available() and dist.is_initialized()):
        return local
    world = dist.get_world_size(group)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (local[0].numpy(), local[1].numpy()), group=group)
    parts = [(torch.from_numpy(d), torch.from_numpy(i)) for d, i in gathered]
    return merge_topk(parts, k)
