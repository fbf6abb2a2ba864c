"""Cross-modal dataset loaders: both layouts written by the tests (.mat v5 via scipy, HDF5 via h5py),
the JSONL manifest, bad data and the split presets."""
from __future__ import annotations

import json

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
