"""Where kdkit keeps files that outlive a run (one cache for every component), and the lock that
gives one kdkit process a directory (a run directory, a sweep's OUT)."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

LOCK_FILE = ".lock"


def user_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` / ``~user`` expanded as a shell would.  An unknown ``~user`` stays as typed,
    so the caller's "not found" error names it (``Path.expanduser`` raises RuntimeError instead)."""
    return Path(os.path.expanduser(os.fspath(path)))


def cache_root() -> Path:
    """kdkit's cache directory: ``$KDKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdkit``, else ``~/.cache/kdkit``.

    Cached artefacts (CLIP features, noun embeddings, assembled WordNet data) are keyed by a digest
    of everything they depend on, so runs can share them safely.
    """
    env = os.environ.get("KDKIT_CACHE_DIR")
    if env:
        return user_path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return user_path(xdg) / "kdkit"
    return Path.home() / ".cache" / "kdkit"


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock`` (see :func:`lock_directory`); ``release()`` or leave the
    ``with`` block to give it up.  The OS releases it when the process ends, however it ends."""

    def __init__(self, directory: Path, fd: int | None):
        self.directory = directory
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_pid(fd: int) -> str:
    # the holder writes its PID right after locking: a short wait covers that gap
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"


def lock_directory(directory: str | Path, what: str, advice: str) -> DirectoryLock:
    """Take the exclusive lock of ``directory`` (which must exist), or raise a :class:`KdkitError`
    ``"<what> is in use by another kdkit process (PID n); <advice>"``.

    The lock is a ``flock`` on ``directory/.lock``, which holds the holder's PID.  The file is never
    removed while locked; if the whole directory is removed and re-created under us, the lock is
    taken again on the new file, so two processes never both hold one directory.
    """
    from kdkit.errors import KdkitError

    directory = Path(directory)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return DirectoryLock(directory, None)
    path = directory / LOCK_FILE
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise KdkitError(f"{what}: {path} is a directory, not kdkit's lock file; remove it") from None
        except OSError as exc:
            raise KdkitError(f"{what}: cannot open {path} for writing ({exc.strerror}); "
                             "choose a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if pid is None:
                raise KdkitError(f"{what}: cannot lock {path} ({exc.strerror}); "
                                 "use a directory on a local file system") from None
            raise KdkitError(f"{what} is in use by another kdkit process (PID {pid}); {advice}") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return DirectoryLock(directory, fd)
        os.close(fd)  # locked a file that was removed meanwhile: take the new one
    raise KdkitError(f"{what}: {path} keeps being removed; is another program deleting it?")
