"""Issue 22: every dataset file a user's path names must be a regular file, refused by type
*before* it is opened (opening a FIFO blocks for ever; a device may never end)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from kdkit_engine_testutil import finishes_soon
from PIL import Image

from kdkit.errors import DataError


def _fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _raises_soon(fn, fifo, timeout=30):
    """``fn()``'s exception; a call still blocked after ``timeout`` s (on the FIFO) fails the test."""
    _, exc = finishes_soon(fn, fifo, timeout)
    assert exc is not None, "no error raised"
    return exc


def _one_line(exc, path, kind="a FIFO"):
    assert isinstance(exc, DataError), repr(exc)
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg and kind in msg, msg
    return msg


def test_imagefolder_refuses_a_fifo_named_like_an_image(tmp_path):
    from kdkit.data.imagefolder import ImageFolderDataset

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / cls / "a.png")
    fifo = _fifo(tmp_path / "train" / "cat" / "f.png")
    exc = _raises_soon(lambda: ImageFolderDataset("train", str(tmp_path)), fifo)
    _one_line(exc, fifo)


def test_class_map_file_is_a_fifo(tmp_path):
    from kdkit.data.imagefolder import read_class_map

    fifo = _fifo(tmp_path / "map.txt")
    _one_line(_raises_soon(lambda: read_class_map(fifo), fifo), fifo)


def test_idx_file_is_a_fifo(tmp_path):
    from kdkit.data.mnist import FashionMNIST

    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 0]))
    fifo = _fifo(tmp_path / "train-images-idx3-ubyte")
    _one_line(_raises_soon(lambda: FashionMNIST("train", str(tmp_path)), fifo), fifo)


def test_text_dataset_file_is_a_fifo_or_a_directory(tmp_path):
    from kdkit.data.text import TextClassificationDataset

    fifo = _fifo(tmp_path / "train.jsonl")
    _one_line(_raises_soon(lambda: TextClassificationDataset("train", str(tmp_path)), fifo), fifo)
    (tmp_path / "other.csv").mkdir()
    exc = _raises_soon(lambda: TextClassificationDataset("train", str(tmp_path), train_file="other.csv"), fifo)
    _one_line(exc, tmp_path / "other.csv", "a directory")


def test_cifar_file_is_a_device(tmp_path):
    from kdkit.data.cifar import CIFAR100Dataset

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes(b"x")
    (folder / "train").symlink_to("/dev/zero")  # a pickle reader would read for ever
    with pytest.raises(DataError) as info:
        CIFAR100Dataset("train", str(tmp_path), verify=True)
    _one_line(info.value, folder / "train", "a character device")
