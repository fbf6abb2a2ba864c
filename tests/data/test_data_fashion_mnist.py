"""``fashion_mnist`` / ``mnist``: the IDX reader and the datasets, on tiny IDX files written here
byte by byte (so every expected pixel and label is known), plus Debian's real files when installed."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import kdkit_prestarted
import numpy as np
import pytest
import torch

from kdkit.data.mnist import (DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, FASHION_MNIST_RAW_CLASSES, MNIST,
                              FashionMNIST, read_idx)
from kdkit.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 40, "test": 20}


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """The IDX encoding of ``array``: magic 00 00 TYPE NDIM, big-endian uint32 dims, the data."""
    return bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28 x 28 images whose labels run 9, 8, ..., 0, 9, ... (not sorted: the subset
    must follow file order) and whose pixel (0, 0) is the sample's index."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    labels = (9 - np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_dataset(folder: Path, gz: bool) -> dict:
    """Both splits' four files in ``folder``; returns the arrays written, per split."""
    written = {}
    for seed, (split, (images_name, labels_name)) in enumerate(NAMES.items()):
        images, labels = make_split(SIZES[split], seed)
        write(folder / images_name, idx_bytes(images), gz)
        write(folder / labels_name, idx_bytes(labels), gz)
        written[split] = images, labels
    return written


@pytest.fixture(params=["gzip", "plain"])
def flat(request, tmp_path):
    """The four files directly under a folder, gzipped or not."""
    return tmp_path, write_dataset(tmp_path, gz=request.param == "gzip")


def test_reads_the_bytes_written(flat):
    root, written = flat
    for split in ("train", "test"):
        ds = FashionMNIST(split, str(root), augment="none", normalize=False)
        images, labels = written[split]
        assert len(ds) == SIZES[split] and ds.targets == labels.tolist()
        assert ds.classes == list(FASHION_MNIST_CLASSES) and ds.raw_classes == list(FASHION_MNIST_RAW_CLASSES)
        assert ds.images.shape == (SIZES[split], 3, 28, 28) and ds.images.dtype == torch.uint8
        for i in (0, 7, SIZES[split] - 1):
            grey = torch.from_numpy(images[i])
            assert torch.equal(ds.get_uint8(i), grey.expand(3, 28, 28))  # grey replicated to RGB
            x, y = ds[i]
            assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and y == labels[i]
            assert torch.allclose(x, grey.float().div(255).expand(3, 28, 28))
        assert ds.to_pixels(ds[3][0][None]).shape == (1, 3, 28, 28)


def test_normalisation_resize_and_augment_levels(flat):
    root, written = flat
    ds = FashionMNIST("test", str(root))
    assert ds.augment == "none"  # the test split is never augmented
    images, _ = written["test"]
    expected = (torch.from_numpy(images[5]).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(ds[5][0][0], expected, atol=1e-5)
    assert torch.allclose(ds.to_pixels(ds[5][0][None])[0, 0], torch.from_numpy(images[5]).float() / 255, atol=1e-5)
    train = FashionMNIST("train", str(root), image_size=32)
    assert train.augment == "weak" and MNIST("train", str(root)).augment == "none"
    for level in ("none", "weak", "strong"):
        view = train.with_augment(level)
        assert view[0][0].shape == (3, 32, 32) and view.get_uint8(0).shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="data.augment"):
        FashionMNIST("train", str(root), augment="heavy")


def test_class_balanced_subset_is_the_first_n_of_each_class_in_file_order(flat):
    root, written = flat
    _, labels = written["train"]
    ds = FashionMNIST("train", str(root), train_per_class=2, test_per_class=1, augment="none")
    # labels are 9, 8, ..., 0, 9, ...: the first two of each class are samples 0..19, in file order
    assert ds.targets == labels[:20].tolist()
    assert [int(ds.get_uint8(i)[0, 0, 0]) for i in range(len(ds))] == list(range(20))  # pixel (0,0) = index
    test = FashionMNIST("test", str(root), train_per_class=2, test_per_class=1)
    assert test.targets == list(range(9, -1, -1)) and len(test) == 10
    with pytest.raises(ConfigError, match=r"train_per_class=5: class 0 \(T-shirt\) has only 4 images"):
        FashionMNIST("train", str(root), train_per_class=5)
    with pytest.raises(ConfigError, match="test_per_class must be >= 1"):
        FashionMNIST("test", str(root), test_per_class=0)


