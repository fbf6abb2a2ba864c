"""The JSONL manifest dataset (:func:`load_jsonl`): one ``{"image", "text", "labels"}`` record per
line, each checked, errors naming the file and line."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdkit import DataError

from .container import CrossModalData, _clean
from .files import _one_line

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
