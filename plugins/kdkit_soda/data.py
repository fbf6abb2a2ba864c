"""Cross-modal hashing datasets: MIRFLICKR-25K / NUS-WIDE layouts, a JSONL manifest, the embedded
procedural scenes, and the split presets of the method family.

Every loader returns a :class:`CrossModalData`: all samples of the dataset (images, texts, multi-hot
labels).  Splits are index arrays computed by :func:`make_splits`.  Bad data is never dropped
silently: every handled problem is counted and reported in ``CrossModalData.notes`` (the method
logs them), anything else is a :class:`kdkit.errors.DataError` naming the file and key.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdkit import ConfigError, DataError

# --- the container ---------------------------------------------------------------------------


@dataclass
class CrossModalData:
    """All samples of a cross-modal dataset.

    :param images: ``uint8`` array ``(N, H, W, 3)`` or a list of ``N`` image file paths.
    :param texts: ``N`` captions/tag strings, or ``None`` when the text modality is a bag of words.
    :param labels: ``uint8`` multi-hot ``(N, C)``.
    :param classes: ``C`` category names (used in the label prompts).
    :param bow: optional ``float32`` bag-of-words ``(N, V)`` (DCMH ``YAll``); used as the text
        features when ``texts`` is ``None``.
    :param notes: ``{problem: count}`` of handled data problems (logged by the method).
    """

    name: str
    images: Any
    texts: list[str] | None
    labels: np.ndarray
    classes: list[str]
    bow: np.ndarray | None = None
    notes: dict = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, keep: np.ndarray) -> "CrossModalData":
        keep = np.asarray(keep)
        images = self.images[keep] if isinstance(self.images, np.ndarray) else [self.images[i] for i in keep]
        return CrossModalData(self.name, images, None if self.texts is None else [self.texts[i] for i in keep],
                              self.labels[keep], list(self.classes), None if self.bow is None else self.bow[keep],
                              dict(self.notes), self.source)

    def fingerprint(self) -> str:
        """A content hash (labels, texts, image identities) — the key of the feature cache."""
        h = hashlib.sha1()
        h.update(self.name.encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\x00".join(self.classes).encode())
        if self.texts is not None:
            h.update("\x00".join(self.texts).encode())
        if self.bow is not None:
            h.update(np.ascontiguousarray(self.bow).tobytes())
        if isinstance(self.images, np.ndarray):
            h.update(str(self.images.shape).encode())
            h.update(self.images[:: max(1, len(self.images) // 64)].tobytes())
        else:
            h.update("\x00".join(map(str, self.images)).encode())
        return h.hexdigest()[:16]


class CrossModalDataset:
    """Map-style dataset view of a :class:`CrossModalData` (what the registered factories return;
    usable with ``torch.utils.data.DataLoader``).

    Items are dicts ``{"index", "image" (uint8 H x W x 3 tensor or path), "text", "label"}``.
    ``.data`` is the underlying :class:`CrossModalData`; ``.classes`` the category names.
    """

    def __init__(self, data: CrossModalData, indices: np.ndarray | None = None):
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.classes = list(data.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        import torch

        j = int(self.indices[i])
        img = self.data.images[j]
        return {
            "index": j,
            "image": torch.from_numpy(np.asarray(img)) if isinstance(self.data.images, np.ndarray) else str(img),
            "text": self.data.texts[j] if self.data.texts is not None else "",
            "label": torch.from_numpy(self.data.labels[j].astype(np.float32)),
        }


# --- split presets ---------------------------------------------------------------------------

#: preset -> (query, train, seed) per dataset family; "dcmh" has no seed in the original code.
SPLIT_PRESETS = {
    "mith": {"mirflickr": (2000, 10000, 1), "nuswide": (2100, 10500, 1)},
    "dcmh": {"mirflickr": (2000, 10000, None), "nuswide": (2100, 10500, None)},
    "dchmt": {"mirflickr": (5120, 10240, 1814), "nuswide": (5120, 10240, 1814)},
    "dsph": {"mirflickr": (5000, 10000, 1814), "nuswide": (5000, 10000, 1814)},
}


@dataclass
class Splits:
    """Index arrays into the dataset.  ``retrieval`` = everything but ``query`` (train is inside it);
    ``fit`` + ``val`` = ``train`` (``val`` is held out for model selection)."""

    query: np.ndarray
    train: np.ndarray
    retrieval: np.ndarray
    fit: np.ndarray
    val: np.ndarray
    seed: int
    preset: str

    def sizes(self) -> dict:
        return {k: int(len(getattr(self, k))) for k in ("query", "train", "fit", "val", "retrieval")}


def make_splits(n: int, family: str, preset: str = "auto", query_size: int | None = None,
                train_size: int | None = None, seed: int | None = None, val_fraction: float = 0.1,
                val_seed: int = 0) -> Splits:
    """The method family's rule: ``perm = RandomState(seed).permutation(N); query = perm[:q];
    train = perm[q:q+t]; retrieval = perm[q:]``.

    ``preset`` is one of :data:`SPLIT_PRESETS` or ``"auto"`` (10 % query, 50 % train — for the
    embedded and manifest datasets); ``query_size``/``train_size``/``seed`` override the preset.  A
    preset without a seed (``dcmh``) uses ``seed`` or 0.  ``val`` is ``val_fraction`` of ``train``,
    chosen with ``val_seed``; ``fit`` is the rest.
    """
    if preset == "auto":
        q, t, s = max(1, n // 10), max(1, n // 2), 1
    else:
        if preset not in SPLIT_PRESETS:
            raise ConfigError(f"config key data.split: unknown split preset {preset!r}; valid: auto, "
                              + ", ".join(SPLIT_PRESETS))
        fam = family if family in SPLIT_PRESETS[preset] else "mirflickr"
        q, t, s = SPLIT_PRESETS[preset][fam]
    q = int(query_size) if query_size else q
    t = int(train_size) if train_size else t
    s = int(seed) if seed is not None else (s if s is not None else 0)
    if q + t > n:
        raise DataError(f"split {preset!r} needs {q} query + {t} train samples but the dataset has only {n}; "
                        "set data.query_size / data.train_size")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"config key data.val_fraction: expected 0 <= value < 1, got {val_fraction}")
    perm = np.random.RandomState(s).permutation(n)
    query, train, retrieval = perm[:q], perm[q:q + t], perm[q:]
    n_val = int(round(len(train) * val_fraction))
    vperm = np.random.RandomState(val_seed).permutation(len(train))
    val = np.sort(train[vperm[:n_val]])
    fit = train[np.sort(vperm[n_val:])]
    return Splits(query, train, retrieval, fit, val, s, preset)


# --- .mat / HDF5 readers ---------------------------------------------------------------------

def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return True
    # MATLAB v7.3 files have a 512-byte text header before the HDF5 superblock
    with open(path, "rb") as fh:
        fh.seek(512)
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


class MatFile:
    """A .mat file of either kind: v5 (scipy.io.loadmat) or v7.3/HDF5 (h5py; arrays come transposed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"missing file: {self.path}")
        self.hdf5 = _is_hdf5(self.path)
        if self.hdf5:
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
                self.keys = [k for k in self._h5.keys() if not k.startswith("#")]
            except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError, ...
                raise DataError(f"cannot read {self.path} as a MATLAB v7.3 (HDF5) file: {_one_line(exc)}") from None
        else:
            import scipy.io

            _check_v5_structure(self.path)
            try:
                self._mat = scipy.io.loadmat(self.path)
            except Exception as exc:  # noqa: BLE001 - scipy raises many kinds
                raise DataError(f"cannot read {self.path} as a .mat file: {_one_line(exc)}") from None
            self.keys = [k for k in self._mat if not k.startswith("__")]

    def pick(self, candidates: Sequence[str], what: str) -> str:
        for k in candidates:
            if k in self.keys:
                return k
        # a corrupt file's names can hold any bytes: quote odd ones, keep the message one short line
        found = [k if k.isprintable() and len(k) <= 40 else repr(k[:40]) for k in self.keys[:8]]
        more = f", ... ({len(self.keys)} in all)" if len(self.keys) > 8 else ""
        raise DataError(f"{self.path}: no {what} key; expected one of {', '.join(candidates)}, "
                        f"found {', '.join(found) or '(none)'}{more}")

    def array(self, key: str) -> np.ndarray:
        try:
            return self._array(key)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt HDF5 object fails in many ways
            raise DataError(f"cannot read {key!r} from {self.path}: {_one_line(exc)}") from None

    def _array(self, key: str) -> np.ndarray:
        if self.hdf5:
            import h5py

            ds = self._h5[key]
            if not isinstance(ds, h5py.Dataset):
                raise DataError(f"{self.path}: {key!r} is an HDF5 group, not an array")
            _check_fits_in_memory(ds, key, self.path)
            arr = ds[()]
            if arr.dtype == object:  # MATLAB cell array of strings: references
                cells = [self._h5[ref] for ref in np.ravel(arr, order="F")]
                for cell in cells:
                    _check_fits_in_memory(cell, key, self.path)
                return np.array([_h5_string(cell) for cell in cells], dtype=object)
            if ds.attrs.get("MATLAB_class", b"") in (b"char", "char"):
                return np.array(["".join(map(chr, np.ravel(arr)))], dtype=object)
            return np.transpose(arr)  # h5py reads MATLAB's column-major arrays transposed
        return self._mat[key]

    def close(self) -> None:
        if self.hdf5:
            self._h5.close()