def test_torchvision_layouts_and_plain_files_before_gzip(tmp_path):
    written = write_dataset(tmp_path / "FashionMNIST" / "raw", gz=True)
    for root in (tmp_path, tmp_path / "FashionMNIST", tmp_path / "FashionMNIST" / "raw"):
        ds = FashionMNIST("test", str(root))
        assert ds.targets == written["test"][1].tolist()
        assert ds.files[0].endswith("t10k-images-idx3-ubyte.gz")
    # torchvision keeps the .gz next to the extracted file: the plain one is read
    write_dataset(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert FashionMNIST("test", str(tmp_path)).files[0].endswith("t10k-images-idx3-ubyte")
    # MNIST looks in MNIST/raw, not in FashionMNIST/raw
    with pytest.raises(DataError, match="MNIST train split not found"):
        MNIST("train", str(tmp_path))
    write_dataset(tmp_path / "MNIST" / "raw", gz=True)
    digits = MNIST("train", str(tmp_path))
    assert digits.classes[:3] == ["zero", "one", "two"] and digits.raw_classes[9] == "9" and len(digits) == 40


def test_gzip_is_told_by_content_not_name(tmp_path):
    images, labels = make_split(10, 0)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(idx_bytes(images)))  # gzipped, no .gz
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels))  # plain, named .gz
    ds = FashionMNIST("train", str(tmp_path), augment="none")
    assert ds.targets == labels.tolist() and torch.equal(ds.images[:, 0], torch.from_numpy(images))


def test_read_idx_other_types_and_read_only_view(tmp_path):
    values = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    path = write(tmp_path / "ints", idx_bytes(values, 0x0C), gz=False)
    array = read_idx(path)
    assert array.shape == (3, 4) and array.tolist() == values.tolist() and not array.flags.writeable


def _one_line_error(exc_info, path: Path, *words: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


CORRUPTIONS = {
    # name: (which file, bytes to write instead, gzip them?, words the message must hold)
    "bad gzip": ("images", lambda good: gzip.compress(good)[:-30] + b"\0" * 30, False, ("gzip",)),
    "truncated gzip": ("images", lambda good: gzip.compress(good)[: len(gzip.compress(good)) // 2], False,
                       ("gzip", "truncated")),
    "wrong magic": ("images", lambda good: b"\x01\x02" + good[2:], True, ("wrong magic",)),
    "unknown type": ("labels", lambda good: good[:2] + b"\x07" + good[3:], True, ("wrong magic",)),
    "truncated data": ("images", lambda good: good[:-100], True, ("truncated", "40 x 28 x 28")),
    "trailing bytes": ("labels", lambda good: good + b"\0", True, ("trailing bytes",)),
    "short header": ("images", lambda good: good[:10], True, ("truncated header",)),
    "empty file": ("labels", lambda good: b"", False, ("shorter than",)),
    # found by the fuzz target: no data bytes needed, but numpy cannot address the shape
    "impossible shape": ("images", lambda good: good[:4] + struct.pack(">3I", 2**32 - 1, 0, 2**32 - 1), False,
                         ("impossible shape", "4294967295 x 0 x 4294967295")),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, case):
    write_dataset(tmp_path, gz=False)
    which, corrupt, gz, words = CORRUPTIONS[case]
    plain = tmp_path / NAMES["train"][0 if which == "images" else 1]
    good = plain.read_bytes()
    plain.unlink()
    path = write(plain, corrupt(good), gz)
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, path, *words)


def test_inconsistent_files_are_one_line_errors(tmp_path):
    images, labels = make_split(40, 0)
    images_path = write(tmp_path / NAMES["train"][0], idx_bytes(images), gz=False)
    labels_path = write(tmp_path / NAMES["train"][1], idx_bytes(labels[:39]), gz=False)
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, labels_path, str(images_path), "40 images", "39 labels")

    bad = labels.copy()
    bad[17] = 10
    write(tmp_path / NAMES["train"][1], idx_bytes(bad), gz=False)
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, labels_path, "label 10 at index 17", "0..9")

    write(tmp_path / NAMES["train"][1], idx_bytes(labels), gz=False)
    write(tmp_path / NAMES["train"][0], idx_bytes(images.reshape(40, 784)), gz=False)
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, images_path, "2 dimensions, expected 3")

    write(tmp_path / NAMES["train"][0], idx_bytes(images.astype(">i4"), 0x0C), gz=False)
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, images_path, "int32", "0x08")


