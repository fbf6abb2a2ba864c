"""Atomic writes and weights_only checkpoints."""
from __future__ import annotations

import os

import pytest
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