def _check_v5_structure(path: Path) -> None:
    """Refuse a corrupt v5 file that would crash scipy's reader (see :mod:`kdkit_soda.matv5`)."""
    import scipy.io.matlab

    from kdkit_soda.matv5 import v5_problem

    try:
        major = scipy.io.matlab.matfile_version(str(path))[0]
    except Exception:  # noqa: BLE001 - not a v5 file: loadmat reports it
        return
    if major != 1:
        return
    with open(path, "rb") as fh:
        problem = v5_problem(fh, path.stat().st_size)
    if problem:
        raise DataError(f"cannot read {path} as a .mat file: corrupt MATLAB v5 data: {problem}")


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_fits_in_memory(ds, key: str, path: Path) -> None:
    """A corrupt header can claim a huge array (HDF5 fills unwritten chunks): refuse it before reading."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return
    needed = math.prod(ds.shape or ()) * ds.dtype.itemsize
    if needed > limit:
        raise DataError(f"{path}: {key!r} claims {needed / 2**30:.1f} GiB ({' x '.join(map(str, ds.shape))}), "
                        f"more than this machine's memory ({limit / 2**30:.1f} GiB); is the file corrupt?")


def _h5_string(ds) -> str:
    arr = np.asarray(ds[()])
    if arr.dtype.kind in "ui":
        return "".join(chr(c) for c in np.ravel(arr, order="F") if c)
    return str(arr)


def _strings(arr: np.ndarray, n_expected: int | None = None, source: str = "") -> list[str]:
    """MATLAB char matrices, cell arrays and numpy string arrays -> list of Python strings."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "US":
        if arr.ndim == 2 and n_expected is not None and arr.shape[0] != n_expected and arr.shape[1] == n_expected:
            arr = arr.T
        flat = arr.reshape(-1) if arr.ndim <= 1 or 1 in arr.shape else arr.reshape(arr.shape[0], -1)[:, 0]
        return [(s.decode() if isinstance(s, bytes) else str(s)).strip() for s in flat]
    if arr.dtype == object:
        out = []
        for item in arr.reshape(-1):
            while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
                item = item.reshape(-1)[0]
            if isinstance(item, np.ndarray):
                item = "".join(np.ravel(item).astype(str)) if item.size else ""
            out.append(str(item).strip())
        return out
    raise DataError(f"{source or 'array'}: expected strings, got an array of dtype {arr.dtype}")


