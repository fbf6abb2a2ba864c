"""Text classification through the same path as images (issue 20, item 9): a JSONL dataset tokenised by
a local tokenizer, Hugging Face sequence classifiers as teacher and student (hf:DIR), KD, the teacher
cache and the agreement guard end to end — from the CLI, with zero lines of Python."""
from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("transformers")

import kdkit_prestarted  # noqa: E402
from kdkit_text_testutil import make_text_task  # noqa: E402


def _bert_dir(directory, hidden: int, layers: int):
    """A tiny random BERT sequence classifier saved as config.json only (hf:DIR builds it from the config)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=16, pad_token_id=0,
                        architectures=["BertForSequenceClassification"])
    config.save_pretrained(str(directory))
    return directory


def test_kd_between_hugging_face_text_classifiers_from_the_cli(tmp_path):
    root = make_text_task(tmp_path / "task", n_train=90, n_test=45)
    teacher, student = _bert_dir(tmp_path / "teacher", 32, 2), _bert_dir(tmp_path / "student", 16, 1)
    run = tmp_path / "run"
    sets = [f"data.name=text", f"data.root={root}", f"data.tokenizer={root / 'tokenizer'}", "data.max_length=8",
            f"teachers=[{{name: 'hf:{teacher}'}}]", f"student.name=hf:{student}", "baseline.enabled=true",
            "teacher_train.epochs=8", "train.epochs=12", "train.batch_size=15", "teacher_train.batch_size=15",
            "train.optimizer=adamw", "teacher_train.optimizer=adamw", "train.lr=0.005", "teacher_train.lr=0.005",
            "train.scheduler=none", "teacher_train.scheduler=none", "logging.progress=false", "device=cpu"]
    cmd = [sys.executable, "-m", "kdkit", "train", "--method", "kd", "--out", str(run)]
    for item in sets:
        cmd += ["--set", item]
    proc = kdkit_prestarted.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
                                timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    (name, teacher_summary), = summary["teachers"].items()
    # the task is learnable from one word: the teacher that taught must be far above chance (33 %)
    assert teacher_summary["top1"] >= 80, summary
    assert summary["student"]["top1"] >= 70 and summary["baseline"]["top1"] is not None
    # token ids are deterministic: the teacher's outputs were computed once and looked up by sample
    assert summary["distill"]["teacher_cache"] is True
    # the agreement guard saw the cached outputs paired with their own samples: no warning
    agreement = summary["distill"]["teacher_agreement"]
    assert agreement["teachers"]["teacher.hf-teacher"]["agreement"] >= 80 and agreement["warnings"] == []
    assert "data: text instead of fashion_mnist" in proc.stderr  # the switch is logged
    # a model given by its directory names its stage by the directory: one checkpoint folder
    assert name == "teacher.hf-teacher" and (run / "checkpoints" / "teacher.hf-teacher" / "best.pt").is_file()
