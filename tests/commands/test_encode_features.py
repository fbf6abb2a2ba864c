"""``kdkit encode --features``: bad input files are one-line errors (exit 2), never a traceback,
NaN is refused rather than packed, and the output never overwrites the input (issue 12)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from kdkit.cli import main


def _encode(capsys, features, out):
    status = main(["encode", "--features", str(features), "--out", str(out)])
    err = capsys.readouterr().err
    return status, err


def _one_line_error(capsys, features, out, pattern):
    status, err = _encode(capsys, features, out)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("kdkit: error: "), err
    assert pattern in err, err
    return err


def test_a_text_file_named_npy_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "f.npy"
    path.write_text("0.1 0.2 0.3\n")
    _one_line_error(capsys, path, tmp_path / "codes.npy", "not a .npy file")


def test_an_object_array_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "f.npy"
    np.save(path, np.array([[1, "a"]] * 8, dtype=object), allow_pickle=True)
    _one_line_error(capsys, path, tmp_path / "codes.npy", "Object arrays cannot be loaded")


@pytest.mark.parametrize("array", [np.full((2, 8), "x"), np.ones((2, 8), np.complex64)], ids=["strings", "complex"])
def test_a_non_real_dtype_is_a_one_line_error(tmp_path, capsys, array):
    path = tmp_path / "f.npy"
    np.save(path, array)
    _one_line_error(capsys, path, tmp_path / "codes.npy", "is not real numbers")


def test_nan_is_refused_not_packed(tmp_path, capsys):
    x = np.ones((3, 8), np.float32)
    x[2, 5] = np.nan
    path = tmp_path / "f.npy"
    np.save(path, x)
    _one_line_error(capsys, path, tmp_path / "codes.npy", "1 rows hold NaN (first: row 2)")
    assert not (tmp_path / "codes.npy").exists()


@pytest.mark.parametrize("out", ["f.npy", "./f.npy", "f", "link.npy"])
def test_the_output_never_overwrites_the_input(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.save("f.npy", x)
    (tmp_path / "link.npy").symlink_to(tmp_path / "f.npy")
    _one_line_error(capsys, "f.npy", out, "would overwrite it")
    np.testing.assert_array_equal(np.load("f.npy"), x)


def test_valid_features_of_any_real_dtype_pack_by_sign(tmp_path, capsys):
    # -1e-50 is negative in float64 but would round to -0.0 (>= 0) in a float32 copy
    x = np.array([[-1e-50, 0.0, 2.0, -3.0, np.inf, -np.inf, 1.0, -1.0]])
    for stored in (x, x.astype(np.float32), np.array([[-1, 0, 2, -3, 4, -5, 1, -1]], np.int16), x >= 0):
        path = tmp_path / f"f_{stored.dtype.name}.npy"
        np.save(path, stored)
        status, err = _encode(capsys, path, tmp_path / "codes.npy")
        assert status == 0, err
        bits = stored if stored.dtype == np.bool_ else stored >= 0
        np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), np.packbits(bits, axis=1, bitorder="little"),
                                      err_msg=str(stored.dtype))


# --- issue 22: --out names a file ---

@pytest.mark.parametrize("out", ["", "d", "d.npy"], ids=["empty", "dir", "dir-named-npy"])
def test_an_out_that_is_empty_or_a_directory_is_a_one_line_error(tmp_path, capsys, monkeypatch, out):
    """`--out ''` was a traceback; `--out DIR` left DIR.npy.tmp.npy behind."""
    monkeypatch.chdir(tmp_path)
    np.save("f.npy", np.ones((2, 8), np.float32))
    (tmp_path / "d").mkdir()
    (tmp_path / "d.npy").mkdir()
    _one_line_error(capsys, "f.npy", out, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.npy", "f.npy"]


@pytest.mark.parametrize("out, message", [("codes/", "--out codes/ names a directory (it ends in a slash)"),
                                          ("fifo", "--out fifo is a FIFO, not a regular file")],
                         ids=["trailing-slash", "fifo"])
def test_an_out_that_names_no_file_is_refused_not_renamed(tmp_path, capsys, monkeypatch, out, message):
    """Issue 22 rerun: `--out codes/` wrote codes.npy beside the directory it named, `--out /dev/null`
    wrote /dev/null.npy (a FIFO stands for the device here)."""
    monkeypatch.chdir(tmp_path)
    np.save("f.npy", np.ones((2, 8), np.float32))
    os.mkfifo("fifo")
    _one_line_error(capsys, "f.npy", out, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "fifo"]


def test_bits_that_disagree_with_the_features_are_refused_not_ignored(tmp_path, capsys):
    """``--bits 32`` beside 64-dimensional features wrote 64-bit codes without a word."""
    path = tmp_path / "f.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32))
    status = main(["encode", "--features", str(path), "--bits", "32", "--out", str(tmp_path / "codes.npy")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "--bits 32: --features" in err and "has 64 dimensions, one bit each; drop --bits, or give 64" in err
    assert not (tmp_path / "codes.npy").exists()
    assert main(["encode", "--features", str(path), "--bits", "64", "--out", str(tmp_path / "codes.npy")]) == 0
