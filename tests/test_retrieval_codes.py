"""Issue 22: code files and their sidecars (kdkit.retrieval.save_codes / load_codes)."""
import json
import os

import numpy as np
import pytest

from kdkit.errors import DataError
from kdkit.retrieval import load_codes, save_codes


def test_a_sidecar_disagreeing_with_the_array_is_one_line(tmp_path):
    path = save_codes(tmp_path / "codes.npy", np.zeros((3, 8), np.uint8))
    assert load_codes(path)[1]["bits"] == 64
    meta = json.loads((tmp_path / "codes.npy.json").read_text())
    meta["bits"] = 128
    (tmp_path / "codes.npy.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        load_codes(path)
    msg = str(info.value)
    assert "\n" not in msg and "bits=128" in msg and "64-bit" in msg


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    monkeypatch.setattr(type(tmp_path), "replace", lambda self, dst: fail(self, dst))
    with pytest.raises(OSError):
        save_codes(tmp_path / "codes.npy", np.zeros((3, 8), np.uint8))
    assert os.listdir(tmp_path) == []
