"""Fuzz the IDX files of MNIST / Fashion-MNIST (kdkit/data/mnist.py), plain and gzipped.

Outcomes allowed: a dataset whose images are N x 3 x H x W bytes with N labels in 0..9, or a
one-line DataError.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st

from kdkit.data.mnist import MNIST, read_idx
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz
budget = family_settings(3)  # the three tests share the family's budget

N, SIDE = 4, 6
_rng = np.random.default_rng(0)


def _idx(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    return bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


IMAGES = _idx(_rng.integers(0, 256, (N, SIDE, SIDE), dtype=np.uint8))
LABELS = _idx(np.array([3, 1, 4, 1], np.uint8))
SEEDS = {"t10k-images-idx3-ubyte": IMAGES, "t10k-labels-idx1-ubyte": LABELS}


def _load(files: dict) -> None:
    with scratch_dir() as d, time_limit():
        for name, data in files.items():
            (d / name).write_bytes(data)
        try:
            ds = MNIST("test", str(d), augment="none", normalize=False, image_size=SIDE)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert ds.images.ndim == 4 and ds.images.shape[1] == 3 and len(ds.targets) == ds.images.shape[0]
        assert all(0 <= t < 10 for t in ds.targets)


@budget
@given(target=st.sampled_from(sorted(SEEDS)), gzipped=st.booleans(), data=st.data())
def test_mutated_idx_files(target, gzipped, data):
    files = {name + (".gz" if gzipped else ""): gzip.compress(raw, mtime=0) if gzipped else raw
             for name, raw in SEEDS.items()}
    name = target + (".gz" if gzipped else "")
    files[name] = data.draw(mutated(files[name]))
    _load(files)


@budget
@given(type_byte=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
       dims=st.lists(st.one_of(st.integers(0, 7), st.just(2**32 - 1), st.just(2**31)), min_size=0, max_size=4),
       payload=st.binary(max_size=300), labels_too=st.booleans())
def test_structured_headers(type_byte, dims, payload, labels_too):
    header = bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    files = dict(SEEDS)
    files["t10k-labels-idx1-ubyte" if labels_too else "t10k-images-idx3-ubyte"] = header + payload
    _load(files)


@budget
@given(raw=st.one_of(mutated(gzip.compress(IMAGES, mtime=0)), mutated(IMAGES), st.binary(max_size=64)))
def test_read_idx_returns_an_array_or_refuses(raw):
    with scratch_dir() as d, time_limit():
        (d / "f").write_bytes(raw)
        try:
            array = read_idx(d / "f")
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert isinstance(array, np.ndarray) and array.ndim >= 1
