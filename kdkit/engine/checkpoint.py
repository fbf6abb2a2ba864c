"""Atomic, ``weights_only``-loadable checkpoints.

Everything stored is a tensor or a primitive container (dict/list/tuple/str/int/float/bool/
None), so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``.  The atomic writes
they go through are :mod:`kdkit.files`', the RNG state they hold is captured by
:mod:`kdkit.seeding` (the names are importable from here too).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from kdkit.errors import KdkitError
# atomic writes and seeding live in low modules; their names stay importable from here
from kdkit.files import (WriteError, atomic_torch_save, atomic_write_bytes, atomic_write_text, first_line as _first_line,
                         regular_file, write_error as _write_error)
from kdkit.seeding import capture_rng_state, derive_seed, restore_rng_state, seed_everything

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
    "check_checkpoint_owner",
    "previous_checkpoint_path",
    "capture_rng_state",
    "restore_rng_state",
    "derive_seed",
    "seed_everything",
]


class CheckpointError(KdkitError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint); ``problem`` is the
    message without the advice."""

    def __init__(self, problem: str, advice: str = "restore it from a copy or train the run again"):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


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
    if path.exists():  # a FIFO under a checkpoint's name blocked torch.load for ever (kdkit eval)
        regular_file(path, "checkpoint", CheckpointError)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    except Exception as exc:  # noqa: BLE001 - torch reports corruption as many different types
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {_first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is unreadable (not a kdkit checkpoint: {type(state).__name__})")
    return state


def check_checkpoint_owner(state: dict, path: Path, stage: str, run_id: str, legacy: bool = False) -> None:
    """Refuse (:class:`CheckpointError`) a checkpoint that is not ``stage``'s of the run ``run_id``:
    one copied from another stage or another run.  A checkpoint without ``run_id`` (written before
    run ids) passes on its stage alone when ``legacy`` (a run made before run ids)."""
    found_stage, found_run = state.get("stage"), state.get("run_id")
    if found_stage == stage and (found_run == run_id or (found_run is None and legacy)):
        return
    if "stage" not in state and "model" not in state:  # was "from stage None of run unknown (written before run ids)"
        raise CheckpointError(f"checkpoint {path} is not a kdkit checkpoint (no stage, no model: a bare state dict, "
                              f"such as kdkit export writes?), expected stage {stage!r} of run {run_id}",
                              "put this run's own checkpoint back, or start the run again with a fresh --out")
    shown = found_run if found_run is not None else "unknown (written before run ids)"
    raise CheckpointError(f"checkpoint {path} is from stage {found_stage!r} of run {shown}, expected stage "
                          f"{stage!r} of run {run_id}",
                          "put this run's own checkpoint back, or start the run again with a fresh --out")


def load_last_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False,
                         warn: Callable[[str], None] | None = None,
                         check: Callable[[dict, Path], None] | None = None) -> tuple[dict | None, Path | None]:
    """The state in ``path`` (a ``last.pt``) and the file it came from; when ``path`` is unreadable or
    missing, its previous version (``last.prev.pt``) after a one-line ``warn``; ``(None, None)`` when
    neither exists.  Both unreadable: a :class:`CheckpointError` naming both and the user's choices.
    ``check(state, file)`` raises a :class:`CheckpointError` for a readable state that must not be
    used (:func:`check_checkpoint_owner`): such a ``last.pt`` is refused, never passed over."""
    path, previous = Path(path), previous_checkpoint_path(path)
    if not path.exists() and not previous.exists():
        return None, None
    try:
        state = load_checkpoint(path, map_location, mmap)
    except CheckpointError as exc:
        problem = exc.problem
    else:
        if check is not None:
            check(state, path)
        return state, path
    try:
        state = load_checkpoint(previous, map_location, mmap)
        if check is not None:
            check(state, previous)
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
