"""Cross-modal dataset loaders: both layouts written by the tests (.mat v5 via scipy, HDF5 via h5py),
the JSONL manifest, bad data and the split presets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from kdkit.errors import ConfigError, DataError
from kdkit_soda import data as D


def _write_images(root, n):
    paths = []
    (root / "images").mkdir()
    for i in range(n):
        p = root / "images" / f"im{i}.png"
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(p)
        paths.append(f"images/im{i}.png")
    return paths


def _labels(n, c=4, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 2, (n, c)).astype(np.uint8)
    lab[lab.sum(1) == 0, 0] = 1
    return lab


def test_clip_layout_v5(tmp_path):
    n = 12
    paths = _write_images(tmp_path, n)
    lab = _labels(n)
    caps = [f"caption number {i}" for i in range(n)]
    scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(paths, dtype=object)})
    scipy.io.savemat(tmp_path / "caption.mat", {"caption": np.array(caps, dtype=object)})
    scipy.io.savemat(tmp_path / "label.mat", {"category": lab})
    ds = D.mirflickr_factory("all", str(tmp_path))
    assert len(ds) == n and ds.data.texts == caps
    assert ds.classes == [f"category {i}" for i in range(4)]
    np.testing.assert_array_equal(ds.data.labels, lab)
    item = ds[3]
    assert item["text"] == "caption number 3" and item["image"].endswith("im3.png")
    assert D.load_image_rgb(item["image"]).shape == (8, 8, 3)


def test_clip_layout_alternative_keys_caption_txt_and_hdf5_labels(tmp_path):
    n = 10
    paths = _write_images(tmp_path, n)
    lab = _labels(n, 3)
    scipy.io.savemat(tmp_path / "index.mat", {"imgs": np.array(paths, dtype=object)})
    (tmp_path / "caption.txt").write_text("\n".join(f"tags {i}" for i in range(n)) + "\n")
    with h5py.File(tmp_path / "label.mat", "w") as f:  # v7.3: HDF5, MATLAB column-major -> transposed
        f["LAll"] = lab.T.astype(np.float64)
    ds = D.nuswide_factory("all", str(tmp_path), layout="clip")
    assert len(ds) == n and ds.data.texts[4] == "tags 4"
    np.testing.assert_array_equal(ds.data.labels, lab)


def test_dcmh_layout_hdf5_and_v5(tmp_path):
    n, v = 9, 6
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    bow = rng.integers(0, 2, (n, v)).astype(np.float64)
    lab = _labels(n, 24)
    h5 = tmp_path / "h5"
    h5.mkdir()
    for name, key, arr in (("mirflickr25k-iall.mat", "IAll", imgs), ("mirflickr25k-yall.mat", "YAll", bow),
                           ("mirflickr25k-lall.mat", "LAll", lab)):
        with h5py.File(h5 / name, "w") as f:
            f[key] = np.transpose(arr)
    ds = D.mirflickr_factory("all", str(h5))
    np.testing.assert_array_equal(ds.data.images, imgs)
    np.testing.assert_array_equal(ds.data.bow, bow.astype(np.float32))
    np.testing.assert_array_equal(ds.data.labels, lab)
    assert ds.data.texts is None and ds.classes == D.MIRFLICKR_CLASSES
    # v5, one file, images stored N x 3 x H x W, with a tag vocabulary -> texts
    v5 = tmp_path / "v5"
    v5.mkdir()
    scipy.io.savemat(v5 / "FLICKR-25K.mat", {"images": np.transpose(imgs, (0, 3, 1, 2)), "YAll": bow, "LAll": lab})
    (v5 / "vocab.txt").write_text("\n".join(f"w{j}" for j in range(v)))
    ds5 = D.mirflickr_factory("all", str(v5), vocab_file="vocab.txt")
    np.testing.assert_array_equal(ds5.data.images, imgs)
    assert ds5.data.texts[0] == " ".join(f"w{j}" for j in np.flatnonzero(bow[0]))


def test_bad_data_is_named(tmp_path):
    n = 6
    paths = _write_images(tmp_path, n)
    scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(paths, dtype=object)})
    scipy.io.savemat(tmp_path / "caption.mat", {"caption": np.array([f"c{i}" for i in range(n)], dtype=object)})
    scipy.io.savemat(tmp_path / "label.mat", {"wrongkey": _labels(n)})
    with pytest.raises(DataError, match=r"label.mat: no label key; expected one of category, LAll, labels"):
        D.mirflickr_factory("all", str(tmp_path))
    scipy.io.savemat(tmp_path / "label.mat", {"category": _labels(n + 1)})
    with pytest.raises(DataError, match="sample counts differ"):
        D.mirflickr_factory("all", str(tmp_path))
    (tmp_path / "caption.mat").unlink()
    with pytest.raises(DataError, match="missing file.*caption.mat"):
        D.mirflickr_factory("all", str(tmp_path))


def test_empty_captions_and_missing_labels_are_counted(tmp_path):
    n = 8
    paths = _write_images(tmp_path, n)
    lab = _labels(n)
    lab[2] = 0
    lab[5] = 0
    caps = [f"c{i}" for i in range(n)]
    caps[1] = ""
    scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(paths, dtype=object)})
    scipy.io.savemat(tmp_path / "label.mat", {"category": lab})
    (tmp_path / "caption.txt").write_text("\n".join(caps) + "\n")
    ds = D.nuswide_factory("all", str(tmp_path))  # defaults: drop unlabelled, placeholder for empty
    assert len(ds) == 6
    assert ds.data.notes == {"dropped_no_label": 2, "empty_caption_placeholder": 1}
    assert ds.data.texts[1] == "123456"
    with pytest.raises(DataError, match="2 samples have no label"):
        D.nuswide_factory("all", str(tmp_path), on_no_label="error")
    with pytest.raises(DataError, match="1 empty captions"):
        D.nuswide_factory("all", str(tmp_path), on_empty_caption="error")
    kept = D.nuswide_factory("all", str(tmp_path), on_no_label="keep", on_empty_caption="drop")
    assert len(kept) == 7 and kept.data.notes == {"kept_no_label": 2, "dropped_empty_caption": 1}


def test_jsonl_manifest(tmp_path):
    paths = _write_images(tmp_path, 4)
    rows = [{"image": p, "text": f"t{i}", "labels": ["cat"] if i % 2 else ["dog", "cat"]} for i, p in enumerate(paths)]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = D.jsonl_factory("all", str(tmp_path))
    assert ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(ds.data.labels, [[1, 1], [1, 0], [1, 1], [1, 0]])
    (tmp_path / "bad.jsonl").write_text('{"image": "x", "text": "y"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing key 'labels'"):
        D.jsonl_factory("all", str(tmp_path), manifest="bad.jsonl")



@pytest.mark.parametrize("line, message", [
    (b"5", r"bad.jsonl:2: expected a JSON object .*found a number"),
    (b"null", r"bad.jsonl:2: expected a JSON object .*found null"),
    (b'["image", "text", "labels"]', r"bad.jsonl:2: expected a JSON object .*found a list"),
    (b'{"image": "a.png", "text": "caf\xe9", "labels": ["cat"]}', r"bad.jsonl:2: not UTF-8"),
    (b'{"image": "a.png", "text": "t", "labels": [["cat"]]}', r"bad.jsonl:2: label \[\'cat\'\] is neither"),
    (b'{"image": "a.png", "text": "t", "labels": [1.5]}', r"bad.jsonl:2: label 1.5 is neither"),
    (b'{"image": "a.png", "text": "t", "labels": [true]}', r"bad.jsonl:2: label True is neither"),
    (b'{"image": "a.png", "text": "t", "labels": [1000000000000]}',
     r"bad.jsonl:2: class index 1000000000000 out of range 0..99999 \(at most 100000 classes\)"),
    (b'{"image": 7, "text": "t", "labels": [0]}', r"bad.jsonl:2: 'image' must be a non-empty file path"),
    (b'{"image": "a.png", "text": {"t": 1}, "labels": [0]}', r"bad.jsonl:2: 'text' must be a string"),
    (b"[" * 100_000, r"bad.jsonl:2: invalid JSON: RecursionError"),
], ids=["number", "null", "list", "not-utf8", "nested-label", "float-label", "bool-label", "huge-index",
        "image-not-string", "text-not-string", "deep-nesting"])
def test_jsonl_bad_lines_are_named_by_line(tmp_path, line, message):
    """Issue 12: no TypeError/UnicodeDecodeError traceback, no class named "['cat']" or "1.5", no
    10**12-entry class list."""
    good = b'{"image": "a.png", "text": "t", "labels": [0]}'
    (tmp_path / "bad.jsonl").write_bytes(good + b"\n" + line + b"\n")
    with pytest.raises(DataError, match=message):
        D.jsonl_factory("all", str(tmp_path), manifest="bad.jsonl")


def test_jsonl_lines_are_split_at_newlines_only(tmp_path):
    # U+2028 is a legal character inside a JSON string; str.splitlines would cut the record there
    (tmp_path / "m.jsonl").write_text('\ufeff{"image": "a.png", "text": "a\u2028b", "labels": [1]}\n', "utf-8")
    ds = D.jsonl_factory("all", str(tmp_path), manifest="m.jsonl")
    assert ds.data.texts == ["a\u2028b"] and ds.classes == ["category 0", "category 1"]


def test_a_fake_hdf5_mat_file_is_a_data_error(tmp_path):
    (tmp_path / "label.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really hdf5" * 4)
    (tmp_path / "index.mat").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(DataError, match=r"cannot read .*label.mat as a MATLAB v7.3 \(HDF5\) file"):
        D.mirflickr_factory("all", str(tmp_path))


def test_mat_arrays_of_the_wrong_kind_are_data_errors(tmp_path):
    n = 4
    paths = _write_images(tmp_path, n)
    scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(paths, dtype=object)})
    (tmp_path / "caption.txt").write_text("\n".join(f"c{i}" for i in range(n)))
    scipy.io.savemat(tmp_path / "label.mat", {"category": np.array(["a", "b", "c", "d"], dtype=object)})
    with pytest.raises(DataError, match=r"label.mat:category: expected numbers, got an array of dtype object"):
        D.mirflickr_factory("all", str(tmp_path))
    with h5py.File(tmp_path / "label.mat", "w") as f:
        f.create_group("category")
    with pytest.raises(DataError, match=r"label.mat: 'category' is an HDF5 group, not an array"):
        D.mirflickr_factory("all", str(tmp_path))
    with h5py.File(tmp_path / "label.mat", "w") as f:  # a header claiming 2**60 bytes, no data written
        f.create_dataset("category", shape=(2**30, 2**27), dtype=np.uint8, chunks=(1, 1024))
    with pytest.raises(DataError, match=r"label.mat: 'category' claims .* GiB .*more than this machine's memory"):
        D.mirflickr_factory("all", str(tmp_path))



def _v5_bytes(arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays)
    return buffer.getvalue()


_PATHS = np.array([f"images/im{i}.png" for i in range(4)], dtype=object)
#: (valid file, a tag inside it, the corrupt tag): each corrupt file crashed scipy 1.17 with SIGSEGV
_SCIPY_CRASHES = {
    "unknown-type-code": (_v5_bytes({"category": np.eye(4, 3, dtype=np.uint8)}),
                          b"\x02\x00\x00\x00\x0c\x00\x00\x00", b"\x80\x00\x00\x00\x0c\x00\x00\x00"),
    "dims-of-9-bytes": (_v5_bytes({"index": _PATHS}), b"\x05\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x0e",
                        b"\x05\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00\x0e"),
    "dims-of-1-byte": (_v5_bytes({"index": _PATHS}), b"\x05\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x0e",
                       b"\x05\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0e"),
}


@pytest.mark.parametrize("case", sorted(_SCIPY_CRASHES))
def test_v5_files_that_crash_scipy_are_refused_first(tmp_path, case):
    valid, tag, corrupt_tag = _SCIPY_CRASHES[case]
    assert tag in valid
    path = tmp_path / "label.mat"
    path.write_bytes(valid.replace(tag, corrupt_tag, 1))
    # a child process: without the check this is a segmentation fault, not an exception
    code = ("import sys; from pathlib import Path; from kdkit.errors import DataError\n"
            "from kdkit_soda.data import MatFile\n"
            "try:\n    MatFile(Path(sys.argv[1]))\nexcept DataError as exc:\n    print(exc)")
    child = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(Path(D.__file__).parents[1])))
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"cannot read {path} as a .mat file: corrupt MATLAB v5 data" in child.stdout


def test_the_v5_check_passes_valid_files_of_every_class():
    import io

    import scipy.sparse

    from kdkit_soda.matv5 import v5_problem

    arrays = {"paths": _PATHS, "double": np.eye(3), "complex": np.ones((2, 2)) * 1j, "text": "hello",
              "struct": {"a": _PATHS, "b": {"c": np.ones(2)}}, "cells": np.array([_PATHS, _PATHS], dtype=object),
              "bool": np.array([True, False]), "empty": np.zeros((0, 3)), "sparse": scipy.sparse.csc_matrix(np.eye(3)),
              "int64": np.arange(3, dtype=np.int64), "empty_cell": np.array([], dtype=object)}
    for compression in (False, True):
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, arrays, do_compression=compression)
        assert v5_problem(io.BytesIO(buffer.getvalue()), len(buffer.getvalue())) is None
    # MATLAB- and Octave-written files of scipy's own test suite (objects, function handles, ...)
    data_dir = Path(scipy.io.__file__).parent / "matlab" / "tests" / "data"
    checked = 0
    for path in sorted(data_dir.glob("*.mat")):
        try:
            if scipy.io.matlab.matfile_version(str(path))[0] != 1:
                continue
            scipy.io.loadmat(path)
        except Exception:  # noqa: BLE001 - files scipy refuses itself
            continue
        with open(path, "rb") as fh:
            assert v5_problem(fh, path.stat().st_size) is None, path.name
        checked += 1
    assert checked > 50 or not data_dir.is_dir()


def test_text_files_that_are_not_utf8_are_named_with_the_line(tmp_path):
    n = 3
    paths = _write_images(tmp_path, n)
    scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(paths, dtype=object)})
    scipy.io.savemat(tmp_path / "label.mat", {"category": _labels(n)})
    (tmp_path / "caption.txt").write_bytes(b"one\ntwo caf\xe9\nthree\n")
    with pytest.raises(DataError, match=r"caption file .*caption.txt, line 2: not UTF-8"):
        D.mirflickr_factory("all", str(tmp_path))
    (tmp_path / "caption.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "classes.txt").write_bytes(b"a\nb\nc\n\xff\n")
    with pytest.raises(DataError, match=r"classes file .*classes.txt, line 4: not UTF-8"):
        D.mirflickr_factory("all", str(tmp_path), classes_file="classes.txt")


def test_split_presets_follow_the_reference_rule():
    n = 20015
    sp = D.make_splits(n, "mirflickr", "dchmt", val_fraction=0.1)
    perm = np.random.RandomState(1814).permutation(n)
    np.testing.assert_array_equal(sp.query, perm[:5120])
    np.testing.assert_array_equal(sp.train, perm[5120:5120 + 10240])
    np.testing.assert_array_equal(sp.retrieval, perm[5120:])
    assert sp.sizes() == {"query": 5120, "train": 10240, "fit": 9216, "val": 1024, "retrieval": 14895}
    assert set(sp.fit) | set(sp.val) == set(sp.train) and not set(sp.fit) & set(sp.val)
    mith = D.make_splits(n, "nuswide", "mith")
    assert (len(mith.query), len(mith.train), mith.seed) == (2100, 10500, 1)
    assert D.make_splits(n, "mirflickr", "dsph").sizes()["query"] == 5000
    assert D.make_splits(n, "mirflickr", "dcmh").seed == 0
    assert D.make_splits(n, "mirflickr", "dcmh", seed=7).seed == 7
    with pytest.raises(DataError, match="needs 5120 query"):
        D.make_splits(100, "mirflickr", "dchmt")
    with pytest.raises(ConfigError, match="unknown split preset"):
        D.make_splits(100, "mirflickr", "nope")


def test_embedded_scenes_are_seeded():
    a = D.make_scenes(40, seed=3)
    b = D.make_scenes(40, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.texts == b.texts and a.labels.sum(1).min() >= 1
    assert a.fingerprint() == b.fingerprint() != D.make_scenes(40, seed=4).fingerprint()


def test_label_prompts_join():
    from kdkit_soda.features import label_prompts

    lab = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert label_prompts(lab, ["dog", "sky", "tree"]) == [
        "An image of dog.", "An image of dog and sky.", "An image of dog, sky and tree."]
    with pytest.raises(ConfigError, match="must contain"):
        label_prompts(lab, ["a", "b", "c"], template="no slot")
