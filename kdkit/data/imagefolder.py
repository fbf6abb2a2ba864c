"""Image folders in torchvision's ImageFolder layout.

``root/<split dir>/<class folder>/<image>``, where the split directory is ``train`` for the
train split and ``test`` (or, when there is none, ``val``) for the test split; both can be set
(``train_dir``, ``test_dir``).  Class folders are sorted by name (torchvision's rule), so labels
are the same in both splits; the test split must not contain a class folder the train split
lacks.

Class names come from the folder names, or from a mapping file (``class_map``):

* JSON: ``{"n01440764": "tench", ...}``;
* text: one ``folder<TAB>class name`` per line, or ``folder class name`` (split at the first
  whitespace, as ImageNet's ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``).
  With ``class_map_first`` (default True) only the text before the first comma is kept
  ("tench").  Blank lines and lines starting with ``#`` are ignored.

Folders missing from the mapping keep their folder name, with underscores as spaces.

``image_size`` null (the default) keeps small images small: when every probed image of the train
folder has both sides at most :data:`SMALL_SIDE` px, the images' own (largest) side is used, resized
straight (no centre crop) and not at all when every image already has it; otherwise 224.  The probe
reads the headers of up to :data:`PROBE_IMAGES` images spread over the classes (not the pixels).

Without augmentation (the test split, validation, ``augment: none``) the default transform calls
torchvision's ``transforms.v2`` kernels directly (:class:`EvalTransform`): the same tensors as the
``v2.Compose`` of :func:`kdkit.data.transforms.build_transform`, without its per-call dispatch, which cost
about as much as decoding a 32 px image.  Images are decoded by PIL (``torchvision.io`` was measured and
rejected: it crashes on a truncated PNG).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from kdkit.data.base import ImageClassificationDataset, check_split
from kdkit.errors import DataError
from kdkit.files import regular_file
from kdkit.paths import user_path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: images whose sides are all at most this many pixels keep their own size when ``image_size`` is null
SMALL_SIDE = 64
#: the side used for larger images when ``image_size`` is null (ImageNet's)
LARGE_IMAGE_SIZE = 224
#: at most this many image headers are read to find the images' size
PROBE_IMAGES = 1024


def open_image(path):
    """PIL's image at ``path`` (its header read, not its pixels).  One of more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS`` is refused: there PIL only warns of a decompression bomb (and refuses
    from twice as many), and a 150 KB PNG of 12,000 x 12,000 px took 2.7 GB to decode and resize."""
    from PIL import Image

    img = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        img.close()
        raise Image.DecompressionBombError(f"{img.width} x {img.height} pixels, more than PIL.Image.MAX_IMAGE_PIXELS "
                                           f"({limit}): a decompression bomb?")
    return img


def probe_image_sizes(paths: list) -> list[tuple[int, int]]:
    """``(width, height)`` of up to :data:`PROBE_IMAGES` of ``paths``, evenly spaced (headers only)."""
    step = max(1, len(paths) // PROBE_IMAGES)
    sizes = []
    for path in paths[::step][:PROBE_IMAGES]:
        try:
            with open_image(path) as img:
                sizes.append(img.size)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a corrupt file
            raise _unreadable(path, exc) from None
    return sizes


def own_image_size(sizes: list[tuple[int, int]]) -> tuple[int, bool]:
    """``(image_size, uniform)`` for ``image_size: null``: the largest side when all sides are at most
    :data:`SMALL_SIDE`, else :data:`LARGE_IMAGE_SIZE`; ``uniform`` when every image is that square."""
    largest = max((max(size) for size in sizes), default=LARGE_IMAGE_SIZE)
    if largest > SMALL_SIDE:
        return LARGE_IMAGE_SIZE, False
    return largest, all(size == (largest, largest) for size in sizes)


def read_class_map(path: str | Path, *, first_name: bool = True) -> dict[str, str]:
    """Parse a JSON or text folder -> class-name mapping file (see the module docstring)."""
    path = regular_file(user_path(path), "class map file", DataError)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class map file {path}: {exc}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        # ValueError: also over-long integers; RecursionError: deeply nested brackets
        except (ValueError, RecursionError) as exc:
            raise DataError(f"class map file {path} is not valid JSON: {exc}") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise DataError(f"class map file {path}: expected a JSON object of folder name -> class name")
        return {str(k): v.strip() for k, v in mapping.items()}
    mapping = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        folder, sep, name = line.partition("\t") if "\t" in line else line.partition(" ")
        name = name.strip()
        if not sep or not name:
            raise DataError(f"class map file {path}, line {lineno}: expected 'folder<TAB>class name', got {line!r}")
        if first_name:
            name = name.split(",")[0].strip()
        mapping[folder.strip()] = name
    return mapping


def _shown(name: str) -> str:
    """A folder name for a one-line message: quoted when it holds a newline or other control character."""
    return name if name.isprintable() else repr(name)


def _unreadable(path, exc: Exception) -> DataError:
    """The one-line error for an image file PIL cannot open or decode."""
    reason = " ".join(str(exc).split())
    return DataError(f"cannot read image {_shown(str(path))}: {type(exc).__name__}: {reason}")


def list_images(folder: Path, classes: list[str], root: Path) -> list[tuple[str, int]]:
    """``(path, label)`` of the images under ``folder/<class>`` for each of ``classes`` present, in
    torchvision's order (classes, then sorted directories, then sorted names); images are told by
    their extension, as torchvision does.  An image name on a FIFO, device or socket is refused
    by type (opening a FIFO blocks for ever).  Directory symlinks: see :func:`_walk`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    samples = []
    seen: list[str] = []
    split_real, root_real = os.path.realpath(folder), os.path.realpath(root)
    for label, name in enumerate(classes):
        top = folder / name
        if not top.is_dir():
            continue
        for dirpath, names in sorted(_walk(str(top), root_real, split_real, seen)):
            for fname in sorted(names):
                if has_file_allowed_extension(fname, IMG_EXTENSIONS):
                    path = os.path.join(dirpath, fname)
                    regular_file(path, "image", DataError)
                    samples.append((path, label))
    return samples


