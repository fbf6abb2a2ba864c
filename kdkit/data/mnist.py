"""Fashion-MNIST and MNIST from their original IDX files, and a reader of the IDX format.

Both datasets ship as four IDX files per dataset (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), usually
gzipped (``.gz``).  Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST's under
:data:`DEBIAN_FASHION_MNIST`, which is where ``fashion_mnist`` looks first.

Where the files are searched, for each base folder (``data.root`` when set; otherwise, for
Fashion-MNIST, Debian's folder then :func:`kdkit.data.default_data_root`, and for MNIST the
latter only):

1. the base folder itself (the four files directly, as Debian installs them);
2. ``BASE/FashionMNIST/raw`` (``BASE/MNIST/raw``): ``BASE`` is the root given to torchvision;
3. ``BASE/raw``: ``BASE`` is torchvision's ``FashionMNIST`` (``MNIST``) folder itself.

The first folder holding both files of the split wins; in a folder, the plain file is preferred
to the ``.gz`` (torchvision keeps both).  Whether a file is gzipped is told by its first bytes,
not by its name.  Nothing is downloaded.

Images are grey 28 x 28; they are yielded as ``3 x H x W`` with the grey value in all three
channels, because every model (and the CLIP teachers) takes RGB input unchanged.  ``images``
is a ``N x 3 x H x W`` *view* of the ``N x H x W`` grey bytes (``Tensor.expand``), so the
replication costs no memory.

Any missing, truncated or corrupt file is a one-line :class:`~kdkit.errors.DataError` naming it.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from kdkit.data.base import TensorImageDataset, check_split
from kdkit.errors import ConfigError, DataError
from kdkit.files import regular_file
from kdkit.paths import user_path

#: Where Debian's ``dataset-fashion-mnist`` installs the four gzipped IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

#: IDX data-type byte -> numpy dtype (the format is big-endian).
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_GZIP_MAGIC = b"\x1f\x8b"

#: The file-name prefix of each split (the test files are named after "10k").
SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# Measured on the train splits (grey values in [0, 1], the same in all three channels).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3

#: Fashion-MNIST's own class names (Zalando's README), in label order.
FASHION_MNIST_RAW_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: The same classes as nouns WordNet resolves through the wordnet_relax plugin's look-up (first
#: noun sense, else the last word): T-shirt -> jersey.n.03 (lemmas jersey, T-shirt, tee shirt),
#: ankle boot -> boot.n.01; the others are their own lemma.  "T-shirt/top" resolves to nothing.
FASHION_MNIST_CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot")
MNIST_RAW_CLASSES = tuple(str(d) for d in range(10))
#: WordNet's first noun sense of "zero" is nothing.n.01; relax.senses {zero: zero.n.02} picks the digit.
MNIST_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --- the IDX format --------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path``, gzipped or not (told by its first bytes).

    IDX: two zero bytes, a data-type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, one big-endian ``uint32``
    per dimension, then the data, big-endian, in C order.  The data must fill exactly the shape
    the header gives.  Returns a read-only array over the bytes read (no copy).  The data are read
    through the (gzip) stream, at most what the header promises plus one byte, and a header
    promising more than :data:`MAX_IDX_BYTES` is refused: a small gzip cannot inflate into memory.

    :raises DataError: one line naming ``path``: unreadable, bad gzip, wrong magic, unknown type,
        truncated or with trailing bytes.
    """
    path = regular_file(path, "IDX file", DataError)
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            # read through the stream, bounded by what the header promises: a small gzip that inflates
            # to gigabytes is refused after at most the promised size plus one byte
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            shape, dtype, data = _read_idx_stream(path, stream)
    except EOFError:
        raise DataError(f"corrupt IDX file {path}: the gzip stream is truncated") from None
    except DataError:
        raise
    except (OSError, zlib.error) as exc:  # bad CRC or length, invalid deflate data; or unreadable
        if gzipped and not isinstance(exc, (PermissionError, IsADirectoryError)):
            raise DataError(f"corrupt IDX file {path}: bad gzip stream ({exc})") from None
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    try:
        return np.frombuffer(data, dtype).reshape(shape)
    except ValueError:  # e.g. 0 x 2**32-1 x 2**32-1: no data, but a shape numpy cannot address
        raise DataError(f"corrupt IDX file {path}: the header gives an impossible shape "
                        f"{' x '.join(map(str, shape))}") from None


#: The most data bytes an IDX header may promise (Fashion-MNIST's largest file holds 47 MB): a
#: header claiming more is refused before anything is decompressed.
MAX_IDX_BYTES = 1 << 30


