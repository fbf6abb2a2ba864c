"""The disk-backed teacher-output store: teacher logits and tapped features written once per
(teacher weights, data, transform) key into memory-mapped shards under kdkit's cache directory,
read back by sample index — by later runs, by the cells of a sweep and by every DDP rank.

Layout (``<cache>/teacher-store/<key>/``, :func:`store_root`)::

    logits.npy                      N x C, the storage dtype (dense logits)
    topk_values.npy topk_indices.npy tail.npy   N x k, N x k, N  (distill.teacher_store_topk > 0)
    feature-<i>.npy                 N x ..., one per tapped module path
    manifest.json                   written last: key, its parts, and each shard's shape, dtype, size, CRC-32

Why ``.npy`` files memory-mapped by numpy (``np.load(mmap_mode="r")``) rather than ``torch.from_file``:
a ``.npy`` file carries its own dtype and shape in its header, so a shard is checked against the
manifest before a row is read and any numpy reads it without kdkit; the read-only map means a
process's resident memory holds only the pages of the rows it touched (under DDP: its own), shared
with the other processes of the machine.  Shards are *written* sequentially through a file (rows
arrive in sample order), not through a writable map: a full disk is then a one-line error rather
than a ``SIGBUS``.  bfloat16, which numpy lacks, is stored as its raw 16 bits (``int16``) and viewed back as
``torch.bfloat16``.

Correctness:

* *atomic*: a store is built in a temporary sibling directory (``<key>.tmp-<pid>-<random>``); every
  shard is flushed and fsynced, then ``manifest.json`` (atomic itself), then the directory is renamed
  to ``<key>``.  A reader sees a whole store or none; a build that was killed leaves only a temporary
  directory, removed by the next builder of that key.
* *keyed*: :func:`store_key` hashes the teacher's weights (every tensor of its ``state_dict``), its
  class and config, the dataset fingerprint (:func:`dataset_fingerprint`: the wrappers and their
  indices, the length, the transform, the data config, the seed and the contents of up to 64
  samples), the tapped paths, the storage dtype and top-k: a store from other weights or data has
  another key and is never opened.
* *checked*: a completed store whose shard is missing, truncated or altered (its size, header or
  CRC-32 differs from the manifest) is a one-line :class:`~kdkit.errors.KdkitError` naming the
  directory to remove; it is never read.  Not rebuilt on its own: a store that changed after it was
  completed points at a disk or a process that writes where it should not, which a silent rebuild
  would hide.
* *one builder*: the builder holds an exclusive ``flock`` on ``<key>.lock`` (other processes — sweep
  cells, runs side by side — wait on it, then find the store complete); under DDP rank 0 builds and
  the other ranks wait at a barrier, then open it.

Numpy only at module level (torch is imported by the functions that need it).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kdkit.errors import ConfigError, KdkitError

__all__ = ["STORE_DTYPES", "StoreOptions", "TeacherStore", "StoreWriter", "StoreRows", "store_root", "store_key",
           "weights_digest", "dataset_fingerprint", "store_nbytes", "FORMAT_VERSION"]

#: bump when the layout changes: stores of another version have another key
FORMAT_VERSION = 1
#: ``distill.teacher_store_dtype`` -> (numpy storage dtype, bytes per value)
STORE_DTYPES = {"float16": (np.float16, 2), "bfloat16": (np.int16, 2), "float32": (np.float32, 4)}
MANIFEST = "manifest.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class StoreOptions:
    """How a store holds its values.

    :param dtype: ``float16`` (default; about 3 significant digits, values beyond 65504 overflow),
        ``bfloat16`` (float32's range, about 2 digits) or ``float32`` (exact).  Logits and floating
        features alike.
    :param topk: ``0``: dense logits; ``k > 0``: each sample's ``k`` largest logits and their classes,
        the other classes given the mean of the sample's remaining logits (an approximation: for
        many classes, where the tail of the softmax is flat).
    """

    dtype: str = "float16"
    topk: int = 0

    def __post_init__(self):
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(f"config key distill.teacher_store_dtype: expected one of {', '.join(STORE_DTYPES)}, "
                              f"got {self.dtype!r}")
        if int(self.topk) < 0:
            raise ConfigError(f"config key distill.teacher_store_topk: expected an integer >= 0, got {self.topk!r}")


def store_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where stores live: ``<cache_dir>/teacher-store`` (default :func:`kdkit.paths.cache_root`,
    ``$KDKIT_CACHE_DIR``).  Removing this directory clears every store."""
    from kdkit.paths import cache_root

    return Path(cache_dir if cache_dir is not None else cache_root()) / "teacher-store"


