"""Reading: :func:`regular_file` checks, before opening, that a file a user named is a regular file.

Atomic file writes: a file is replaced whole or not at all (temp file in the same directory,
fsync, ``os.replace``, fsync of the directory).  Every file a run, a sweep, the config or a plugin
writes goes through here, so a crash or a full disk never leaves half a file.

A low module: it imports only :mod:`kdkit.errors` (torch only inside :func:`atomic_torch_save`), so
the config and every layer above may use it.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError

__all__ = ["file_kind", "regular_file", "WriteError", "write_error", "first_line", "fsync_dir", "atomic_write_bytes", "atomic_write_text",
           "atomic_torch_save"]


def file_kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode`` ("a FIFO", "a directory", ...), for messages."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def regular_file(path: str | Path, what: str, error: type[KdkitError] = KdkitError) -> Path:
    """``path`` when it is a regular file (symlinks followed), else a one-line ``error`` naming it:
    "<what> not found: PATH" or "<what> PATH is a FIFO, not a regular file".  Checked by type
    *before* opening, because opening a FIFO blocks for ever and reading a device may never end."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or first_line(exc)}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {file_kind(mode)}, not a regular file")
    return path


class WriteError(KdkitError, OSError):
    """A file could not be written (disk full, read-only, no permission); its previous version is kept."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so that a rename into it is durable; best effort (some file systems and
    platforms cannot open or fsync a directory: the rename has happened either way)."""
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
    _check_replaceable(path)
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
            raise write_error(path, exc) from exc
        raise
    fsync_dir(path.parent)


def _check_replaceable(path: Path) -> None:
    """Refuse to rename a file over a device, FIFO or socket: ``kdkit export --out /dev/null`` replaced
    /dev/null itself with a regular file.  A symlink is replaced as a link (its target is untouched)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # absent (the usual case), or unreadable: the write reports it
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):  # a directory: os.replace refuses it
        raise WriteError(f"cannot write {path}: it is {file_kind(mode)}, not a regular file; choose a file name")


def write_error(path: Path, exc: OSError) -> WriteError:
    """``exc`` (raised writing ``path``) as a one-line :class:`WriteError` that says what to do."""
    kept = "; its previous version is kept" if path.exists() else ""
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
            errno.EROFS: "choose a writable directory", errno.EACCES: "choose a directory you can write to",
            errno.EPERM: "choose a directory you can write to"}.get(exc.errno, "check the file system")
    error = WriteError(f"cannot write {path}: {exc.strerror or first_line(exc)}{kept}; {hint}")
    error.errno = exc.errno
    return error


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into memory, then :func:`atomic_write_bytes` (never leaves a partial file):
    checkpoints and every cache file kdkit or a plugin writes."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
