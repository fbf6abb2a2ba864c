"""CIFAR-100 / CIFAR-10 read from tiny files written here in torchvision's real pickle format."""
import pickle

import numpy as np
import pytest
import torch

from kdkit.data.cifar import CIFAR10Dataset, CIFAR100Dataset
from kdkit.errors import DataError

FINE = ["apple", "aquarium_fish", "maple_tree", "pickup_truck", "sweet_pepper"]
COARSE = ["fruit_and_vegetables", "fish", "trees", "vehicles_1"]


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar100(root, n_train=10, n_test=5, as_bytes=False):
    """The real files are Python 2 pickles whose strings load as ``str`` with encoding="latin1";
    ``as_bytes`` writes Python 3 ``bytes`` keys/names instead (kdkit accepts both)."""
    b = (lambda s: s.encode()) if as_bytes else (lambda s: s)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        fine = [i % len(FINE) for i in range(n)]
        _dump(folder / name, {
            b("filenames"): [b(f"img{i}.png") for i in range(n)],
            b("batch_label"): b(f"{name} batch"),
            b("fine_labels"): fine,
            b("coarse_labels"): [min(i, 3) for i in fine],
            b("data"): data,
        })
    _dump(folder / "meta", {b("fine_label_names"): [b(c) for c in FINE],
                            b("coarse_label_names"): [b(c) for c in COARSE]})
    return folder


@pytest.mark.parametrize("as_bytes", [False, True])
def test_reads_cifar100_pickles(tmp_path, as_bytes):
    folder = write_cifar100(tmp_path, as_bytes=as_bytes)
    ds = CIFAR100Dataset("train", str(tmp_path))
    assert len(ds) == 10 and ds.num_classes == 5
    assert ds.raw_classes == FINE
    assert ds.classes == ["apple", "aquarium fish", "maple tree", "pickup truck", "sweet pepper"]
    assert ds.targets == [i % 5 for i in range(10)]
    assert ds.coarse_targets[:3] == [0, 1, 2] and ds.coarse_classes[0] == "fruit and vegetables"
    # pixel layout: row-major 3x32x32 exactly as the pickle stores it
    with open(folder / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    raw = entry[b"data" if as_bytes else "data"]
    assert torch.equal(ds.get_uint8(3), torch.from_numpy(raw[3].reshape(3, 32, 32)))
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 3
    test = CIFAR100Dataset("test", str(tmp_path))
    assert len(test) == 5 and test.augment == "none"
    # root may also be the cifar-100-python folder itself
    assert len(CIFAR100Dataset("test", str(folder))) == 5


def test_matches_torchvision_reader(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    write_cifar100(tmp_path)
    ours = CIFAR100Dataset("train", str(tmp_path))

    class NoMD5(torchvision.datasets.CIFAR100):
        def _check_integrity(self):
            return True

        def _load_meta(self):
            import os

            with open(os.path.join(self.root, self.base_folder, "meta"), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")["fine_label_names"]

    tv = NoMD5(str(tmp_path), train=True)
    assert tv.classes == ours.raw_classes and tv.targets == ours.targets
    assert np.array_equal(tv.data, ours.images.permute(0, 2, 3, 1).numpy())


def test_resize_for_large_models(tmp_path):
    write_cifar100(tmp_path)
    ds = CIFAR100Dataset("test", str(tmp_path), image_size=64)
    assert ds[0][0].shape == (3, 64, 64) and ds.get_uint8(0).shape == (3, 64, 64)


def test_missing_directory_names_path_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        CIFAR100Dataset("train", str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg and "data.download=true" in msg and "\n" not in msg


def test_missing_file_names_it(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(DataError, match="meta"):
        CIFAR100Dataset("test", str(tmp_path))


def test_corrupt_pickle_names_file(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "train").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError) as info:
        CIFAR100Dataset("train", str(tmp_path))
    assert str(folder / "train") in str(info.value)


def test_pickle_without_keys_names_file(tmp_path):
    folder = write_cifar100(tmp_path)
    _dump(folder / "test", {"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match="fine_labels") as info:
        CIFAR100Dataset("test", str(tmp_path))
    assert str(folder / "test") in str(info.value)


def test_malicious_pickle_is_refused(tmp_path):
    folder = write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    _dump(folder / "test", {"data": Evil()})
    with pytest.raises(DataError, match="refusing"):
        CIFAR100Dataset("test", str(tmp_path))


def test_cifar10_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird"]
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", {"data": np.full((2, 3072), i, np.uint8), "labels": [0, i % 3]})
    _dump(folder / "test_batch", {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]})
    _dump(folder / "batches.meta", {"label_names": names})
    ds = CIFAR10Dataset("train", str(tmp_path))
    assert len(ds) == 10 and ds.classes == names and int(ds.images[9].max()) == 5
    assert CIFAR10Dataset("test", str(tmp_path)).targets == [0, 1, 2]


def test_a_huge_memo_index_is_refused_before_it_allocates(tmp_path):
    """Five corrupt bytes (LONG_BINPUT 10**9) made CPython's unpickler fill a 16 GB memo table; 2 * 10**8 keeps
    the check affordable: 3 GB without the fix."""
    import resource

    folder = write_cifar100(tmp_path)
    valid = (folder / "test").read_bytes()
    assert valid.count(b"q\x00") >= 1  # BINPUT 0 right after the top dict
    (folder / "test").write_bytes(valid.replace(b"q\x00", b"r" + (2 * 10**8).to_bytes(4, "little"), 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"corrupt CIFAR file .*test: UnpicklingError: memo index 200000000"):
        CIFAR100Dataset("test", str(tmp_path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GB


@pytest.mark.parametrize("field, value, message", [
    ("data", None, r"'data' must be a uint8 array of 3072 values per image, found NoneType"),
    ("data", np.zeros((5, 3072), np.float64), r"'data' must be a uint8 array .*found float64 array"),
    ("fine_labels", [0, 1, "2", 3, 4], r"'fine_labels' must be a list of integers"),
    ("fine_labels", [0, 1, None, 3, 4], r"'fine_labels' must be a list of integers"),
    ("fine_labels", 5, r"'fine_labels' must be a list of integers, found int"),
    ("coarse_labels", [0.5] * 5, r"'coarse_labels' must be a list of integers"),
])
def test_fields_of_the_wrong_kind_are_data_errors(tmp_path, field, value, message):
    folder = write_cifar100(tmp_path)
    with open(folder / "test", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry[field] = value
    _dump(folder / "test", entry)
    with pytest.raises(DataError, match=message):
        CIFAR100Dataset("test", str(tmp_path))


def test_class_names_must_be_strings_and_errors_are_one_line(tmp_path):
    folder = write_cifar100(tmp_path)
    _dump(folder / "meta", {"fine_label_names": [None] * 5})
    with pytest.raises(DataError, match=r"'fine_label_names' must be a list of names"):
        CIFAR100Dataset("test", str(tmp_path))
    (folder / "meta").write_bytes(b"\x80\x02P0\n.")  # a persistent id: pickle's message spans two lines
    with pytest.raises(DataError) as info:
        CIFAR100Dataset("test", str(tmp_path))
    assert "\n" not in str(info.value)