def _numbers(arr, ndim: int, source: str) -> np.ndarray:
    """A numeric array of ``ndim`` dimensions (labels, bag of words, images), or a DataError naming ``source``."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise DataError(f"{source}: expected a {ndim}-D array, got shape {arr.shape}")
    # NaN != 0 would make a label, and NaN/inf features are garbage: refuse them (one pass, floats only)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{source}: holds NaN or infinite values")
    return arr


def _float32(arr: np.ndarray, source: str) -> np.ndarray:
    """Bag-of-words features as float32; a value past float32's range would become inf."""
    with np.errstate(over="ignore"):
        out = np.asarray(arr, np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{source}: values beyond the float32 range")
    return out


def _read_lines(path: Path, what: str) -> str:
    """A UTF-8 text file (captions, class names, vocabulary); errors name the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{what} {path}, line {line}: not UTF-8; save the file as UTF-8") from None


def _rows_first(arr: np.ndarray, n: int, what: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[0] != n and arr.shape[1] == n:
        arr = arr.T
    return arr


# --- label / text cleaning --------------------------------------------------------------------

def _clean(name: str, images, texts, labels, classes, bow, source: str, on_no_label: str,
           on_empty_caption: str, empty_placeholder: str, log=None) -> CrossModalData:
    notes: dict = {}
    labels = (np.asarray(labels) != 0).astype(np.uint8)
    data = CrossModalData(name, images, texts, labels, list(classes), bow, notes, source)
    keep = np.ones(len(labels), dtype=bool)
    no_label = labels.sum(1) == 0
    if no_label.any():
        count = int(no_label.sum())
        if on_no_label == "error":
            first = int(np.flatnonzero(no_label)[0])
            raise DataError(f"{source}: {count} samples have no label (first: sample {first}); set "
                            "data.on_no_label=drop to remove them or keep to keep them (never relevant)")
        if on_no_label == "drop":
            keep &= ~no_label
            notes["dropped_no_label"] = count
        elif on_no_label == "keep":
            notes["kept_no_label"] = count
        else:
            raise ConfigError(f"config key data.on_no_label: expected error|drop|keep, got {on_no_label!r}")
    if texts is not None:
        empty = np.array([not t.strip() for t in texts], dtype=bool)
        if empty.any():
            count = int(empty.sum())
            if on_empty_caption == "error":
                first = int(np.flatnonzero(empty)[0])
                raise DataError(f"{source}: {count} empty captions (first: sample {first}); set "
                                "data.on_empty_caption=placeholder or drop")
            if on_empty_caption == "placeholder":
                data.texts = [empty_placeholder if e else t for t, e in zip(texts, empty)]
                notes["empty_caption_placeholder"] = count
            elif on_empty_caption == "drop":
                keep &= ~empty
                notes["dropped_empty_caption"] = count
            else:
                raise ConfigError(f"config key data.on_empty_caption: expected error|placeholder|drop, "
                                  f"got {on_empty_caption!r}")
    if not keep.all():
        data = data.subset(np.flatnonzero(keep))
        data.notes = notes
    return data


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


#: The most classes a manifest's integer labels may name: labels are a dense ``(N, C)`` matrix,
#: so a stray huge index must not allocate it.
MAX_CLASSES = 100_000


def load_jsonl(path: Path, name: str = "jsonl", classes: Sequence[str] | None = None, on_no_label="drop",
               on_empty_caption="placeholder", empty_placeholder="", ) -> CrossModalData:
    """A JSONL manifest: one ``{"image": path, "text": str, "labels": [name or index, ...]}`` per line;
    image paths are relative to the manifest's folder.  Integer labels are class indices below
    :data:`MAX_CLASSES`."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows, line_numbers = [], []
    # JSON Lines separates records by "\n" only (str.splitlines would also split at U+2028 etc.)
    for ln, raw_line in enumerate(raw.split(b"\n"), 1):
        try:
            line = raw_line.decode("utf-8-sig" if ln == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{ln}: not UTF-8 (byte {exc.start + 1} of the line); save the manifest "
                            "as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        # ValueError: also over-long integers; RecursionError: deeply nested brackets
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else _one_line(exc)
            raise DataError(f"{path}:{ln}: invalid JSON: {reason}") from None
        rows.append(_manifest_row(row, f"{path}:{ln}", classes))
        line_numbers.append(ln)
    if not rows:
        raise DataError(f"{path}: no samples")
    if classes is None:
        names = sorted({lab for r in rows for lab in r["labels"] if isinstance(lab, str)})
        n_int = max([lab for r in rows for lab in r["labels"] if isinstance(lab, int)], default=-1) + 1
        classes = names if names else [f"category {i}" for i in range(n_int)]
    classes = list(classes)
    pos = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), np.uint8)
    for i, (r, ln) in enumerate(zip(rows, line_numbers)):
        for lab in r["labels"]:
            j = lab if isinstance(lab, int) else pos.get(lab)
            if j is None or not 0 <= j < len(classes):
                raise DataError(f"{path}:{ln}: unknown label {lab!r} (classes: {len(classes)}, indices 0.."
                                f"{len(classes) - 1})")
            labels[i, j] = 1
    images = [str((path.parent / r["image"]) if not Path(r["image"]).is_absolute() else r["image"]) for r in rows]
    texts = [r["text"] or "" for r in rows]
    return _clean(name, images, texts, labels, classes, None, str(path), on_no_label, on_empty_caption,
                  empty_placeholder)


