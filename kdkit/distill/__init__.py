"""kdkit.distill — the pieces distillation methods are built from, and their student stage.

* :class:`StudentStage` — the student stage of every distillation method (``kd``, its presets,
  ``wordnet_relax``): the teachers trained or loaded, their outputs cached per sample, the check
  that they belong to their samples, the student distilled and evaluated; :class:`LogitsTeacher` is a
  teacher that is not an image network (a logit table, a model on other inputs);
* :class:`KDMethod` — the ``kd`` method (teachers trained or loaded, optional baseline, a
  distilled student), to subclass for a method that is kd with other ``distill`` defaults;
* :class:`FeatureTaps` — outputs of named submodules of any ``nn.Module`` (the student, a teacher),
  captured by forward hooks during its forward pass, with no edit to the model;
* :class:`TeacherCombiner` — several teachers' logits into one distillation loss, by one of
  :data:`COMBINE_RULES` (its weights are buffers: checkpointed with the stage);
* :func:`conv_regressor` — the references' ``ConvReg`` convolution between maps of other widths and sizes
  (FitNet's regressor, AB's connectors);
* :class:`Distiller` — the objective ``alpha * CE + sum_i weight_i * term_i``; every term is a
  registered loss called with one :class:`DistillInputs` (``distill.terms``, :class:`TermSpec`,
  :func:`distill_section` (the declared ``distill`` keys), :func:`distill_terms`, :func:`build_term_loss`).

Importing this package is cheap; torch loads when a piece is first used.
"""
from __future__ import annotations

__all__ = ["StudentStage", "LogitsTeacher", "KDMethod", "FeatureTaps", "module_paths", "TeacherCombiner",
           "COMBINE_RULES", "Distiller", "DistillInputs", "build_term_loss", "TermSpec", "distill_section",
           "distill_terms", "conv_regressor"]

#: How :class:`TeacherCombiner` combines teachers (``distill.combine``).
COMBINE_RULES = ("avg_logits", "mean_loss", "inv_val_loss", "ema_inv_loss")

_LAZY = {"StudentStage": "kdkit.distill.stage", "LogitsTeacher": "kdkit.distill.stage",
         "KDMethod": "kdkit.methods.kd",
         "FeatureTaps": "kdkit.distill.taps", "module_paths": "kdkit.distill.taps",
         "TeacherCombiner": "kdkit.distill.combine", "Distiller": "kdkit.distill.distiller",
         "DistillInputs": "kdkit.distill.distiller", "build_term_loss": "kdkit.distill.distiller",
         "TermSpec": "kdkit.distill.terms", "distill_terms": "kdkit.distill.terms",
         "distill_section": "kdkit.distill.terms", "conv_regressor": "kdkit.distill.feature_losses"}

#: names that were public only for a second copy of the student stage (kdkit.distill.StudentStage
#: replaces it); they still resolve, with a DeprecationWarning, for one release
_STAGE = "kdkit.distill.StudentStage"
_DEPRECATED = {
    "DistillStep": ("kdkit.distill.step", f"{_STAGE}.distil runs the distillation step"),
    "build_distiller": ("kdkit.distill.step", f"{_STAGE} builds the objective (StudentStage.build_distiller)"),
    "check_taps": ("kdkit.distill.step", f"{_STAGE}.check_taps"),
    "TeacherAgreement": ("kdkit.distill.agreement", f"{_STAGE}.distil checks the teachers' agreement"),
    "agreement_samples": ("kdkit.distill.terms", "read distill.agreement_samples"),
    "check_distill": ("kdkit.distill.terms", f"{_STAGE}.check_config"),
    "check_teachers": ("kdkit.distill.teachers", f"{_STAGE}.check_config"),
    "train_teachers": ("kdkit.distill.teachers", f"{_STAGE}.train_teachers"),
}


def __getattr__(name):
    if name in _DEPRECATED:
        from kdkit.lazy import deprecated_name

        return deprecated_name("kdkit.distill", name, *_DEPRECATED[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit.distill' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
