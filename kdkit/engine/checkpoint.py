"""Atomic, ``weights_only``-loadable checkpoints and RNG-state capture.

Everything stored is a tensor or a primitive container (dict/list/tuple/str/int/float/bool/
None), so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdkit.errors import KdkitError

__all__ = [
    "WriteError",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "atomic_torch_save",
    "load_checkpoint",
    "load_last_checkpoint",
    "checkpoint_fits",
    "previous_checkpoint_path",
    "capture_rng_state",
    "restore_rng_state",
    "derive_seed",
    "seed_everything",
]


class WriteError(KdkitError, OSError):
    """A file could not be written (disk full, read-only, no permission); its previous version is kept."""


class CheckpointError(KdkitError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint); ``problem`` is the
    message without the advice."""

    def __init__(self, problem: str, advice: str = "restore it from a copy or train the run again"):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, os.replace, fsync dir."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, KdkitError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def _write_error(path: Path, exc: OSError) -> WriteError:
    kept = "; its previous version is kept" if path.exists() else ""
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
            errno.EROFS: "choose a writable directory", errno.EACCES: "choose a directory you can write to",
            errno.EPERM: "choose a directory you can write to"}.get(exc.errno, "check the file system")
    error = WriteError(f"cannot write {path}: {exc.strerror or _first_line(exc)}{kept}; {hint}")
    error.errno = exc.errno
    return error


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into memory, then :func:`atomic_write_bytes` (never leaves a partial file):
    checkpoints and every cache file kdkit or a plugin writes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def previous_checkpoint_path(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the previous version of ``path``: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Make the current ``path`` its previous version, without a moment when ``path`` is missing."""
    previous = previous_checkpoint_path(path)
    tmp = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(path, tmp)  # a second name for the same file: no copy
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise _write_error(previous, exc) from exc


def save_checkpoint(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """Write a checkpoint atomically (:func:`atomic_torch_save`); with ``keep_previous``, the file it
    replaces stays as :func:`previous_checkpoint_path` (the fallback of :func:`load_last_checkpoint`)."""
    path = Path(path)
    if keep_previous and path.exists():
        _keep_previous(path)
    atomic_torch_save(obj, path)


def load_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    except Exception as exc:  # noqa: BLE001 - torch reports corruption as many different types
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {_first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is unreadable (not a kdkit checkpoint: {type(state).__name__})")
    return state


def load_last_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False,
                         warn: Callable[[str], None] | None = None) -> tuple[dict | None, Path | None]:
    """The state in ``path`` (a ``last.pt``) and the file it came from; when ``path`` is unreadable or
    missing, its previous version (``last.prev.pt``) after a one-line ``warn``; ``(None, None)`` when
    neither exists.  Both unreadable: a :class:`CheckpointError` naming both and the user's choices."""
    path, previous = Path(path), previous_checkpoint_path(path)
    if not path.exists() and not previous.exists():
        return None, None
    try:
        return load_checkpoint(path, map_location, mmap), path
    except CheckpointError as exc:
        problem = exc.problem
    try:
        state = load_checkpoint(previous, map_location, mmap)
    except CheckpointError as exc:
        raise CheckpointError(f"{problem}, and its previous version cannot replace it ({exc.problem})",
                              f"delete {path.parent} to train that stage again from its start, or start the run "
                              "again with a fresh --out") from None
    if warn is not None:
        warn(f"warning: {problem}; continuing from its previous version {previous.name} "
             f"(epoch {int(state.get('epoch', 0))})")
    return state, previous


@contextlib.contextmanager
def checkpoint_fits(path: Path, what: str):
    """Around loading a readable checkpoint's state into ``what`` (a model, optimizer, ...): a state
    that does not fit (missing keys, other shapes, not a state dict) is a one-line
    :class:`CheckpointError` naming the file, not torch's multi-line message."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CheckpointError(f"checkpoint {path} does not fit {what} "
                              f"({reason[:200]}{'...' if len(reason) > 200 else ''})") from None


# --- RNG ----------------------------------------------------------------------------------

def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts, e.g. ``derive_seed(seed, "student", epoch)``."""
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """RNG states of python, numpy and torch as tensors / primitive containers."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