def _manifest_row(row, where: str, classes: Sequence[str] | None) -> dict:
    """One manifest record, checked: image a path, text a string (or null), labels names or indices."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object {{\"image\", \"text\", \"labels\"}}, "
                        f"found {_json_kind(row)}")
    for key in ("image", "text", "labels"):
        if key not in row:
            raise DataError(f"{where}: missing key {key!r}")
    if not isinstance(row["image"], str) or not row["image"].strip() or "\0" in row["image"]:
        raise DataError(f"{where}: 'image' must be a non-empty file path string, found {_json_kind(row['image'])}")
    if row["text"] is not None and not isinstance(row["text"], str):
        raise DataError(f"{where}: 'text' must be a string, found {_json_kind(row['text'])}")
    if not isinstance(row["labels"], list):
        raise DataError(f"{where}: 'labels' must be a list")
    bound = MAX_CLASSES if classes is None else len(classes)
    for lab in row["labels"]:
        # bool is an int in Python but not a class index; floats and nested lists are not names
        if isinstance(lab, bool) or not isinstance(lab, (str, int)):
            raise DataError(f"{where}: label {lab!r} is neither a class name (string) nor a class index (integer)")
        if isinstance(lab, int) and not 0 <= lab < bound:
            raise DataError(f"{where}: class index {lab} out of range 0..{bound - 1}"
                            + (f" (at most {MAX_CLASSES} classes)" if classes is None else ""))
    return row


def _json_kind(value) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


# --- the embedded default: procedural multi-label scenes ---------------------------------------

#: Categories of the embedded scenes (shapes, each drawn procedurally) and the words captions use.
SCENE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "stripe"]
_SYNONYMS = {
    "circle": ["circle", "disc", "round dot", "ball"],
    "square": ["square", "box", "block", "tile"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "star": ["star", "sparkle", "asterisk"],
    "cross": ["cross", "plus sign", "x mark"],
    "ring": ["ring", "hoop", "loop", "donut"],
    "diamond": ["diamond", "rhombus", "gem"],
    "stripe": ["stripe", "bar", "band", "line"],
}
_COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
            "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220)}
_FILLER = ["photo", "picture", "nice", "today", "my", "view", "art", "pattern", "colourful", "simple", "shape",
           "drawing", "background", "texture", "bright", "dark", "design", "abstract"]


def _shape_mask(kind: str, size: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                angle: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if kind == "triangle":
        return (v <= 0.7 * r) & (v >= -r + 1.7 * np.abs(u))
    if kind == "cross":
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if kind == "star":
        ang = np.arctan2(v, u)
        rad = np.sqrt(u * u + v * v)
        return rad <= r * (0.55 + 0.45 * np.cos(5 * ang))
    if kind == "stripe":
        return np.abs(v) <= 0.22 * r
    raise ValueError(kind)


def make_scenes(n: int = 3000, image_size: int = 64, seed: int = 0, max_objects: int = 3,
                caption_drop: float = 0.15, caption_noise: float = 0.1, colour_bias: float = 0.85) -> CrossModalData:
    """Seeded procedural multi-label scenes: 1..``max_objects`` coloured shapes on a noisy background,
    multi-hot labels over :data:`SCENE_CLASSES` and a caption naming the shapes with synonyms,
    colours and filler words.  Captions are noisier than labels on purpose: with probability
    ``caption_drop`` an object is not mentioned, with probability ``caption_noise`` a wrong shape is
    (what makes a label teacher useful).  Each category has a preferred colour (probability
    ``colour_bias``).  Deterministic for a given ``seed``; ~1 s for 3,000 images."""
    rng = np.random.RandomState(seed)
    k = len(SCENE_CLASSES)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.zeros((n, k), np.uint8)
    texts = []
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    colour_names = list(_COLOURS)
    for i in range(n):
        base = rng.randint(0, 90, size=3)
        img = np.clip(base + rng.normal(0, 12, (image_size, image_size, 3)), 0, 255)
        n_obj = rng.randint(1, max_objects + 1)
        kinds = rng.choice(k, size=n_obj, replace=False)
        words = []
        for c in kinds:
            kind = SCENE_CLASSES[c]
            r = rng.uniform(0.12, 0.24) * image_size
            cy, cx = rng.uniform(r, image_size - r, size=2)
            # each category has a preferred colour (p = colour_bias), so even random-init
            # features carry some of the label; the shape carries the rest
            colour = colour_names[c] if rng.rand() < colour_bias else colour_names[rng.randint(len(colour_names))]
            y0, y1 = max(0, int(cy - r) - 1), min(image_size, int(cy + r) + 2)
            x0, x1 = max(0, int(cx - r) - 1), min(image_size, int(cx + r) + 2)
            mask = _shape_mask(kind, image_size, yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], cy, cx, r,
                               rng.uniform(0, math.pi))
            img[y0:y1, x0:x1][mask] = np.asarray(_COLOURS[colour]) * rng.uniform(0.8, 1.0)
            labels[i, c] = 1
            if rng.rand() >= caption_drop or len(words) == 0 and c == kinds[-1]:
                syn = _SYNONYMS[kind][rng.randint(len(_SYNONYMS[kind]))]
                words.append(f"{colour} {syn}" if rng.rand() < 0.6 else syn)
        if rng.rand() < caption_noise:
            wrong = SCENE_CLASSES[rng.randint(k)]
            words.append(_SYNONYMS[wrong][rng.randint(len(_SYNONYMS[wrong]))])
        fill = list(rng.choice(_FILLER, size=rng.randint(0, 3), replace=False))
        rng.shuffle(words)
        texts.append(" ".join(fill[:1] + words + fill[1:]))
        images[i] = img.astype(np.uint8)
    return CrossModalData("soda_scenes", images, texts, labels, list(SCENE_CLASSES),
                          source=f"embedded procedural scenes (n={n}, seed={seed})")


# --- registered factories -------------------------------------------------------------------

_SPLITS = ("all", "train", "test", "query", "retrieval")


def _view(data: CrossModalData, split: str, family: str, split_preset: str, query_size, train_size, split_seed,
          val_fraction) -> CrossModalDataset:
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if split == "all":
        return CrossModalDataset(data)
    sp = make_splits(len(data), family, split_preset, query_size, train_size, split_seed, val_fraction)
    idx = {"train": sp.train, "test": sp.query, "query": sp.query, "retrieval": sp.retrieval}[split]
    ds = CrossModalDataset(data, idx)
    ds.splits = sp
    return ds


def scenes_factory(split: str, root: str | None, size: int = 3000, image_size: int = 64,
                   generator_seed: int = 0, split_preset: str = "auto", query_size: int | None = None,
                   train_size: int | None = None, split_seed: int | None = None,
                   val_fraction: float = 0.1) -> CrossModalDataset:
    """Embedded offline default: procedural multi-label scenes with captions (no files)."""
    data = make_scenes(size, image_size, generator_seed)
    ds = _view(data, split, "scenes", split_preset, query_size, train_size, split_seed, val_fraction)
    ds.family = "scenes"
    return ds


def _file_factory(family: str, display: str):
    def factory(split: str, root: str | None, layout: str = "auto", file: str | None = None,
                split_preset: str = "mith", query_size: int | None = None, train_size: int | None = None,
                split_seed: int | None = None, on_no_label: str = "drop", on_empty_caption: str = "placeholder",
                empty_placeholder: str = "123456", classes_file: str | None = None,
                vocab_file: str | None = None, val_fraction: float = 0.1) -> CrossModalDataset:
        if not root:
            raise ConfigError(f"dataset {display}: set data.root to the folder holding the files")
        r = Path(os.path.expanduser(str(root)))  # an unknown ~user stays as typed: "not found" names it
        if not r.is_dir():
            raise DataError(f"dataset {display}: data.root {r} is not a directory")
        chosen = layout
        if chosen == "auto":
            chosen = "clip" if (r / "label.mat").is_file() or (r / "index.mat").is_file() else "dcmh"
        if chosen == "clip":
            data = load_clip_layout(r, display, family, on_no_label, on_empty_caption, empty_placeholder, classes_file)
        elif chosen == "dcmh":
            data = load_dcmh_layout(r, display, family, file, on_no_label, on_empty_caption, empty_placeholder,
                                    classes_file, vocab_file)
        else:
            raise ConfigError(f"config key data.layout: expected auto|clip|dcmh, got {layout!r}")
        ds = _view(data, split, family, split_preset, query_size, train_size, split_seed, val_fraction)
        ds.family = family
        return ds

    factory.__name__ = f"{family}_factory"
    return factory


mirflickr_factory = _file_factory("mirflickr", "mirflickr25k")
nuswide_factory = _file_factory("nuswide", "nuswide")


def jsonl_factory(split: str, root: str | None, manifest: str = "manifest.jsonl",
                  classes_file: str | None = None, split_preset: str = "auto", query_size: int | None = None,
                  train_size: int | None = None, split_seed: int | None = None, on_no_label: str = "drop",
                  on_empty_caption: str = "placeholder", empty_placeholder: str = "",
                  val_fraction: float = 0.1) -> CrossModalDataset:
    """A JSONL manifest ``{"image", "text", "labels"}`` per line (paths relative to the manifest)."""
    path = Path(manifest)
    if not path.is_absolute():
        path = Path(root or ".") / path
    classes = None
    if classes_file:
        cpath = Path(classes_file) if Path(classes_file).is_absolute() else path.parent / classes_file
        if not cpath.is_file():
            raise DataError(f"classes file not found: {cpath}")
        classes = [ln.strip() for ln in _read_lines(cpath, "classes file").splitlines() if ln.strip()]
    data = load_jsonl(path, "crossmodal_jsonl", classes, on_no_label, on_empty_caption, empty_placeholder)
    ds = _view(data, split, "jsonl", split_preset, query_size, train_size, split_seed, val_fraction)
    ds.family = "jsonl"
    return ds


def load_image_rgb(item, size: int | None = None) -> np.ndarray:
    """A path or an HxWx3 uint8 array/tensor -> HxWx3 uint8 array."""
    if hasattr(item, "numpy") and not isinstance(item, np.ndarray):
        return item.numpy()
    if isinstance(item, np.ndarray):
        return item
    from PIL import Image

    try:
        with Image.open(item) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file not found: {item}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise DataError(f"cannot read image {item}: {exc}") from None
