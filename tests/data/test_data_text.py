"""Text classification files (kdkit.data.text): JSONL and CSV splits tokenised by a local HF tokenizer."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from kdkit_text_testutil import make_text_task  # noqa: E402

from kdkit.data.text import TextClassificationDataset  # noqa: E402
from kdkit.errors import ConfigError, DataError  # noqa: E402


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_samples_are_the_files_rows_tokenised(tmp_path, fmt):
    root = make_text_task(tmp_path / "task", n_train=9, n_test=6, fmt=fmt)
    tok = str(root / "tokenizer")
    train = TextClassificationDataset("train", str(root), tokenizer=tok, max_length=8)
    test = TextClassificationDataset("test", str(root), tokenizer=tok, max_length=8)
    assert train.classes == test.classes == ["bad", "good", "neutral"]
    assert len(train) == 9 and len(test) == 6
    ids, label = train[0]
    assert ids.dtype == torch.long and ids.shape == (8,) and isinstance(label, int)
    first = json.loads((root / "train.jsonl").read_text().splitlines()[0]) if fmt == "jsonl" else None
    if first is not None:
        assert train.classes[label] == first["label"]
        words = train.tokenizer.convert_ids_to_tokens(ids[ids != train.pad_token_id].tolist())
        assert words == first["text"].split()  # five words, then padding
        assert (ids == train.pad_token_id).sum() == 3


def test_numeric_labels_sort_numerically_and_unknown_test_labels_are_errors(tmp_path):
    root = make_text_task(tmp_path / "t", n_train=3, n_test=3)
    tok = str(root / "tokenizer")
    (root / "train.jsonl").write_text("".join(json.dumps({"text": "nice day", "label": v}) + "\n"
                                              for v in (10, 2, 2)))
    (root / "test.jsonl").write_text(json.dumps({"text": "nice", "label": 3}) + "\n")
    train = TextClassificationDataset("train", str(root), tokenizer=tok)
    assert train.raw_classes == ["2", "10"] and train.targets == [1, 0, 0]
    with pytest.raises(DataError, match=r"label '3' does not occur in train\.jsonl"):
        TextClassificationDataset("test", str(root), tokenizer=tok)


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n', r"line 1: no field 'label'"),
    ('{"text": "a", "label": 1}\nnot json\n', r"line 2: not valid JSON"),
    ('[1, 2]\n', r"line 1: expected a JSON object"),
    ('{"text": 3, "label": 1}\n', r"line 1: 'text' must be a string"),
    ('{"text": "a", "label": true}\n', r"'label' must be a string or an integer"),
    ('\n', r"holds no samples"),
    # json keeps the last of two keys silently: this row trained as 'bad'
    ('{"text": "a", "label": "good", "label": "bad"}\n', r"line 1: not valid JSON \(key 'label' given twice\)"),
])
def test_bad_rows_are_one_line_errors_naming_the_line(tmp_path, content, message):
    root = make_text_task(tmp_path / "t", n_train=3, n_test=3)
    (root / "train.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        TextClassificationDataset("train", str(root), tokenizer=str(root / "tokenizer"))


def test_missing_tokenizer_files_and_columns(tmp_path):
    root = make_text_task(tmp_path / "t", n_train=3, n_test=3, fmt="csv")
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        TextClassificationDataset("train", str(root))
    with pytest.raises(ConfigError, match="directory not found: .*never downloads"):
        TextClassificationDataset("train", str(root), tokenizer=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="the header has no column 'sentence'"):
        TextClassificationDataset("train", str(root), tokenizer=str(root / "tokenizer"), text_field="sentence")
    (root / "test.csv").unlink()
    with pytest.raises(DataError, match=r"no test\.jsonl or test\.csv or val\.jsonl or val\.csv"):
        TextClassificationDataset("test", str(root), tokenizer=str(root / "tokenizer"))