def store_nbytes(rows: int, num_classes: int, feature_values: int, options: StoreOptions) -> int:
    """Bytes a store of ``rows`` samples takes: ``num_classes`` logits (or ``topk`` of them) and
    ``feature_values`` floating feature values per sample."""
    size = STORE_DTYPES[options.dtype][1]
    if options.topk:
        index = 2 if num_classes <= 32767 else 4
        per_row = options.topk * (size + index) + size
    else:
        per_row = num_classes * size
    return rows * (per_row + feature_values * size)


# --- the key -------------------------------------------------------------------------------------


def _sha(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def weights_digest(model) -> str:
    """SHA-256 of a module's class and every tensor of its ``state_dict`` (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _chain(dataset) -> tuple[list, object]:
    """The wrappers above the base dataset (``Subset``: its indices' digest) and the base dataset."""
    from torch.utils.data import Subset

    chain = []
    while isinstance(dataset, Subset):
        indices = np.asarray(dataset.indices, dtype=np.int64)
        chain.append({"subset": len(indices), "indices": hashlib.sha256(indices.tobytes()).hexdigest()})
        dataset = dataset.dataset
    return chain, dataset


def _sample_bytes(item) -> Iterable[bytes]:
    import torch

    for value in item if isinstance(item, (tuple, list)) else (item,):
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous().reshape(-1)
            yield f"{t.dtype}{tuple(value.shape)}".encode()
            yield t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        elif isinstance(value, np.ndarray):
            yield f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes()
        else:
            yield repr(value).encode()


def dataset_fingerprint(dataset, probes: int = 64) -> dict:
    """What identifies the teacher's view of the training data: its ``Subset`` wrappers (with a digest
    of their indices), the base dataset's class, length and ``transform``, and a digest of up to
    ``probes`` samples spread evenly over it, as the teacher receives them (after the transform).
    The caller adds what configures the data (the ``data`` section, the seed)."""
    chain, base = _chain(dataset)
    n = len(dataset)
    h = hashlib.sha256()
    for i in sorted({int(round(j * (n - 1) / max(probes - 1, 1))) for j in range(min(probes, n))}):
        h.update(str(i).encode())
        for chunk in _sample_bytes(dataset[i]):
            h.update(chunk)
    return {"wrappers": chain, "dataset": f"{type(base).__module__}.{type(base).__qualname__}", "len": n,
            "transform": repr(getattr(base, "transform", None)), "samples": h.hexdigest()}


def store_key(parts: dict) -> str:
    """The directory name of the store of ``parts`` (a digest of them and :data:`FORMAT_VERSION`)."""
    return _sha({"format": FORMAT_VERSION, **parts})[:32]


# --- writing -------------------------------------------------------------------------------------


class StoreWriter:
    """Writes the shards of one store, batch after batch, in sample order (see :meth:`TeacherStore.build`)."""

    def __init__(self, directory: Path, rows: int, options: StoreOptions):
        self.directory = directory
        self.rows = rows
        self.options = options
        self._shards: dict[str, dict] = {}  # name -> {"array", "crc", "filled", "dtype"}
        self.meta: dict = {}

    def _shard(self, name: str, tail_shape: tuple, dtype, logical: str) -> dict:
        # written sequentially through a file, not through a writable map: a full disk is then an
        # OSError (a one-line error), where a store into a mapped page past the disk's end is a SIGBUS
        if name not in self._shards:
            fh = open(self.directory / f"{name}.npy", "wb")
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                      "fortran_order": False, "shape": (self.rows, *tail_shape)})
            self._shards[name] = {"file": fh, "offset": fh.tell(), "shape": (self.rows, *tail_shape),
                                  "numpy_dtype": np.dtype(dtype), "crc": 0, "filled": 0, "dtype": logical}
        shard = self._shards[name]
        if shard["shape"][1:] != tuple(tail_shape) or shard["numpy_dtype"] != np.dtype(dtype):
            raise ConfigError(f"teacher store: {name} has shape {tuple(tail_shape)} per sample after "
                              f"{shard['shape'][1:]}; only outputs of one shape can be stored "
                              "(set distill.teacher_cache=off to run the teacher online)")
        return shard

    def write(self, name: str, values) -> None:
        """Append the rows ``values`` (a torch tensor, batch first) to shard ``name``; floating values
        are stored in the store's dtype, others as they are."""
        import torch

        values = values.detach().to("cpu")
        if values.is_floating_point():
            logical = self.options.dtype
            values = values.to(getattr(torch, logical))
            array = (values.view(torch.int16) if logical == "bfloat16" else values).numpy()
        else:
            array, logical = values.numpy(), str(values.dtype).removeprefix("torch.")
        shard = self._shard(name, tuple(array.shape[1:]), array.dtype, logical)
        stop = shard["filled"] + array.shape[0]
        if stop > self.rows:
            raise KdkitError(f"teacher store: {stop} rows written to {name}, but the data has {self.rows}")
        data = np.ascontiguousarray(array).tobytes()
        shard["file"].write(data)
        shard["crc"] = zlib.crc32(data, shard["crc"])  # rows come in order: the CRC of the data region
        shard["filled"] = stop

    def write_logits(self, logits) -> None:
        """Append a batch of float32 logits: dense, or top-k with the mean of the other logits."""
        k = self.options.topk
        if not k:
            self.write("logits", logits)
            return
        import torch

        values, indices = logits.float().topk(k, dim=1)
        rest = logits.shape[1] - k
        tail = (logits.float().sum(1) - values.sum(1)) / rest
        self.write("topk_values", values)
        self.write("topk_indices", indices.to(torch.int16 if logits.shape[1] <= 32767 else torch.int32))
        self.write("tail", tail)
        self.meta["num_classes"] = int(logits.shape[1])

    def finish(self) -> dict:
        """Flush, fsync and close every shard; returns their manifest entries."""
        entries = {}
        for name, shard in self._shards.items():
            fh = shard.pop("file")
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
            fh.close()
            if shard["filled"] != self.rows:
                raise KdkitError(f"teacher store: {shard['filled']} of {self.rows} rows written to {name}")
            entries[name] = {"shape": list(shard["shape"]), "numpy_dtype": shard["numpy_dtype"].str,
                             "dtype": shard["dtype"], "offset": shard["offset"], "bytes": size, "crc32": shard["crc"]}
        return entries

    def close(self) -> None:
        """Close the shards' files (after a failed build)."""
        for shard in self._shards.values():
            if "file" in shard:
                shard.pop("file").close()


