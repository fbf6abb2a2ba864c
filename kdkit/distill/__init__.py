"""kdkit.distill — the pieces distillation methods are built from.

* :class:`FeatureTaps` — outputs of named submodules of any ``nn.Module`` (the student, a teacher),
  captured by forward hooks during its forward pass, with no edit to the model;
* :class:`TeacherCombiner` — several teachers' logits into one distillation loss, by one of
  :data:`COMBINE_RULES` (its weights are buffers: checkpointed with the stage);
* :class:`Distiller` — the objective ``alpha * CE + sum_i weight_i * term_i``; every term is a
  registered loss called with one :class:`DistillInputs` (``distill.terms``, :class:`TermSpec`,
  :func:`distill_section` (the declared ``distill`` keys), :func:`distill_terms`, :func:`build_distiller`, :func:`build_term_loss`);
* :class:`DistillStep` — a student stage's ``step_fn``: student and teacher outputs, taps, the
  objective, the per-epoch teacher weights (:func:`check_taps` resolves paths early);
* :class:`KDMethod` — the ``kd`` method (teachers trained or loaded, optional baseline, a
  distilled student), to subclass for a method that is kd with other ``distill`` defaults;
* :class:`TeacherAgreement` — the guard that teacher outputs belong to their samples
  (``distill.agreement_samples``, :func:`agreement_samples`).

Importing this package is cheap; torch loads when a piece is first used.
"""
from __future__ import annotations

__all__ = ["FeatureTaps", "module_paths", "TeacherCombiner", "COMBINE_RULES", "Distiller", "DistillInputs",
           "build_term_loss", "TermSpec", "distill_section", "distill_terms", "DistillStep", "build_distiller", "check_taps",
           "TeacherAgreement", "agreement_samples", "check_distill", "train_teachers", "check_teachers", "KDMethod"]

#: How :class:`TeacherCombiner` combines teachers (``distill.combine``).
COMBINE_RULES = ("avg_logits", "mean_loss", "inv_val_loss", "ema_inv_loss")

_LAZY = {"FeatureTaps": "kdkit.distill.taps", "module_paths": "kdkit.distill.taps",
         "TeacherCombiner": "kdkit.distill.combine", "Distiller": "kdkit.distill.distiller",
         "DistillInputs": "kdkit.distill.distiller", "build_term_loss": "kdkit.distill.distiller",
         "TermSpec": "kdkit.distill.terms", "distill_terms": "kdkit.distill.terms",
         "distill_section": "kdkit.distill.terms",
         "agreement_samples": "kdkit.distill.terms", "check_distill": "kdkit.distill.terms",
         "DistillStep": "kdkit.distill.step",
         "build_distiller": "kdkit.distill.step", "check_taps": "kdkit.distill.step",
         "TeacherAgreement": "kdkit.distill.agreement", "train_teachers": "kdkit.distill.teachers",
         "check_teachers": "kdkit.distill.teachers",
         "KDMethod": "kdkit.methods.kd"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit.distill' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
