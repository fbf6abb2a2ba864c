"""kdkit's training engine — what methods (built-in and plugins) are written against.

A method is a class registered with ``kdkit_register_methods(register)``; the members kdkit calls on
it (``default_config``, ``check_config``, ``component_sections``, ``run``, ``evaluate``, ``encode``)
are declared once, typed, by :class:`kdkit.methodspec.Method` (``kdkit.Method``)::

    class MyMethod(kdkit.Method):          # or kdkit.distill.KDMethod, kd with other defaults
        @classmethod
        def default_config(cls) -> dict:   # FULL tree; start from kdkit.base_config()
            ...
        def run(self, ctx: RunContext) -> dict:   # the summary -> summary.json
            ...

Inside ``run``: build data/models through ``ctx``, describe each trained thing as a
:class:`Stage`, call ``ctx.fit(stage)`` -> :class:`StageResult`.  Checkpoints (atomic
``checkpoints/<stage>/{last,best}.pt``, the previous ``last.pt`` kept as ``last.prev.pt``),
``metrics.jsonl``, best-on-validation selection, exact resume (finished stages are skipped with
their best weights loaded, an unfinished one continues from ``last.pt``), DDP, AMP, NaN handling
and the lifecycle hooks are the engine's business.  A distillation method's student stage
(teachers, teacher cache, agreement check, distillation) is :class:`kdkit.distill.StudentStage`,
one layer above the engine: the engine never imports :mod:`kdkit.distill`.

Rules for exact resume: build models with ``ctx.build_model`` (seeded per name), keep any state
that changes during training in ``stage.model`` or ``stage.extra_modules`` (buffers are fine),
derive everything else deterministically from the config (:func:`kdkit.seeding.derive_seed`), and
use ``ctx.fit`` for every stage.
"""
from __future__ import annotations

from kdkit.engine.checkpoint import load_checkpoint, save_checkpoint
from kdkit.engine.context import RunContext, evaluate_run, open_run, resolve_device, resolve_method_config, train
from kdkit.engine.data import WithIndex, dataset_classes, split_train_val, to_device
from kdkit.engine.trainer import (Stage, StageResult, Trainer, TrainingError, classification_eval,
                                  classification_step, freeze)
from kdkit.files import atomic_torch_save, atomic_write_bytes, atomic_write_text
from kdkit.methodspec import Method
from kdkit.seeding import derive_seed, seed_everything

run_method = train

__all__ = [
    "Method", "RunContext", "Stage", "StageResult", "Trainer", "TrainingError", "WithIndex",
    "freeze", "train", "run_method", "evaluate_run", "open_run", "resolve_method_config", "resolve_device",
    "classification_eval", "classification_step", "split_train_val", "dataset_classes", "to_device",
    "derive_seed", "seed_everything", "save_checkpoint", "load_checkpoint", "atomic_write_bytes",
    "atomic_write_text", "atomic_torch_save",
]

