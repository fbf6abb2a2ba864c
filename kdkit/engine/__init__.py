"""kdkit's training engine — what methods (built-in and plugins) are written against.

A method is a class registered with ``kdkit_register_methods(register)``::

    class MyMethod:                       # or subclass kdkit.engine.Method / kdkit.methods.kd.KDMethod
        component_sections = {}           # optional: extra {"config.path": "registry kind"} sections
        @classmethod
        def default_config(cls) -> dict:  # FULL tree; start from kdkit.config.base_config()
            ...
        def run(self, ctx: RunContext) -> dict:   # the summary -> summary.json
            ...
        def evaluate(self, ctx: RunContext) -> dict:   # optional: `kdkit eval --run DIR`
            ...
        @classmethod
        def check_config(cls, config, registry):      # optional: rules beyond types, checked when the
            ...                                       # config is resolved (before a run dir exists)

Inside ``run``: build data/models through ``ctx``, describe each trained thing as a
:class:`Stage`, call ``ctx.fit(stage)`` -> :class:`StageResult`.  Checkpoints (atomic
``checkpoints/<stage>/{last,best}.pt``, the previous ``last.pt`` kept as ``last.prev.pt``),
``metrics.jsonl``, best-on-validation selection, exact resume (finished stages are skipped with
their best weights loaded, an unfinished one continues from ``last.pt``), DDP, AMP, NaN handling
and the lifecycle hooks are the engine's business.

Rules for exact resume: build models with ``ctx.build_model`` (seeded per name), keep any state
that changes during training in ``stage.model`` or ``stage.extra_modules`` (buffers are fine),
derive everything else deterministically from the config, and use ``ctx.fit`` for every stage.
"""
from __future__ import annotations

from kdkit.engine.agreement import TeacherAgreement
from kdkit.engine.checkpoint import (atomic_torch_save, atomic_write_bytes, atomic_write_text, derive_seed,
                                     load_checkpoint, save_checkpoint, seed_everything)
from kdkit.engine.context import (Method, RunContext, evaluate_run, open_run, resolve_device, resolve_method_config,
                                  train)
from kdkit.engine.data import TeacherCache, WithIndex, dataset_classes, split_train_val, to_device
from kdkit.engine.trainer import (Stage, StageResult, Trainer, TrainingError, classification_eval,
                                  classification_step, freeze)

run_method = train

__all__ = [
    "Method", "RunContext", "Stage", "StageResult", "Trainer", "TrainingError", "TeacherCache", "WithIndex",
    "TeacherAgreement",
    "freeze", "train", "run_method", "evaluate_run", "open_run", "resolve_method_config", "resolve_device",
    "classification_eval", "classification_step", "split_train_val", "dataset_classes", "to_device",
    "derive_seed", "seed_everything", "save_checkpoint", "load_checkpoint", "atomic_write_bytes",
    "atomic_write_text", "atomic_torch_save",
]