def _read_idx_stream(path: Path, stream) -> tuple[tuple[int, ...], np.dtype, bytes]:
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(f"corrupt IDX file {path}: {len(magic)} bytes, shorter than the 4-byte IDX magic")
    if magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES or magic[3] == 0:
        raise DataError(f"corrupt IDX file {path}: wrong magic {magic.hex()} (expected 0000, a type byte "
                        f"{'/'.join(f'{t:02x}' for t in IDX_DTYPES)} and a dimension count >= 1)")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"corrupt IDX file {path}: truncated header ({4 + len(dims)} bytes, "
                        f"{ndim} dimensions need {4 + 4 * ndim})")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
    described = f"{' x '.join(map(str, shape))} {dtype.name} ({expected} bytes of data)"
    if expected > MAX_IDX_BYTES:
        raise DataError(f"corrupt IDX file {path}: the header gives {described}, more than kdkit reads "
                        f"({MAX_IDX_BYTES} bytes)")
    data = stream.read(expected + 1)  # one byte more tells trailing data
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        found = f"{len(data)}" if len(data) < expected else "more"
        raise DataError(f"corrupt IDX file {path}: {what}: the header gives {described} but the file holds {found}")
    return shape, dtype, data


def first_per_class(labels: np.ndarray, per_class: int, class_names: Sequence[str], *, what: str = "") -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order (sorted).

    :raises ConfigError: when a class has fewer than ``per_class`` samples (a silently
        unbalanced subset would be worse).
    """
    keep = []
    for label, name in enumerate(class_names):
        found = np.flatnonzero(labels == label)
        if len(found) < per_class:
            raise ConfigError(f"{what or 'dataset'}: class {label} ({name}) has only {len(found)} images, "
                              f"fewer than {per_class}")
        keep.append(found[:per_class])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def split_file_names(split: str) -> tuple[str, str]:
    """The uncompressed names of a split's image and label files."""
    prefix = SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def candidate_folders(base: Path, torchvision_folder: str) -> list[Path]:
    """The folders searched under ``base`` (see the module docstring)."""
    return [base, base / torchvision_folder / "raw", base / "raw"]


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():  # not is_file(): a FIFO or directory there is refused by name, not skipped
            return candidate
    return None


def read_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A split's ``uint8`` images ``N x H x W`` and labels ``N``, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    for path, array, ndim, layout in ((images_path, images, 3, "N x H x W"), (labels_path, labels, 1, "N")):
        if array.dtype != np.uint8:
            raise DataError(f"corrupt IDX file {path}: {array.dtype.name} data, expected unsigned bytes (type 0x08)")
        if array.ndim != ndim:
            raise DataError(f"corrupt IDX file {path}: {array.ndim} dimensions, expected {ndim} ({layout})")
    if len(images) != len(labels):
        raise DataError(f"corrupt IDX files: {images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels")
    if len(labels) and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(f"corrupt IDX file {labels_path}: label {int(labels[bad])} at index {bad} "
                        f"(labels are 0..{num_classes - 1})")
    return images, labels


# --- the datasets ----------------------------------------------------------------------------

class _IDXDataset(TensorImageDataset):
    """What Fashion-MNIST and MNIST share; subclasses set the names, roots and statistics."""

    display = ""                # the dataset's name in messages
    torchvision_folder = ""     # torchvision's folder under its root, holding raw/
    native_size = 28
    CLASSES: Sequence[str] = ()
    RAW_CLASSES: Sequence[str] = ()

    def default_roots(self) -> list[Path]:
        from kdkit.data import default_data_root

        return [default_data_root()]

    def how_to_get(self) -> str:
        """The end of the not-found message: how to get the files."""
        raise NotImplementedError

    def _load(self, split, root, *, image_size, augment, normalize, train_per_class, test_per_class,
              transform) -> None:
        check_split(split, self.name)
        per_class = train_per_class if split == "train" else test_per_class
        if per_class is not None and int(per_class) < 1:
            raise ConfigError(f"data.{split}_per_class must be >= 1, or null for every image; got {per_class}")
        images_path, labels_path = self._locate(split, root)
        grey, labels = read_split(images_path, labels_path, len(self.CLASSES))
        if per_class is not None:
            keep = first_per_class(labels, int(per_class), self.CLASSES,
                                   what=f"{self.name}: data.{split}_per_class={per_class}")
            grey, labels = grey[keep], labels[keep]
        else:
            grey = grey.copy()  # writable: torch warns when it wraps the file's read-only bytes
        self.native_size = grey.shape[1] if grey.shape[1] == grey.shape[2] else None
        self.images = torch.from_numpy(grey).unsqueeze(1).expand(-1, 3, -1, -1)
        self.targets = labels.tolist()
        self.classes, self.raw_classes = list(self.CLASSES), list(self.RAW_CLASSES)
        self.root = str(images_path.parent)
        self.files = (str(images_path), str(labels_path))
        self._init_transform(split, image_size, augment, normalize, transform)

    def _locate(self, split: str, root: str | None) -> tuple[Path, Path]:
        bases = [user_path(root)] if root else self.default_roots()
        images_name, labels_name = split_file_names(split)
        partial = []
        for base in bases:
            for folder in candidate_folders(base, self.torchvision_folder):
                images_path, labels_path = _file_in(folder, images_name), _file_in(folder, labels_name)
                if images_path and labels_path:
                    return images_path, labels_path
                if images_path or labels_path:
                    have, lack = (images_path, labels_name) if images_path else (labels_path, images_name)
                    partial.append(f"{folder} has {have.name} but no {lack}[.gz]")
        where = " or ".join(str(b) for b in bases)
        note = f" ({'; '.join(partial)})" if partial else ""
        raise DataError(
            f"{self.display} {split} split not found: no {images_name}[.gz] and {labels_name}[.gz] in {where}, "
            f"its {self.torchvision_folder}/raw/ or its raw/{note}; {self.how_to_get()}; "
            f"data.name=shapes runs the embedded procedural set"
        )

    def _raw(self, index: int) -> torch.Tensor:
        # A contiguous copy (2 KB): the transforms never see the expanded view's zero channel stride.
        return self.images[index].contiguous()


