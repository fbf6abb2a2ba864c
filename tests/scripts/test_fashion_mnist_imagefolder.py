"""scripts/fashion_mnist_imagefolder.py on tiny IDX files written here in the real (gzipped) format."""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import kdkit_prestarted
import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fashion_mnist_imagefolder.py"


def _write_idx(path: Path, array: np.ndarray, truncate: int = 0):
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(data[:len(data) - truncate])


def _source(tmp_path, truncate=0):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0] = labels  # each image remembers its label
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images, truncate if prefix == "t10k" else 0)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return src


def test_class_balanced_image_folders(tmp_path):
    out = tmp_path / "out"
    r = kdkit_prestarted.run([sys.executable, str(SCRIPT), str(out), "--source", str(_source(tmp_path)),
                              "--train-per-class", "3", "--test-per-class", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for split, per_class in (("train", 3), ("test", 2)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert len(folders) == 10 and "ankle_boot" in folders and "t-shirt" in folders
        assert all(len(list((out / split / f).glob("*.png"))) == per_class for f in folders)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("fm", SCRIPT)
    fm = module_from_spec(spec)
    spec.loader.exec_module(fm)
    for c, name in enumerate(fm.CLASSES):
        files = sorted((out / "train" / name).glob("*.png"))
        assert len(files) == 3
        pixels = np.asarray(Image.open(files[0]))
        assert pixels.shape == (28, 28, 3) and pixels[0, 0, 0] == c


def test_truncated_file_is_a_one_line_error(tmp_path):
    r = kdkit_prestarted.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--source",
                              str(_source(tmp_path, truncate=100)), "--train-per-class", "3", "--test-per-class",
                              "2"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "truncated" in r.stderr
