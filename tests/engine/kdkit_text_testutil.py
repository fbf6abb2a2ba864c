"""A tiny text-classification task in the real file formats: JSONL/CSV splits and a Hugging Face
tokenizer directory written with ``save_pretrained`` (nothing downloads)."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

#: words that decide the class, and words that carry nothing
CLASS_WORDS = {"good": ["great", "fine", "lovely", "nice"], "bad": ["awful", "poor", "nasty", "grim"],
               "neutral": ["table", "paper", "chair", "lamp"]}
FILLER = ["the", "a", "it", "was", "really", "very", "quite", "this", "one", "day"]


def make_tokenizer(directory: Path) -> Path:
    """A word-level fast tokenizer over the task's words, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(str(directory))
    return directory


def sentences(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = sorted(CLASS_WORDS)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, 4) + [rng.choice(CLASS_WORDS[label])]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def make_text_task(root: Path, n_train: int = 60, n_test: int = 30, fmt: str = "jsonl") -> Path:
    """``root/{train,test}.{jsonl|csv}`` with ``text`` and ``label``, and ``root/tokenizer``."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        rows = sentences(n, seed)
        if fmt == "jsonl":
            with open(root / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for text, label in rows:
                    fh.write(json.dumps({"text": text, "label": label}) + "\n")
        else:
            with open(root / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["label", "text"])
                writer.writerows((label, text) for text, label in rows)
    make_tokenizer(root / "tokenizer")
    return root
