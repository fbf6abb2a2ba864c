"""What makes a directory a kdkit run: ``kdkit-run.json``, the first file ``kdkit train`` writes into
it (``{"run_id": 32 hex digits, "adopted": bool}``).  Every file in a directory holding it is the
run's; a directory without it is the user's unless it is empty (kdkit's ``.lock`` aside).  The run id
is stored in every checkpoint, so ``--resume`` knows a checkpoint copied from another run.
``adopted``: the record was added by ``--resume`` of a run made before run ids, whose checkpoints
hold none (they are checked on their stage alone).
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from kdkit.errors import KdkitError
from kdkit.files import atomic_write_text, regular_file
from kdkit.paths import LOCK_FILE

__all__ = ["RUN_FILE", "RUN_FILES", "read_run_file", "new_run_record", "write_run_file", "create_run_file",
           "foreign_files", "check_run_files"]

RUN_FILE = "kdkit-run.json"
#: the files kdkit reads and writes at the top of a run directory (checkpoints aside); the trainer's
#: DIVERGED_FILE and the plugins' RECORD_FILE among them (not imported: this module stays low)
RUN_FILES = (RUN_FILE, "config.yaml", "metrics.jsonl", "train.log", "summary.json", "diverged.json", "plugins.json")


def read_run_file(run_dir: Path) -> dict | None:
    """The run record of ``run_dir``, or ``None`` when it has none."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KdkitError(f"{path} is unreadable ({exc}); restore it from a copy or start a new run") from None
    if not (isinstance(record, dict) and isinstance(record.get("run_id"), str)
            and isinstance(record.get("adopted", False), bool)):
        raise KdkitError(f"{path} is not a kdkit run record; restore it from a copy or start a new run")
    return {"run_id": record["run_id"], "adopted": record.get("adopted", False)}


def new_run_record(adopted: bool = False) -> dict:
    """A record with a new random run id (:func:`write_run_file` writes it)."""
    return {"run_id": secrets.token_hex(16), "adopted": adopted}


def write_run_file(run_dir: Path, record: dict) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(record) + "\n")


def create_run_file(run_dir: Path, adopted: bool = False) -> dict:
    """Give ``run_dir`` a new run id (written atomically); returns its record."""
    record = new_run_record(adopted)
    write_run_file(run_dir, record)
    return record


def check_run_files(run_dir: Path) -> None:
    """Each of :data:`RUN_FILES` in ``run_dir`` is a regular file when it exists, else a one-line error
    naming it: a FIFO under one of those names made ``--resume``, ``eval`` and ``sweep`` block for ever
    opening it (kdkit writes them all atomically, so only a hand-made one is refused)."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if os.path.lexists(path):
            regular_file(path, "run file", KdkitError)


def foreign_files(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` kdkit did not write, sorted: none in a kdkit run directory (it holds
    :data:`RUN_FILE`), else every name but the lock file."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
