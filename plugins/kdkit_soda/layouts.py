"""The MIRFLICKR-25K / NUS-WIDE file layouts of the method family: the CLIP-era one
(:func:`load_clip_layout`: ``caption``/``index``/``label`` files) and DCMH's
(:func:`load_dcmh_layout`: ``IAll``/``YAll``/``LAll``), with their default class names."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdkit import DataError

from .container import CrossModalData, _clean
from .files import MatFile, _float32, _numbers, _read_lines, _rows_first, _strings


def _check_count(counts: dict[str, int]) -> int:
    values = set(counts.values())
    if len(values) != 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataError(f"sample counts differ between files ({listing})")
    return values.pop()


def _read_classes(root: Path, classes_file, n_classes: int, default_names: Sequence[str]) -> list[str]:
    if classes_file:
        path = Path(classes_file)
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise DataError(f"classes file not found: {path}")
        names = [ln.strip() for ln in _read_lines(path, "classes file").splitlines() if ln.strip()]
        if len(names) != n_classes:
            raise DataError(f"{path} lists {len(names)} class names but the labels have {n_classes} columns")
        return names
    if len(default_names) == n_classes:
        return list(default_names)
    return [f"category {i}" for i in range(n_classes)]


#: MIRFLICKR-25K's 24 categories in the order of the usual label files.
MIRFLICKR_CLASSES = ["animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake",
                     "male", "night", "people", "plant life", "portrait", "river", "sea", "sky", "structures",
                     "sunset", "transport", "tree", "water"]
#: NUS-WIDE TC-10's categories (the 10 most frequent concepts), alphabetical as in the usual files.
NUSWIDE_TC10_CLASSES = ["animal", "buildings", "clouds", "grass", "lake", "person", "plants", "sky", "water",
                        "window"]

CAPTION_KEYS = ("caption", "tags", "YAll")
INDEX_KEYS = ("index", "imgs", "FAll")
LABEL_KEYS = ("category", "LAll", "labels")


def load_clip_layout(root: Path, name: str, family: str, on_no_label="drop", on_empty_caption="placeholder",
                     empty_placeholder="123456", classes_file=None) -> CrossModalData:
    """The CLIP-era layout (DCHMT, DSPH, MITH): ``caption.mat`` (or ``caption.txt``, one line per
    sample), ``index.mat`` (image paths) and ``label.mat`` (multi-hot), with the alternative keys."""
    root = Path(root)
    label_mat = MatFile(root / "label.mat")
    label_key = label_mat.pick(LABEL_KEYS, "label")
    labels = _numbers(label_mat.array(label_key), 2, f"{label_mat.path}:{label_key}")
    index_mat = MatFile(root / "index.mat")
    index_key = index_mat.pick(INDEX_KEYS, "image index")
    paths = _strings(index_mat.array(index_key), source=f"{index_mat.path}:{index_key}")
    n = len(paths)
    labels = _rows_first(labels, n, "labels")
    bow = None
    if (root / "caption.mat").is_file():
        cap_mat = MatFile(root / "caption.mat")
        key = cap_mat.pick(CAPTION_KEYS, "caption")
        raw = cap_mat.array(key)
        if raw.dtype.kind in "fiub" and raw.ndim == 2:  # a bag-of-words matrix
            bow = _rows_first(_float32(_numbers(raw, 2, f"{cap_mat.path}:{key}"), f"{cap_mat.path}:{key}"), n,
                              "captions")
            texts = None
            n_text = bow.shape[0]
        else:
            texts = _strings(raw, n, f"{cap_mat.path}:{key}")
            n_text = len(texts)
        cap_source = f"{root / 'caption.mat'}:{key}"
    elif (root / "caption.txt").is_file():
        texts = _read_lines(root / "caption.txt", "caption file").split("\n")
        if texts and texts[-1] == "":
            texts = texts[:-1]
        n_text = len(texts)
        cap_source = str(root / "caption.txt")
    else:
        raise DataError(f"missing file: {root / 'caption.mat'} (or {root / 'caption.txt'})")
    _check_count({str(root / "index.mat"): n, str(root / "label.mat"): int(labels.shape[0]), cap_source: n_text})
    images = [_resolve_image(root, p) for p in paths]
    default = MIRFLICKR_CLASSES if family == "mirflickr" else NUSWIDE_TC10_CLASSES
    classes = _read_classes(root, classes_file, labels.shape[1], default)
    return _clean(name, images, texts, labels, classes, bow, str(root), on_no_label, on_empty_caption,
                  empty_placeholder)


def _resolve_image(root: Path, p: str) -> str:
    path = Path(p)
    if path.is_absolute() and path.exists():
        return str(path)
    for cand in (root / p, root / "images" / path.name, root / path.name):
        if cand.exists():
            return str(cand)
    return str(root / p)  # checked when the image is read (DataError then)


DCMH_FILES = {
    "mirflickr": ("mirflickr25k-iall.mat", "mirflickr25k-yall.mat", "mirflickr25k-lall.mat"),
    "nuswide": ("nus-wide-tc10-iall.mat", "nus-wide-tc10-yall.mat", "nus-wide-tc10-lall.mat"),
}
DCMH_SINGLE = {"mirflickr": ("FLICKR-25K.mat", "mirflickr25k.mat"), "nuswide": ("NUS-WIDE-TC10.mat", "nus-wide.mat")}


def load_dcmh_layout(root: Path, name: str, family: str, file: str | None = None, on_no_label="drop",
                     on_empty_caption="placeholder", empty_placeholder="123456", classes_file=None,
                     vocab_file=None) -> CrossModalData:
    """The DCMH layout: ``IAll``/``images`` (N x 224 x 224 x 3 uint8), ``YAll`` (bag of words),
    ``LAll`` (labels) in one .mat file or the three split files (v5 or v7.3/HDF5)."""
    root = Path(root)
    single = [root / file] if file else [root / f for f in DCMH_SINGLE.get(family, ())]
    single = [p for p in single if p.is_file()]
    if single:
        mats = {"I": MatFile(single[0])}
        mats["Y"] = mats["L"] = mats["I"]
    else:
        fi, fy, fl = DCMH_FILES[family]
        mats = {"I": MatFile(root / fi), "Y": MatFile(root / fy), "L": MatFile(root / fl)}
    lkey = mats["L"].pick(("LAll", "labels", "category"), "label")
    labels = _numbers(mats["L"].array(lkey), 2, f"{mats['L'].path}:{lkey}")
    ikey = mats["I"].pick(("IAll", "images"), "image")
    images = _numbers(mats["I"].array(ikey), 4, f"{mats['I'].path}:{ikey}")
    ykey = mats["Y"].pick(("YAll", "tags", "caption"), "text")
    bow = _numbers(mats["Y"].array(ykey), 2, f"{mats['Y'].path}:{ykey}")
    n_img = _image_count(images)
    labels = _rows_first(labels, n_img, "labels")
    bow = _rows_first(bow, n_img, "YAll")
    _check_count({f"{mats['I'].path}:{ikey}": n_img, f"{mats['Y'].path}:{ykey}": int(bow.shape[0]),
                  f"{mats['L'].path}:{lkey}": int(labels.shape[0])})
    images = _images_nhwc(images, n_img, f"{mats['I'].path}:{ikey}")
    texts = None
    if vocab_file:
        vpath = Path(vocab_file) if Path(vocab_file).is_absolute() else root / vocab_file
        if not vpath.is_file():
            raise DataError(f"vocabulary file not found: {vpath}")
        vocab = [ln.strip() for ln in _read_lines(vpath, "vocabulary file").splitlines() if ln.strip()]
        if len(vocab) != bow.shape[1]:
            raise DataError(f"{vpath} lists {len(vocab)} tags but {ykey} has {bow.shape[1]} columns")
        texts = [" ".join(vocab[j] for j in np.flatnonzero(row)) for row in bow]
    default = MIRFLICKR_CLASSES if family == "mirflickr" else NUSWIDE_TC10_CLASSES
    classes = _read_classes(root, classes_file, labels.shape[1], default)
    bow = _float32(bow, f"{mats['Y'].path}:{ykey}")
    return _clean(name, images, texts, labels, classes, bow, str(root), on_no_label,
                  on_empty_caption, empty_placeholder)


def _image_count(images: np.ndarray) -> int:
    if images.ndim != 4:
        raise DataError(f"image array must be 4-D (N x H x W x 3), got shape {images.shape}")
    # v5: (N, H, W, 3) or (N, 3, H, W); HDF5 after transpose: same
    return int(images.shape[0])


def _images_nhwc(images: np.ndarray, n: int, source: str) -> np.ndarray:
    if images.shape[-1] == 3:
        out = images
    elif images.shape[1] == 3:
        out = np.transpose(images, (0, 2, 3, 1))
    else:
        raise DataError(f"{source}: cannot find the colour axis (size 3) in image array of shape {images.shape}")
    if out.dtype != np.uint8 and out.size and (out.min() < 0 or out.max() > 255):
        raise DataError(f"{source}: image values must lie in 0..255, found {out.min()}..{out.max()}")
    return np.ascontiguousarray(out.astype(np.uint8))
