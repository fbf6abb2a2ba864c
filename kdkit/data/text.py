"""Text classification from JSONL or CSV files, tokenised by a local Hugging Face tokenizer.

``data.root`` holds one file per split: ``train.jsonl`` (or ``train.csv``) and ``test.jsonl`` (or
``test.csv``; else ``val.*``), or the names given by ``train_file`` / ``test_file``.  A JSONL line is
an object with a text field and a label field (``text`` and ``label`` unless ``text_field`` /
``label_field`` say otherwise); a CSV file has a header row naming them.  Labels are strings or
integers; the classes are the train split's distinct labels, sorted (numbers numerically), so both
splits agree; a test label the train split lacks is an error.

Each sample is ``(input_ids, label)``: ``input_ids`` a ``LongTensor`` of ``max_length`` token ids,
padded with the tokenizer's pad token and truncated.  A Hugging Face sequence classifier
(``student.name=hf:DIR``) masks the padding itself (attention mask = ids != pad id), so the batch
stays one tensor like an image batch and kdkit's loop, teacher cache and agreement guard need no
text case.  The tokenizer is ``tokenizer`` (a local directory saved with ``save_pretrained``;
nothing is downloaded), loaded with ``transformers.AutoTokenizer`` (the ``hf`` extra).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from kdkit.data.base import check_split
from kdkit.errors import ConfigError, DataError
from kdkit.files import regular_file
from kdkit.lazy import import_extra
from kdkit.paths import user_path

SUFFIXES = (".jsonl", ".csv")


def _split_file(root: Path, given: str | None, names: tuple[str, ...]) -> Path:
    if given:
        return regular_file(root / given, "text dataset file", DataError)
    for name in names:
        for suffix in SUFFIXES:
            if (root / f"{name}{suffix}").exists():  # a FIFO or directory there is refused by name, not skipped
                return regular_file(root / f"{name}{suffix}", "text dataset file", DataError)
    wanted = " or ".join(f"{n}{s}" for n in names for s in SUFFIXES)
    raise DataError(f"text dataset: no {wanted} in {root} (set data.root, or data.train_file / data.test_file)")


def read_records(path: Path, text_field: str, label_field: str) -> tuple[list[str], list]:
    """``(texts, labels)`` of a JSONL or CSV file; a malformed row is a :class:`DataError` naming its line."""
    texts, labels = [], []
    regular_file(path, "text dataset file", DataError)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.suffix == ".csv":
                reader = csv.DictReader(fh)
                missing = [f for f in (text_field, label_field) if f not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: the header has no column {missing[0]!r} "
                                    f"(columns: {', '.join(reader.fieldnames or []) or 'none'})")
                rows = ((reader.line_num, row) for row in reader)
            else:
                rows = ((lineno, _json_row(path, lineno, line)) for lineno, line in enumerate(fh, 1) if line.strip())
            for lineno, row in rows:
                if text_field not in row or label_field not in row:
                    field = text_field if text_field not in row else label_field
                    raise DataError(f"{path}, line {lineno}: no field {field!r}")
                text, label = row[text_field], row[label_field]
                if not isinstance(text, str):
                    raise DataError(f"{path}, line {lineno}: {text_field!r} must be a string, got {text!r}")
                if isinstance(label, bool) or not isinstance(label, (str, int)):
                    raise DataError(f"{path}, line {lineno}: {label_field!r} must be a string or an integer, "
                                    f"got {label!r}")
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not texts:
        raise DataError(f"{path} holds no samples")
    return texts, labels


def _unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict; a key given twice is refused (json keeps the last silently:
    ``{"label": "good", "label": "bad"}`` trained as bad)."""
    row = {}
    for key, value in pairs:
        if key in row:
            raise ValueError(f"key {key!r} given twice")
        row[key] = value
    return row


def _json_row(path: Path, lineno: int, line: str) -> dict:
    try:
        row = json.loads(line, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}, line {lineno}: not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def _label_order(label) -> tuple:
    """Numbers before strings, numbers numerically: ``2 < 10`` and ``"2" < "10"`` as a user expects."""
    text = str(label)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def load_tokenizer(path: str | None):
    if not path:
        raise ConfigError("dataset 'text' needs a tokenizer: --set data.tokenizer=DIR (a local Hugging Face "
                          "tokenizer directory, saved with save_pretrained)")
    directory = user_path(path)
    if not directory.is_dir():
        raise ConfigError(f"config key data.tokenizer: directory not found: {path} (kdkit never downloads a "
                          "tokenizer; give a local directory saved with save_pretrained)")
    transformers = import_extra("transformers", "hf", "dataset 'text'")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad directory
        first = " ".join(str(exc).split())[:300]
        raise ConfigError(f"config key data.tokenizer: cannot load a tokenizer from {path}: {first}") from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"config key data.tokenizer: the tokenizer in {path} has no pad token; set one "
                          "(tokenizer.pad_token = ...) and save it again")
    return tokenizer


class TextClassificationDataset(Dataset):
    """``(input_ids LongTensor[max_length], int label)`` samples of a JSONL/CSV split (module docs)."""

    name = "text"

    def __init__(self, split: str = "train", root: str | None = None, *, tokenizer: str | None = None,
                 max_length: int = 128, text_field: str = "text", label_field: str = "label",
                 train_file: str | None = None, test_file: str | None = None):
        check_split(split, "text")
        if not root:
            raise DataError("dataset 'text' needs a root folder: --set data.root=DIR (holding train.jsonl and "
                            "test.jsonl, or .csv)")
        base = user_path(root)
        if not base.is_dir():
            raise DataError(f"text dataset root not found: {base}")
        train_path = _split_file(base, train_file, ("train",))
        path = train_path if split == "train" else _split_file(base, test_file, ("test", "val"))
        texts, labels = read_records(path, text_field, label_field)
        train_labels = labels if split == "train" else read_records(train_path, text_field, label_field)[1]
        self.raw_classes = sorted({str(v) for v in train_labels}, key=_label_order)
        to_index = {c: i for i, c in enumerate(self.raw_classes)}
        unknown = sorted({str(v) for v in labels} - set(to_index), key=_label_order)
        if unknown:
            raise DataError(f"{path}: label {unknown[0]!r} does not occur in {train_path.name} "
                            f"(train labels: {', '.join(self.raw_classes[:10])})")
        self.classes = [c.replace("_", " ") for c in self.raw_classes]
        self.targets = [to_index[str(v)] for v in labels]
        self.split, self.root, self.max_length = split, str(path), int(max_length)
        self.tokenizer = load_tokenizer(tokenizer)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        self.input_ids = encoded["input_ids"].to(torch.long)
        self.pad_token_id = int(self.tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.input_ids[index], self.targets[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
