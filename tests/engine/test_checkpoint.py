"""Atomic writes and weights_only checkpoints."""
from __future__ import annotations

import os

import pytest
from kdkit_engine_testutil import finishes_soon
import torch

from kdkit.engine.checkpoint import load_checkpoint, save_checkpoint
from kdkit.files import atomic_write_bytes
from kdkit.seeding import derive_seed


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    state = load_checkpoint(target)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_fsync_is_called_on_file_and_directory(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    atomic_write_bytes(tmp_path / "x", b"data")
    assert len(calls) >= 2  # the temp file, then the directory


def test_a_device_fifo_or_socket_is_never_replaced(tmp_path):
    """Issue 22 rerun: `kdkit export --out /dev/null` renamed a regular file over /dev/null (as root, the
    machine's /dev/null was gone).  A FIFO stands for every non-regular file here."""
    from kdkit.files import WriteError

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match=r"^cannot write .*fifo.png: it is a FIFO, not a regular file; choose a file name$"):
        atomic_write_bytes(fifo, b"data")
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["fifo.png"]
    (tmp_path / "link").symlink_to(fifo)  # a symlink is replaced as a link, its target untouched
    atomic_write_bytes(tmp_path / "link", b"data")
    assert (tmp_path / "link").read_bytes() == b"data" and fifo.is_fifo()


class Custom:
    pass


def test_weights_only_rejects_arbitrary_objects(tmp_path):
    torch.save({"obj": Custom()}, tmp_path / "bad.pt")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "bad.pt")


def test_derive_seed_is_stable():
    assert derive_seed(0, "student", 3) == derive_seed(0, "student", 3)
    assert derive_seed(0, "student", 3) != derive_seed(0, "student", 4)
    assert 0 <= derive_seed("x") < 2**63


def test_a_checkpoint_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path):
    # `kdkit eval` of a run whose best.pt was a FIFO blocked in torch.load for ever (issue 22 rerun)
    from kdkit.engine.checkpoint import CheckpointError

    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    _, exc = finishes_soon(lambda: load_checkpoint(fifo), fifo, timeout=20)
    assert isinstance(exc, CheckpointError), repr(exc)
    assert str(exc).startswith(f"checkpoint {fifo} is a FIFO, not a regular file; restore it"), exc
