"""Readers of the files the cross-modal datasets are made of: :class:`MatFile` (MATLAB v5 through
scipy, pre-checked against the corrupt files that crash it; v7.3/HDF5 through h5py, with a memory
check of every array), UTF-8 text files, images (:func:`load_image_rgb`), and the checks that turn
what they read into numbers or strings (one-line :class:`kdkit.errors.DataError` naming the file
and key otherwise)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdkit import DataError


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
