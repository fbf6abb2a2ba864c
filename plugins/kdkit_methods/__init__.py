"""Built-in kdkit plugin ``methods``: the catalogue of published distillation methods.

Every method is a loss registered in the ``losses`` registry (usable in any ``distill.terms``)
and a method preset registered in the ``methods`` registry (``kdkit train --plugin dkd``): kd's
teacher/student pipeline with the paper's terms and weights as its ``distill`` defaults.  See
``docs/methods.md`` for the papers, formulas and defaults.

Uses only kdkit's public API; torch is imported only when a loss is built.
"""
from __future__ import annotations

import kdkit

__version__ = "0.1.0"


class _LazyLoss:
    """The registry factory of one loss class, imported when the loss is built.  Its signature is
    the class's own (read on demand), so that kdkit checks a term's ``options`` before a run starts."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = f"kdkit_methods.{module}", attr
        self.__name__ = self.__qualname__ = attr

    def loss_class(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.attr)

    def __call__(self, **options):
        return self.loss_class()(**options)

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(self.loss_class())

    @property
    def __doc__(self):
        return self.loss_class().__doc__


#: name -> (module, class, one-line description) of every loss this plugin registers.
LOSSES = {
    "dkd": ("logit", "DKDLoss", "decoupled KD (Zhao et al. 2022): alpha*TCKD + beta*NCKD, linear warm-up"),
    "dist": ("logit", "DISTLoss", "DIST (Huang et al. 2022): inter- and intra-class Pearson correlation of "
                                  "probabilities"),
    "lskd": ("logit", "LogitStandardKDLoss", "logit-standardised KD (Sun et al. 2024): KL of z-scored logits"),
    "at": ("feature", "ATLoss", "attention transfer (Zagoruyko & Komodakis 2017): normalised spatial attention maps"),
    "pkt": ("feature", "PKTLoss", "probabilistic knowledge transfer (Passalis & Tefas 2018): KL of cosine-"
                                  "similarity distributions"),
    "rkd": ("feature", "RKDLoss", "relational KD (Park et al. 2019): distance-wise + angle-wise relations"),
    "sp": ("feature", "SPLoss", "similarity-preserving KD (Tung & Mori 2019): batch Gram matrices"),
    "nst": ("feature", "NSTLoss", "neuron selectivity transfer (Huang & Wang 2017): polynomial-kernel MMD"),
    "vid": ("vid", "VIDLoss", "variational information distillation (Ahn et al. 2019): Gaussian likelihood, "
                              "learned variance"),
    "crd": ("crd", "CRDLoss", "contrastive representation distillation (Tian et al. 2020): NCE over a memory "
                              "bank"),
    "reviewkd": ("reviewkd", "ReviewKDLoss", "knowledge review (Chen et al. 2021): attention-based fusion + "
                                             "hierarchical context loss"),
}


@kdkit.hookimpl
def kdkit_register_losses(register):
    for name, (module, attr, description) in LOSSES.items():
        register(name, _LazyLoss(module, attr), description=description)


@kdkit.hookimpl
def kdkit_register_methods(register):
    from kdkit_methods.presets import PRESETS

    for preset in PRESETS:
        register(preset.name, preset.method(), description=preset.description)
