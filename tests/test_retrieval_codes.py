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


@pytest.mark.parametrize("kind", ["npz", "text"])
def test_a_code_file_that_is_not_a_npy_array_is_one_line(tmp_path, kind):
    # np.load returned an .npz archive as an NpzFile: 'search --db codes.npz' was an AttributeError traceback
    path = tmp_path / "codes.npy"
    if kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, codes=np.zeros((3, 8), np.uint8))
    else:
        path.write_text("0 1 2\n")
    with pytest.raises(DataError) as info:
        load_codes(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert ("an .npz archive" in msg) if kind == "npz" else ("not a .npy file" in msg and "pickle" not in msg)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_sidecar_that_is_not_a_regular_file_is_refused_by_type(tmp_path, kind):
    path = save_codes(tmp_path / "codes.npy", np.zeros((3, 8), np.uint8))
    sidecar = tmp_path / "codes.npy.json"
    sidecar.unlink()
    os.mkfifo(sidecar) if kind == "fifo" else sidecar.mkdir()
    with pytest.raises(DataError, match="is a (FIFO|directory), not a regular file"):
        load_codes(path)