def _walk(top: str, root_real: str, split_real: str, seen: list[str]):
    """``(dirpath, file names)`` of ``top`` and its subdirectories.  A directory symlink is followed
    only into ``data.root`` and out of the split folder, to a directory no other link reached: a
    link that loops (``ln -s .. loop`` multiplied the images and mislabelled them), points
    elsewhere in the split folder (a second copy), leaves the root or overlaps another link is a
    one-line error naming it."""
    if os.path.islink(top):
        _check_dir_link(top, root_real, split_real, seen)
    for dirpath, dirs, names in os.walk(top, followlinks=False):
        yield dirpath, names
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                yield from _walk(os.path.join(dirpath, d), root_real, split_real, seen)


def _check_dir_link(link: str, root_real: str, split_real: str, seen: list[str]) -> None:
    target = os.path.realpath(link)

    def within(path: str, parent: str) -> bool:
        return os.path.commonpath([path, parent]) == parent

    if not within(target, root_real):
        why = f"leaves data.root {root_real}"
    elif within(target, split_real):
        why = f"points back into {split_real} (a loop, or a second copy of its images)"
    elif any(within(target, s) or within(s, target) for s in seen):
        why = "reaches a folder another link already reached"
    else:
        seen.append(target)
        return
    raise DataError(f"image folder: directory symlink {_shown(link)} -> {_shown(target)} {why}; a link is "
                    "followed only into data.root, outside the split folder, once: remove or replace it")


class EvalTransform:
    """:func:`kdkit.data.transforms.build_transform` for ``augment="none"`` through the ``transforms.v2``
    kernels: PIL image (or ``uint8`` tensor) -> resize (short side to ``size * 256 / 224`` and centre crop,
    or straight to ``size x size``; none when ``resize`` is False) -> ``float32`` in [0, 1] -> normalised.
    The same tensors as the ``v2.Compose``; a plain class so that it pickles to DataLoader workers."""

    def __init__(self, size: int, mean, std, *, resize: bool, center_crop: bool, normalize: bool):
        self.size, self.resize, self.center_crop = int(size), bool(resize), bool(center_crop)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.normalize = bool(normalize)

    def __call__(self, image):
        import torch
        from torchvision.transforms.v2 import functional as F

        x = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
        x = x.as_subclass(torch.Tensor)  # a tv_tensors.Image would be returned as one
        if self.resize and self.center_crop:
            x = F.resize_image(x, [int(round(self.size * 256 / 224))], antialias=True)
            x = F.center_crop_image(x, [self.size, self.size])
        elif self.resize:
            x = F.resize_image(x, [self.size, self.size], antialias=True)
        x = F.to_dtype_image(x, torch.float32, scale=True)
        return F.normalize_image(x, self.mean, self.std) if self.normalize else x

    def __repr__(self) -> str:
        return (f"EvalTransform(size={self.size}, resize={self.resize}, center_crop={self.center_crop}, "
                f"normalize={self.normalize})")