def test_missing_files_name_the_search_and_the_ways_out(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError) as exc_info:
        FashionMNIST("train", str(tmp_path / "nowhere"))
    message = _one_line_error(exc_info, tmp_path / "nowhere", "train-images-idx3-ubyte[.gz]",
                              "sudo apt-get install dataset-fashion-mnist", "data.root=DIR", "FashionMNIST/raw",
                              "data.name=shapes")
    assert message.startswith("Fashion-MNIST train split not found")
    with pytest.raises(DataError) as exc_info:  # one of the two files present: said so
        FashionMNIST("train", str(tmp_path))
    _one_line_error(exc_info, tmp_path, "has train-images-idx3-ubyte.gz but no train-labels-idx1-ubyte[.gz]")
    with pytest.raises(ConfigError, match="split must be one of"):
        FashionMNIST("val", str(tmp_path))


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    images, labels = make_split(40, 0)
    write(tmp_path / NAMES["train"][0], idx_bytes(images)[:-5], gz=True)  # truncated
    write(tmp_path / NAMES["train"][1], idx_bytes(labels), gz=True)
    r = kdkit_prestarted.run([sys.executable, "-m", "kdkit", "train", "--set", "data.name=fashion_mnist",
                              "--set", f"data.root={tmp_path}", "--set", "train.epochs=1",
                              "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("kdkit: error:")]
    assert errors == lines[-1:] and errors[0].startswith("kdkit: error: corrupt IDX file "), r.stderr
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in errors[0] and "truncated" in errors[0]


def test_registered_with_options_and_without_importing_torch():
    code = ("import sys, kdkit.data.builtin as b; assert 'torch' not in sys.modules; "
            "assert {'fashion_mnist', 'mnist'} <= set(b.DATASETS); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing() as pm:
        registry = pm.registry("datasets")
    options = registry.get("fashion_mnist").options
    assert options["image_size"].default == 28 and options["augment"].default == "weak"
    assert options["normalize"].default is True
    assert options["train_per_class"].default is None and options["test_per_class"].default is None
    assert options["train_per_class"].nullable and options["train_per_class"].range == "[1, inf)"
    assert registry.get("mnist").options["augment"].default == "none"
    assert "first N of each class" in options["train_per_class"].help
    with pytest.raises(ConfigError, match="valid options: .*train_per_class"):
        registry.build("fashion_mnist", "train", None, per_class=3)


def test_class_names_resolve_through_wordnet_relax():
    """Through the plugin's own look-up (relation_lemmas: first noun sense, else the last word)."""
    pytest.importorskip("nltk")
    from kdkit_wordnet_relax.relaxer import relation_lemmas
    from kdkit_wordnet_relax.wordnet_data import get_wordnet

    from kdkit import KdkitError

    try:
        wn = get_wordnet(allow_download=False)
    except KdkitError as exc:
        pytest.skip(f"WordNet unavailable: {exc}")
    _, details = relation_lemmas(wn, list(FASHION_MNIST_CLASSES))
    synsets = {name: details[name]["synset"] for name in FASHION_MNIST_CLASSES}
    assert synsets == {"T-shirt": "jersey.n.03", "trouser": "trouser.n.01", "pullover": "pullover.n.01",
                       "dress": "dress.n.01", "coat": "coat.n.01", "sandal": "sandal.n.01", "shirt": "shirt.n.01",
                       "sneaker": "gym_shoe.n.01", "bag": "bag.n.01", "ankle boot": "boot.n.01"}
    assert all(wn.synset(s).lexname() == "noun.artifact" for s in synsets.values())
    _, digits = relation_lemmas(wn, MNIST.CLASSES)
    assert all(wn.synset("digit.n.01") in wn.synset(digits[name]["synset"]).hypernyms() for name in MNIST.CLASSES[1:])
    assert digits["zero"]["synset"] == "nothing.n.01"  # WordNet's first sense; relax.senses picks zero.n.02
    _, zero = relation_lemmas(wn, ["zero"], senses={"zero": "zero.n.02"})
    assert wn.synset("digit.n.01") in wn.synset(zero["zero"]["synset"]).hypernyms()


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_files():
    train = FashionMNIST("train")
    assert train.root == DEBIAN_FASHION_MNIST and len(train) == 60000 and train.images.shape == (60000, 3, 28, 28)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    test = FashionMNIST("test")
    assert len(test) == 10000 and np.bincount(test.targets).tolist() == [1000] * 10
    grey = train.images[:, 0].float() / 255
    assert abs(grey.mean().item() - train.mean[0]) < 1e-3 and abs(grey.std().item() - train.std[0]) < 1e-3
    subset = FashionMNIST("train", train_per_class=200)
    assert len(subset) == 2000 and np.bincount(subset.targets).tolist() == [200] * 10


def _peak_reading(path: Path) -> tuple[int, str]:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(DataError) as exc_info:
            read_idx(path)
        return tracemalloc.get_traced_memory()[1], str(exc_info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("promised", [(2, 3), (1 << 16, 1 << 16, 1 << 4)])
def test_a_gzip_inflating_beyond_its_header_is_read_in_bounded_memory(tmp_path, promised):
    # issue 22: a 14 MB gzip inflating to 3.2 GB peaked at 6.8 GB before its one-line error
    header = bytes([0, 0, 0x08, len(promised)]) + struct.pack(f">{len(promised)}I", *promised)
    inflated = 64 << 20
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header)
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            fh.write(block)
    assert path.stat().st_size < inflated // 100
    peak, message = _peak_reading(path)
    assert peak < 8 << 20, f"peak {peak} bytes reading a gzip of {inflated} inflated bytes"
    assert "\n" not in message and str(path) in message
    assert ("trailing bytes" if len(promised) == 2 else "more than kdkit reads") in message, message
