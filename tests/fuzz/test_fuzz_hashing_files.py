"""Fuzz the files of the hashing datasets (plugins/kdkit_soda): `.mat` v5 (scipy), `.mat` v7.3
(HDF5, h5py) and the `.txt` caption / class / vocabulary files, in both layouts (CLIP-era
index/label/caption and DCMH IAll/YAll/LAll).

Outcomes allowed: a dataset whose arrays agree (N images, N x C 0/1 labels, N texts or bag-of-words
rows), or a one-line DataError.
"""
from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import scipy.io
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdkit.errors import KdkitError
from kdkit_soda import data as D

pytestmark = pytest.mark.fuzz
budget = family_settings(3)  # the three tests share the family's budget

N, C, V = 4, 3, 5
_rng = np.random.default_rng(0)
LABELS = np.eye(N, C, dtype=np.uint8) | (_rng.random((N, C)) < 0.3)
IMAGES = _rng.integers(0, 256, (N, 6, 6, 3), dtype=np.uint8)
BOW = (_rng.random((N, V)) < 0.5).astype(np.float64)
PATHS = np.array([f"images/im{i}.png" for i in range(N)], dtype=object)
CAPTIONS = np.array([f"caption {i}" for i in range(N)], dtype=object)


def _v5(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays)
    return buffer.getvalue()


def _hdf5(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for key, arr in arrays.items():
            f[key] = np.transpose(arr)  # MATLAB's column-major order, as v7.3 files store it
    return buffer.getvalue()


#: layout -> {file name: valid bytes}; each example mutates one file of one layout.
SEEDS = {
    "clip-v5": {"index.mat": _v5({"index": PATHS}), "label.mat": _v5({"category": LABELS}),
                "caption.mat": _v5({"caption": CAPTIONS})},
    "clip-hdf5-txt": {"index.mat": _v5({"imgs": PATHS}), "label.mat": _hdf5({"LAll": LABELS.astype(np.float64)}),
                      "caption.txt": "\n".join(CAPTIONS).encode() + b"\n", "classes.txt": b"cat\ndog\nbird\n"},
    "dcmh-v5": {"FLICKR-25K.mat": _v5({"images": IMAGES, "YAll": BOW, "LAll": LABELS}),
                "vocab.txt": "\n".join(f"w{j}" for j in range(V)).encode()},
    "dcmh-hdf5": {"mirflickr25k-iall.mat": _hdf5({"IAll": IMAGES}), "mirflickr25k-yall.mat": _hdf5({"YAll": BOW}),
                  "mirflickr25k-lall.mat": _hdf5({"LAll": LABELS})},
}


def _load(layout: str, files: dict) -> None:
    with scratch_dir() as d, time_limit():
        for name, data in files.items():
            (d / name).write_bytes(data)
        options = {}
        if "classes.txt" in files:
            options["classes_file"] = "classes.txt"
        if "vocab.txt" in files:
            options["vocab_file"] = "vocab.txt"
        try:
            ds = D.mirflickr_factory("all", str(d), layout=layout.split("-")[0], **options)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        data = ds.data
        n = len(data)
        assert data.labels.dtype == np.uint8 and data.labels.ndim == 2 and set(np.unique(data.labels)) <= {0, 1}
        assert data.labels.shape[1] == len(data.classes) and len(data.images) == n
        assert data.texts is None or (len(data.texts) == n and all(isinstance(t, str) for t in data.texts))
        assert data.bow is None or data.bow.shape[0] == n
        if isinstance(data.images, np.ndarray):
            assert data.images.dtype == np.uint8 and data.images.ndim == 4 and data.images.shape[-1] == 3


@st.composite
def one_file_mutated(draw):
    layout = draw(st.sampled_from(sorted(SEEDS)))
    files = dict(SEEDS[layout])
    name = draw(st.sampled_from(sorted(files)))
    files[name] = draw(mutated(files[name]))
    return layout, files


@budget
@given(case=one_file_mutated())
def test_mutated_files(case):
    _load(*case)


# Arrays of any kind where the loaders expect labels, images, bags of words, paths or captions.
_number_array = hnp.arrays(
    dtype=st.one_of(hnp.integer_dtypes(endianness="="), hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
                    hnp.boolean_dtypes()),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
_any_array = st.one_of(
    _number_array,
    hnp.arrays(dtype=object, shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5),
               elements=st.one_of(st.text(max_size=4), st.integers(-5, 5))),
)


@budget
@given(layout=st.sampled_from(["clip-v5", "dcmh-v5"]), key=st.sampled_from(["index", "category", "caption", "images",
                                                                            "YAll", "LAll"]),
       array=_any_array)
def test_v5_arrays_of_any_kind(layout, key, array):
    files = dict(SEEDS[layout])
    if layout == "clip-v5":
        name = {"index": "index.mat", "caption": "caption.mat"}.get(key, "label.mat")
        key = {"images": "index", "YAll": "caption", "LAll": "category"}.get(key, key)
    else:
        name = "FLICKR-25K.mat"
        key = {"index": "images", "category": "LAll", "caption": "YAll"}.get(key, key)
    try:
        mat = scipy.io.loadmat(io.BytesIO(files[name]))
        arrays = {k: v for k, v in mat.items() if not k.startswith("__")}
        arrays[key] = array
        files[name] = _v5(arrays)
    except (ValueError, TypeError):  # savemat cannot write this array: nothing to test
        return
    _load(layout, files)


@budget
@given(key=st.sampled_from(["IAll", "YAll", "LAll"]), array=_number_array)
def test_hdf5_arrays_of_any_kind(key, array):
    files = dict(SEEDS["dcmh-hdf5"])
    files[f"mirflickr25k-{key[0].lower()}all.mat"] = _hdf5({key: array})
    _load("dcmh-hdf5", files)
