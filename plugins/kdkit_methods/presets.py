"""One method per paper: kd's pipeline (teachers, optional baseline, a distilled student) with the
paper's terms and weights as the ``distill`` defaults.

``kdkit train --method dkd`` is ``kdkit train --method kd`` with ``distill`` set as below; every
key can still be overridden (``--set distill.terms.0.weight=4``), and any of these losses can be
combined with others in one ``distill.terms`` list.  Feature terms tap the stages of kdkit's
CIFAR ResNets (``layer1``, ``layer2``, ``layer3``) and their pooled penultimate embedding
(``pool``); for other models give the module paths (``kdkit.distill.module_paths(model)`` lists
them).  The papers, formulas and defaults are in ``docs/methods.md``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

STAGES = ["layer1", "layer2", "layer3"]


@dataclass(frozen=True)
class Preset:
    """A registered method: ``kd`` with these ``distill`` defaults."""

    name: str
    description: str
    terms: list = field(default_factory=list)
    #: the cross-entropy weight (``distill.alpha``)
    alpha: float = 1.0
    temperature: float = 4.0

    def method(self):
        """The method class registered under :attr:`name` (kdkit imported lazily: built when the
        registry is, torch loads only when the method runs)."""
        preset = self

        from kdkit.distill import KDMethod  # cheap: kdkit.methods.kd imports no torch at module level

        class PresetMethod(KDMethod):
            __doc__ = f"{preset.description} (``kd`` with the paper's distill.terms; see docs/methods.md)"

            @classmethod
            def default_config(cls) -> dict:
                from kdkit.distill import distill_section

                config = super().default_config()
                terms = copy.deepcopy(preset.terms)  # each config owns its terms (options included)
                config["distill"] = distill_section(alpha=preset.alpha, temperature=preset.temperature, terms=terms)
                return config

        PresetMethod.__name__ = PresetMethod.__qualname__ = f"{preset.name.upper()}Method"
        return PresetMethod


def _tapped(loss: str, weight: float, paths: str | list, **options) -> dict:
    """A feature term tapping the same module path(s) — one, or a list — on student and teacher."""
    def copy():
        return list(paths) if isinstance(paths, list) else paths

    return {"loss": loss, "weight": weight, "student": copy(), "teacher": copy(), "options": options}


PRESETS = (
    Preset("dkd", "DKD, decoupled KD (Zhao et al. 2022): CE + alpha*TCKD + beta*NCKD with warm-up",
           [{"loss": "dkd", "weight": 1.0, "options": {"alpha": 1.0, "beta": 8.0, "warmup": 20}}]),
    Preset("dist", "DIST (Huang et al. 2022): CE + 2*(inter- + intra-class correlation of probabilities), tau 4",
           [{"loss": "dist", "weight": 2.0, "options": {"beta": 1.0, "gamma": 1.0, "tau": 4.0}}]),
    Preset("lskd", "logit-standardised KD (Sun et al. 2024): 0.1*CE + 9*KL of z-scored logits, T = 2",
           [{"loss": "lskd", "weight": 9.0, "options": {}}], alpha=0.1, temperature=2.0),
    Preset("fitnet", "FitNet (Romero et al. 2015): CE + 100*hint MSE through a regressor (layer2)",
           [_tapped("fitnet", 100.0, "layer2")]),
    Preset("at", "attention transfer (Zagoruyko & Komodakis 2017): CE + 1000*AT over the three stages",
           [_tapped("at", 1000.0, STAGES)]),
    Preset("pkt", "PKT (Passalis & Tefas 2018): CE + 30000*KL of cosine-similarity distributions (pool)",
           [_tapped("pkt", 30000.0, "pool")]),
    Preset("rkd", "RKD (Park et al. 2019): CE + 25*distance + 50*angle relations of the embedding (pool)",
           [_tapped("rkd", 1.0, "pool")]),
    Preset("sp", "similarity-preserving KD (Tung & Mori 2019): CE + 3000*SP of the last stage (layer3)",
           [_tapped("sp", 3000.0, "layer3")]),
    Preset("nst", "neuron selectivity transfer (Huang & Wang 2017): CE + 50*MMD over the three stages",
           [_tapped("nst", 50.0, STAGES)]),
    Preset("vid", "VID (Ahn et al. 2019): CE + variational information over the three stages",
           [_tapped("vid", 1.0, STAGES)]),
    Preset("crd", "CRD (Tian et al. 2020): CE + 0.8*NCE over a memory bank of embeddings (pool)",
           [_tapped("crd", 0.8, "pool")]),
    Preset("reviewkd", "ReviewKD (Chen et al. 2021): CE + attention-based fusion and hierarchical context loss",
           [_tapped("reviewkd", 1.0, [*STAGES, "pool"])]),
    # logit methods after the first twelve (kdkit_methods.logit_recent)
    Preset("ctkd", "CTKD, curriculum temperature KD (Li et al. 2023): 0.1*CE + 0.9*KD at an adversarial, learned "
           "temperature", [{"loss": "ctkd", "weight": 0.9, "options": {"curriculum_epochs": 10}}], alpha=0.1),
    Preset("mlkd", "MLKD, multi-level logit distillation (Jin et al. 2023): 0.1*CE + 0.9*instance, batch and class "
           "alignment at T = 2..6", [{"loss": "mlkd", "weight": 0.9, "options": {"temperatures": [2.0, 3.0, 4.0, 5.0,
                                                                                                   6.0]}}],
           alpha=0.1),
    Preset("nkd", "NKD, normalised KD (Yang et al. 2023): CE + target term + 3.5*T^2*normalised non-target term, T = 3",
           [{"loss": "nkd", "weight": 1.0, "options": {"temperature": 3.0, "gamma": 3.5}}], temperature=3.0),
    Preset("wsld", "WSLD, weighted soft labels (Zhou et al. 2021): CE + 2.25*per-sample weighted KD, T = 4",
           [{"loss": "wsld", "weight": 2.25, "options": {"temperature": 4.0}}]),
    # feature methods after the first twelve (kdkit_methods.feature_more)
    Preset("cc", "CC, correlation congruence (Peng et al. 2019): CE + 100*MSE of RBF correlations of embedded "
                 "pool features", [_tapped("cc", 100.0, "pool")]),
    Preset("mgd", "MGD, masked generative distillation (Yang et al. 2022): CE + the teacher's layer3 generated from "
                  "the masked student's", [_tapped("mgd", 1.0, "layer3")]),
    # methods that use a classifier (kdkit_methods.classifier_reuse)
    # the teacher's map enters SRRL only through its spatial mean: tapping its pooled feature gives the same
    # value and caches H*W times less
    Preset("srrl", "SRRL (Yang et al. 2021): CE + feature matching + the teacher's classifier on connected student "
                   "features (layer3)",
           [{"loss": "srrl", "weight": 1.0, "student": "layer3", "teacher": "pool",
             "options": {"alpha": 1.0, "beta": 1.0}}]),
    Preset("catkd", "CAT-KD (Guo et al. 2023): CE + 15*MSE of 2x2-pooled class activation maps (layer3)",
           [_tapped("catkd", 15.0, "layer3", cam_resolution=2, normalize=False, binarize=False)]),
)