class FashionMNIST(_IDXDataset):
    """Fashion-MNIST (Zalando): 60,000 training and 10,000 test grey 28 x 28 images of 10 kinds
    of clothing, 6,000 / 1,000 per class.  See the module docstring for where the files are
    searched.  ``classes`` are WordNet nouns (``T-shirt``, ``trouser``, ..., ``ankle boot``);
    ``raw_classes`` the dataset's own names (``T-shirt/top``, ``Trouser``, ...).  Images are
    yielded as RGB (grey replicated): every model and the CLIP teachers take RGB unchanged.

    :param root: folder of the IDX files (null: /usr/share/datasets/fashion-mnist, then kdkit's data folder)
    :param image_size: side of the yielded images (28: native; other sizes resize)
    :param augment: train split: weak (default: 3-px padded random crop + flip), none, strong (+ AutoAugment, cutout)
    :param normalize: subtract Fashion-MNIST's mean and divide by its std (else values in [0, 1])
    :param train_per_class: null: every training image; N: the first N of each class in file order (balanced)
    :param test_per_class: null: every test image; N: the first N of each class in file order
    """

    name = "fashion_mnist"
    display = "Fashion-MNIST"
    torchvision_folder = "FashionMNIST"
    mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    CLASSES, RAW_CLASSES = FASHION_MNIST_CLASSES, FASHION_MNIST_RAW_CLASSES

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        *,
        image_size: int = 28,
        augment: str | None = "weak",
        normalize: bool = True,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        transform: Callable | None = None,
    ):
        self._load(split, root, image_size=image_size, augment=augment, normalize=normalize,
                   train_per_class=train_per_class, test_per_class=test_per_class, transform=transform)

    def default_roots(self) -> list[Path]:
        return [Path(DEBIAN_FASHION_MNIST), *super().default_roots()]

    def how_to_get(self) -> str:
        return ("install Debian's copy with `sudo apt-get install dataset-fashion-mnist`, or set data.root=DIR to "
                "a folder holding the four IDX files (gzipped or not) or torchvision's FashionMNIST/raw/")


class MNIST(_IDXDataset):
    """MNIST: 60,000 training and 10,000 test grey 28 x 28 handwritten digits (classes not
    balanced: 5,421 to 6,742 training images per digit, 892 to 1,135 test images).  Same format,
    layouts and options as :class:`FashionMNIST`; no Debian package ships it, so ``root``
    defaults to kdkit's data folder.  ``classes`` are the digits' English names (``zero`` ..
    ``nine``), ``raw_classes`` ``"0"`` .. ``"9"``.

    :param root: folder of the IDX files (null: kdkit's data folder, $KDKIT_DATA or the cache's data/)
    :param image_size: side of the yielded images (28: native; other sizes resize)
    :param augment: train split: none (default), weak or strong (both flip horizontally, which mirrors digits)
    :param normalize: subtract MNIST's mean and divide by its std (else values in [0, 1])
    :param train_per_class: null: every training image; N: the first N of each digit in file order (at most 5421)
    :param test_per_class: null: every test image; N: the first N of each digit in file order (at most 892)
    """

    name = "mnist"
    display = "MNIST"
    torchvision_folder = "MNIST"
    mean, std = MNIST_MEAN, MNIST_STD
    CLASSES, RAW_CLASSES = MNIST_CLASSES, MNIST_RAW_CLASSES

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        *,
        image_size: int = 28,
        augment: str | None = "none",
        normalize: bool = True,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        transform: Callable | None = None,
    ):
        self._load(split, root, image_size=image_size, augment=augment, normalize=normalize,
                   train_per_class=train_per_class, test_per_class=test_per_class, transform=transform)

    def how_to_get(self) -> str:
        return ("set data.root=DIR to a folder holding MNIST's four IDX files (gzipped or not) or torchvision's "
                "MNIST/raw/ (no Debian package ships MNIST; data.name=fashion_mnist reads Debian's "
                "dataset-fashion-mnist)")