class ImageFolderDataset(ImageClassificationDataset):
    """Images read from class folders (see the module docstring).

    Options: ``image_size`` (null: the images' own size when small, else 224; see the module docs), ``augment`` (train: ``"weak"`` default, ``"none"``,
    ``"strong"``), ``normalize`` (True), ``mean`` / ``std`` (ImageNet's by default),
    ``class_map`` (mapping file), ``class_map_first`` (True), ``train_dir`` ("train"),
    ``test_dir`` ("test", else "val").  Deterministic resizing resizes the short side to
    ``image_size * 256 / 224`` and centre-crops ``image_size``.
    """

    name = "imagefolder"
    native_size = None
    center_crop = True

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        *,
        image_size: int | None = None,
        augment: str | None = "weak",
        normalize: bool = True,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        class_map: str | None = None,
        class_map_first: bool = True,
        train_dir: str = "train",
        test_dir: str | None = None,
        transform: Callable | None = None,
    ):
        check_split(split, "imagefolder")
        if not root:
            raise DataError("dataset 'imagefolder' needs a root folder: --set data.root=PATH (holding train/ and val/ or test/)")
        base = user_path(root)
        if not base.is_dir():
            raise DataError(f"image folder root not found: {base} (set data.root to a folder holding train/ and val/ or test/)")
        if split == "train":
            folder = base / train_dir
        elif test_dir:
            folder = base / test_dir
        else:
            folder = base / "test" if (base / "test").is_dir() else base / "val"
        if not folder.is_dir():
            raise DataError(f"image folder for split {split!r} not found: {folder}")
        train_folder = base / train_dir
        # Labels come from the train split's class folders, so both splits agree.
        class_dirs = sorted(p.name for p in (train_folder if train_folder.is_dir() else folder).iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(f"no class folders in {train_folder if train_folder.is_dir() else folder}")
        try:
            here = sorted(p.name for p in folder.iterdir() if p.is_dir())
        except OSError as exc:
            raise DataError(f"cannot read image folder {folder}: {exc.strerror or exc}") from None
        extra = sorted(set(here) - set(class_dirs))
        if extra:
            raise DataError(f"{folder} has class folders missing from {train_folder}: "
                            f"{', '.join(map(_shown, extra[:5]))}")
        self.samples = list_images(folder, class_dirs, base)
        if not self.samples:
            raise DataError(f"no images found under {folder}")
        # an imageless class would silently widen the head
        empty = sorted(set(here) - {class_dirs[t] for _, t in self.samples})
        if empty:
            raise DataError(f"class folder {_shown(str(folder / empty[0]))} holds no image"
                            + (f" (nor do {len(empty) - 1} more: {', '.join(map(_shown, empty[1:4]))}"
                               f"{', ...' if len(empty) > 4 else ''})" if len(empty) > 1 else "")
                            + "; add images or remove the folder")
        self.targets = [t for _, t in self.samples]
        self.raw_classes = class_dirs
        mapping = read_class_map(class_map, first_name=class_map_first) if class_map else {}
        self.classes = [mapping.get(c, c.replace("_", " ")) for c in class_dirs]
        self.root = str(folder)
        if mean is not None:
            self.mean = tuple(float(v) for v in mean)
        else:
            self.mean = IMAGENET_MEAN
        self.std = tuple(float(v) for v in std) if std is not None else IMAGENET_STD
        if image_size is None:
            # both splits must agree: the size comes from the train folder when there is one
            probed = self.samples if split == "train" or not train_folder.is_dir() else list_images(
                train_folder, class_dirs, base)
            probed = [path for path, _ in probed]
            image_size, uniform = own_image_size(probe_image_sizes(probed))
            if image_size <= SMALL_SIDE:
                self.center_crop = False  # a crop would cut the border of an image already this small
                self.native_size = image_size if uniform else None
        self._init_transform(split, image_size, augment, normalize, transform)

    def _default_transform(self, augment: str):
        if augment != "none":
            return super()._default_transform(augment)
        # the v2.Compose's dispatch per image cost as much as decoding a 32 px PNG (issue 23, item 2)
        resize = self.native_size is None or self.native_size != self.image_size
        return EvalTransform(self.image_size, self.mean, self.std, resize=resize, center_crop=self.center_crop,
                             normalize=self.normalize)

    def _raw(self, index: int):
        path = self.samples[index][0]
        try:
            with open_image(path) as img:
                return img.convert("RGB")
        # not only OSError: a truncated header is a ValueError, a 179 M-pixel claim a DecompressionBombError
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a corrupt file
            raise _unreadable(path, exc) from None
