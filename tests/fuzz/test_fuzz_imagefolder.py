"""Fuzz ImageFolder trees and their class-map files (kdkit/data/imagefolder.py).

Outcomes allowed: a dataset whose every class has an image and whose labels index its classes,
or a one-line DataError.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from kdkit.data.imagefolder import ImageFolderDataset, read_class_map
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz
budget = family_settings(3)  # the three tests share the family's budget

JSON_MAP = json.dumps({"n01440764": "tench", "n02102040": "English springer"}).encode()
TEXT_MAP = b"# ImageNet style\nn01440764 tench, Tinca tinca\nn02102040\tEnglish springer\n\n"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (CRCs right) with a tiny body: PIL refuses over 179 M pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


PNG = _png()
BOMB = _png_claiming(30000, 30000)


@budget
@given(raw=st.one_of(mutated(JSON_MAP), mutated(TEXT_MAP)), suffix=st.sampled_from([".json", ".txt"]),
       first_name=st.booleans())
def test_mutated_class_maps(raw, suffix, first_name):
    with scratch_dir() as d, time_limit():
        (d / f"map{suffix}").write_bytes(raw)
        try:
            mapping = read_class_map(d / f"map{suffix}", first_name=first_name)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())


folder_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1,
                       max_size=6).filter(lambda n: n not in (".", ".."))
file_kinds = st.sampled_from(["png", "garbage.png", "empty.png", "bomb.png", "txt", "dir"])
trees = st.dictionaries(folder_names, st.lists(file_kinds, max_size=3), max_size=4)


def _write_split(folder, tree) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for cls, files in tree.items():
        (folder / cls).mkdir(exist_ok=True)
        for i, kind in enumerate(files):
            if kind == "dir":
                (folder / cls / f"sub{i}").mkdir()
            elif kind == "txt":
                (folder / cls / f"{i}.txt").write_text("not an image")
            else:
                data = {"png": PNG, "garbage.png": b"\x89PNG garbage", "empty.png": b"", "bomb.png": BOMB}[kind]
                (folder / cls / f"{i}.png").write_bytes(data)


@budget
@given(train=trees, test=st.one_of(st.none(), trees), split=st.sampled_from(["train", "test"]),
       class_map=st.one_of(st.none(), mutated(JSON_MAP), st.just(TEXT_MAP)))
def test_structured_trees(train, test, split, class_map):
    with scratch_dir() as d, time_limit():
        try:
            _write_split(d / "train", train)
            if test is not None:
                _write_split(d / "val", test)
        except OSError:  # a name this file system refuses: nothing to test
            return
        options = {}
        if class_map is not None:
            (d / "map.json").write_bytes(class_map)
            options["class_map"] = str(d / "map.json")
        try:
            ds = ImageFolderDataset(split, str(d), image_size=4, augment="none", normalize=False, **options)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert len(ds.classes) == len(ds.raw_classes) and len(ds) == len(ds.targets)
        assert all(0 <= t < len(ds.classes) for t in ds.targets)
        if split == "train":
            assert set(ds.targets) == set(range(len(ds.classes)))  # no class without an image
        for i in range(len(ds)):
            try:
                x, y = ds[i]
            except KdkitError as exc:
                assert "\n" not in str(exc), str(exc)
                continue
            assert tuple(x.shape) == (3, 4, 4) and y == ds.targets[i]


@budget
@given(data=st.one_of(mutated(PNG), st.binary(max_size=64),
                     st.builds(_png_claiming, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))))
def test_mutated_image_files(data):
    with scratch_dir() as d, time_limit():
        _write_split(d / "train", {"cat": ["png"]})
        (d / "train" / "cat" / "0.png").write_bytes(data)
        ds = ImageFolderDataset("train", str(d), image_size=4, augment="none", normalize=False)
        try:
            x, _ = ds[0]
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert tuple(x.shape) == (3, 4, 4)
