"""kdkit's training engine — what methods (built-in and plugins) are written against.

A method's ``run(ctx)`` builds data and models through the :class:`RunContext`, describes each
thing it trains as a :class:`Stage` and calls ``ctx.fit(stage)``, which returns a
:class:`StageResult`.  Checkpoints, ``metrics.jsonl``, exact resume, DDP and the lifecycle hooks
are the engine's business.  See ``docs`` / the report for the full contract.
"""
from __future__ import annotations

from kdkit.engine.checkpoint import (atomic_write_bytes, atomic_write_text, derive_seed, load_checkpoint,
                                     save_checkpoint, seed_everything)
from kdkit.engine.context import Method, RunContext, evaluate_run, resolve_device, resolve_method_config, train
from kdkit.engine.data import TeacherCache, WithIndex, dataset_classes, split_train_val, to_device
from kdkit.engine.trainer import (Stage, StageResult, Trainer, TrainingError, classification_eval,
                                  classification_step, freeze)

run_method = train

__all__ = [
    "Method", "RunContext", "Stage", "StageResult", "Trainer", "TrainingError", "TeacherCache", "WithIndex",
    "freeze", "train", "run_method", "evaluate_run", "resolve_method_config", "resolve_device",
    "classification_eval", "classification_step", "split_train_val", "dataset_classes", "to_device",
    "derive_seed", "seed_everything", "save_checkpoint", "load_checkpoint", "atomic_write_bytes",
    "atomic_write_text",
]