# --- the store -----------------------------------------------------------------------------------


class TeacherStore:
    """One store directory (see the module docs): built once by :meth:`build`, opened by :meth:`open`.

    :param root: the stores' directory (:func:`store_root`).
    :param key: :func:`store_key` of ``parts``.
    :param parts: what the key hashes (kept in the manifest, for a human who looks).
    """

    def __init__(self, root: str | os.PathLike, key: str, parts: dict | None = None):
        self.root = Path(root)
        self.key = key
        self.parts = parts or {}
        self.path = self.root / key

    @property
    def complete(self) -> bool:
        """Is the store built (its directory, with its manifest, exists)?"""
        return (self.path / MANIFEST).is_file()

    def _broken(self, what: str) -> KdkitError:
        return KdkitError(f"teacher store {self.path}: {what}; its targets cannot be trusted, remove the "
                          f"directory to rebuild it (rm -r {self.path})")

    def manifest(self) -> dict:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._broken("manifest.json is missing") from None
        except (OSError, ValueError) as exc:
            raise self._broken(f"manifest.json is unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("key") != self.key or "shards" not in manifest:
            raise self._broken("manifest.json belongs to another store")
        return manifest

    def open(self, verify: bool = False) -> tuple[dict, dict]:
        """``(manifest, {shard name: read-only memory-mapped array})``.  Every shard's size and
        ``.npy`` header are checked against the manifest; ``verify`` also recomputes each shard's
        CRC-32 (reads the whole store once; the builder's process does it when it reuses a store).
        A mismatch is a :class:`KdkitError` (see the module docs)."""
        manifest = self.manifest()
        arrays = {}
        for name, entry in manifest["shards"].items():
            path = self.path / f"{name}.npy"
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise self._broken(f"shard {path.name} is missing") from None
            if size != entry["bytes"]:
                state = "truncated" if size < entry["bytes"] else "longer than written"
                raise self._broken(f"shard {path.name} is {state} ({size} bytes, the manifest says {entry['bytes']})")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise self._broken(f"shard {path.name} has a damaged header ({exc})") from None
            if list(array.shape) != entry["shape"] or array.dtype.str != entry["numpy_dtype"] \
                    or int(array.offset) != entry["offset"]:
                raise self._broken(f"shard {path.name} holds {array.dtype.str} {list(array.shape)}, the manifest "
                                   f"says {entry['numpy_dtype']} {entry['shape']}")
            if verify and _file_crc(path, entry["offset"]) != entry["crc32"]:
                raise self._broken(f"shard {path.name} is corrupt (its CRC-32 differs from the manifest's)")
            arrays[name] = array
        return manifest, arrays

    def _lock(self, log: Callable[[str], None]):
        """An exclusive ``flock`` on ``<root>/<key>.lock``, waited for (a log line when another holds it)."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{self.key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"teacher store {self.path}: another process is building it, waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def ensure(self, rows: int, options: StoreOptions, fill: Callable[[StoreWriter], dict],
               log: Callable[[str], None] = lambda m: None) -> bool:
        """Build the store unless it is complete, holding the key's lock; returns whether it was built.
        ``fill(writer)`` writes every row (:meth:`StoreWriter.write_logits`, :meth:`StoreWriter.write`)
        and returns what else the manifest records.  A complete store is verified (CRC-32) instead."""
        from kdkit.files import write_error

        try:
            fd = self._lock(log)
        except OSError as exc:  # the cache directory cannot be created or written
            raise write_error(self.root / f"{self.key}.lock", exc) from None
        try:
            if self.complete:
                self.open(verify=True)
                return False
            if self.path.exists():  # a rename never leaves a store without its manifest
                raise self._broken("manifest.json is missing")
            for stale in self.root.glob(f"{self.key}.tmp-*"):  # builds killed before their rename
                shutil.rmtree(stale, ignore_errors=True)
            self.build(rows, options, fill)
            return True
        finally:
            os.close(fd)  # drops the lock

    def build(self, rows: int, options: StoreOptions, fill: Callable[[StoreWriter], dict]) -> None:
        """Write the store into a temporary directory and rename it into place (see the module docs).
        The caller holds the key's lock (:meth:`ensure`)."""
        from kdkit.files import atomic_write_text, fsync_dir, write_error

        tmp = self.root / f"{self.key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir(parents=True)
            writer = StoreWriter(tmp, rows, options)
            try:
                extra = fill(writer)
                shards = writer.finish()
            finally:
                writer.close()
            manifest = {"key": self.key, "format": FORMAT_VERSION, "rows": rows, "dtype": options.dtype,
                        "topk": options.topk, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        **writer.meta, **extra, "parts": self.parts, "shards": shards}
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
            os.rename(tmp, self.path)
            fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, KdkitError):
                raise
            raise write_error(self.path, exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class StoreRows:
    """The rows of an open store as torch tensors, looked up by sample index (copies of the touched
    rows only: the shards stay memory-mapped)."""

    def __init__(self, manifest: dict, arrays: dict):
        self.manifest = manifest
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def rows(self, name: str, indices):
        """Shard ``name``'s rows ``indices`` as a tensor of the dtype they were stored in."""
        import torch

        idx = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, dtype=np.int64)
        out = torch.from_numpy(np.ascontiguousarray(self.arrays[name][idx]))
        return out.view(torch.bfloat16) if self.manifest["shards"][name]["dtype"] == "bfloat16" else out

    def logits(self, indices):
        """float32 logits of the samples ``indices`` (top-k: the other classes get the stored tail mean)."""
        if "logits" in self.arrays:
            return self.rows("logits", indices).float()
        values = self.rows("topk_values", indices).float()
        classes = self.rows("topk_indices", indices).long()
        full = self.rows("tail", indices).float()[:, None].repeat(1, int(self.manifest["num_classes"]))
        return full.scatter_(1, classes, values)

    @property
    def nbytes(self) -> int:
        """Bytes of the shards on disk."""
        return sum(int(e["bytes"]) for e in self.manifest["shards"].values())


def _file_crc(path: Path, offset: int) -> int:
    crc = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        for block in iter(lambda: fh.read(_CHUNK), b""):
            crc = zlib.crc32(block, crc)
    return crc
