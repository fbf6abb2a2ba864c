"""Built-in kdkit plugin ``methods``: the catalogue of published distillation methods.

Every method is a loss registered in the ``losses`` registry (usable in any ``distill.terms``)
and a method registered in the ``methods`` registry (``kdkit train --method dkd``): a preset — kd's
teacher/student pipeline with the paper's terms and weights as its ``distill`` defaults — or, where
the paper's pipeline has other stages, a class of its own (SimKD, DML, TAKD, born-again, BYOT, and AB,
FSP, FT with their initialisation stage).  See ``docs/methods.md`` for the papers, formulas and
defaults.

Uses only kdkit's public API; torch is imported only when a loss is built.
"""
from __future__ import annotations

import kdkit
from kdkit import ConfigKey

__version__ = "0.1.0"


def _weight(default: float, help_text: str) -> ConfigKey:
    return ConfigKey(default, help_text, type=float, range="[0, inf)")


def _positive(default, help_text: str, nullable: bool = False) -> ConfigKey:
    return ConfigKey(default, help_text, type=float, range="(0, inf)", nullable=nullable)


_POOL = ConfigKey(False, "average 4-D features over their spatial positions before flattening (false: flatten)")

#: name -> (class import path, declared options, one-line description) of every loss this plugin
#: registers.  Defaults follow the references (docs/methods.md); the classes document each option.
LOSSES = {
    "dkd": ("kdkit_methods.logit:DKDLoss", {
        "alpha": _weight(1.0, "TCKD weight"),
        "beta": _weight(8.0, "NCKD weight (8: the paper's CIFAR-100 resnet32x4 -> resnet8x4)"),
        "temperature": _positive(None, "temperature T (null: distill.temperature)", nullable=True),
        "warmup": _weight(20.0, "epochs of linear warm-up (20 on CIFAR-100, 1 on ImageNet)"),
    }, "decoupled KD (Zhao et al. 2022): alpha*TCKD + beta*NCKD, linear warm-up"),
    "dist": ("kdkit_methods.logit:DISTLoss", {
        "beta": _weight(1.0, "inter-class weight"),
        "gamma": _weight(1.0, "intra-class weight"),
        "tau": _positive(1.0, "softmax temperature (null: distill.temperature)", nullable=True),
    }, "DIST (Huang et al. 2022): inter- and intra-class Pearson correlation of probabilities"),
    "lskd": ("kdkit_methods.logit:LogitStandardKDLoss", {
        "temperature": _positive(2.0, "base temperature T (null: distill.temperature)", nullable=True),
        "eps": _positive(1e-7, "added to the standard deviation"),
    }, "logit-standardised KD (Sun et al. 2024): KL of z-scored logits"),
    "at": ("kdkit_methods.feature:ATLoss", {
        "p": _positive(2.0, "exponent of the attention map (2: the paper's and the references')"),
    }, "attention transfer (Zagoruyko & Komodakis 2017): normalised spatial attention maps"),
    "pkt": ("kdkit_methods.feature:PKTLoss", {
        "eps": _positive(1e-7, "added to the norms and similarities (the reference's 1e-7)"),
        "pool": _POOL,
    }, "probabilistic knowledge transfer (Passalis & Tefas 2018): KL of cosine-similarity distributions"),
    "rkd": ("kdkit_methods.feature:RKDLoss", {
        "distance_weight": _weight(25.0, "weight of the distance-wise relation (RepDistiller w_d)"),
        "angle_weight": _weight(50.0, "weight of the angle-wise relation (RepDistiller w_a)"),
        "squared": ConfigKey(False, "compare squared distances (mdistiller RKD.PDIST.SQUARED)"),
        "eps": _positive(1e-12, "clamp of the squared distances (mdistiller RKD.PDIST.EPSILON)"),
        "pool": _POOL,
    }, "relational KD (Park et al. 2019): distance-wise + angle-wise relations"),
    "sp": ("kdkit_methods.feature:SPLoss", {},
           "similarity-preserving KD (Tung & Mori 2019): batch Gram matrices"),
    "nst": ("kdkit_methods.feature:NSTLoss", {
        "degree": ConfigKey(2, "degree d of the polynomial kernel (k(x, y) = (x.y + c)^d)", range="[1, inf)"),
        "constant": _weight(0.0, "constant c of the polynomial kernel"),
    }, "neuron selectivity transfer (Huang & Wang 2017): polynomial-kernel MMD"),
    "vid": ("kdkit_methods.vid:VIDLoss", {
        "init_pred_var": _positive(5.0, "initial variance (must exceed eps)"),
        "eps": _positive(1e-5, "variance floor"),
        "mid_channels": ConfigKey(None, "channels of the regressors (null: the teacher layer's)", type=int,
                                  range="[1, inf)"),
    }, "variational information distillation (Ahn et al. 2019): Gaussian likelihood, learned variance"),
    "crd": ("kdkit_methods.crd:CRDLoss", {
        "feat_dim": ConfigKey(128, "embedding size of the heads", range="[1, inf)"),
        "nce_k": ConfigKey(16384, "negatives per sample (capped at the number of samples - 1)", range="[1, inf)"),
        "nce_t": _positive(0.07, "temperature T of the scores"),
        "nce_mom": ConfigKey(0.5, "momentum of the memory banks", type=float, range="[0, 1)"),
    }, "contrastive representation distillation (Tian et al. 2020): NCE over a memory bank"),
    "reviewkd": ("kdkit_methods.reviewkd:ReviewKDLoss", {
        "mid_channels": ConfigKey(None, "fused width of the ABFs (null: min(512, the student's deepest channels))",
                                  type=int, range="[1, inf)"),
        "warmup_epochs": _weight(20.0, "epochs of linear warm-up (mdistiller WARMUP_EPOCHS)"),
    }, "knowledge review (Chen et al. 2021): attention-based fusion + hierarchical context loss"),
    # logit methods after the first twelve: CTKD, MLKD, NKD, WSLD (kdkit_methods.logit_recent)
    "ctkd": ("kdkit_methods.logit_recent:CTKDLoss", {
        "temp_min": _positive(1.0, "lowest temperature (reference --t_start)"),
        "temp_range": _positive(20.0, "T = temp_min + temp_range * sigmoid(theta) (reference --t_end)"),
        "lambda_start": _weight(0.0, "gradient-reversal strength at the start (reference -decay_max)"),
        "lambda_end": _weight(1.0, "gradient-reversal strength after the curriculum (reference -decay_min)"),
        "curriculum_epochs": _weight(10.0, "epochs of the cosine curriculum (reference --decay_loops; 5 on ImageNet)"),
    }, "curriculum temperature KD (Li et al. 2023): KD with an adversarially learned temperature"),
    "mlkd": ("kdkit_methods.logit_recent:MLKDLoss", {
        "temperatures": ConfigKey([2.0, 3.0, 4.0, 5.0, 6.0], "the temperatures of the prediction augmentation",
                                  type=list, items=float, range="(0, inf)"),
    }, "multi-level logit distillation (Jin et al. 2023): instance, batch and class alignment"),
    "nkd": ("kdkit_methods.logit_recent:NKDLoss", {
        "temperature": _positive(1.0, "temperature of the non-target term (null: distill.temperature)",
                                 nullable=True),
        "gamma": _weight(1.5, "weight of the non-target term (1.5 ImageNet, 3.5 CIFAR-100)"),
    }, "normalised KD (Yang et al. 2023): target term + normalised non-target distribution"),
    "wsld": ("kdkit_methods.logit_recent:WSLDLoss", {
        "temperature": _positive(2.0, "temperature T (null: distill.temperature; 4 on CIFAR-100)", nullable=True),
        "eps": _positive(1e-7, "added to the teacher's cross-entropy in the weight's ratio"),
    }, "weighted soft labels (Zhou et al. 2021): KD weighted per sample by the CE ratio"),
    # feature methods after the first twelve: AB, FT, FSP, CC, MGD (kdkit_methods.feature_more)
    "ab": ("kdkit_methods.feature_more:ABLoss", {
        "margin": _positive(1.0, "margin m of the activation-boundary hinge (RepDistiller ABLoss margin=1.0)"),
        "connector": ConfigKey("auto", "auto: a conv + BN connector (ConvReg) only where the student stage differs "
                                       "from the teacher's (RepDistiller); always: on every stage (the paper)",
                               choices=("auto", "always")),
        "preact_pairs": ConfigKey(False, "the student list gives two paths per stage (the last block's bn2 and "
                                         "shortcut), summed into its pre-activation"),
    }, "activation boundaries (Heo et al. 2019): margin hinge on the teacher neurons' signs, through connectors"),
    "ft": ("kdkit_methods.feature_more:FTLoss", {
        "rate": ConfigKey(0.5, "factor channels = int(rate x teacher channels) (RepDistiller Paraphraser k=0.5)",
                          type=float, range="(0, 1]"),
        "p": _positive(1.0, "exponent of the factor distance (1: L1, the paper's and RepDistiller's p2=1)"),
        "factor": ConfigKey("attention", "attention: normalise(mean_c F^2) (RepDistiller); flat: normalise(vec F) "
                                         "(the paper)", choices=("attention", "flat")),
    }, "factor transfer (Kim et al. 2018): paraphraser (pre-trained) vs translator factors, L1"),
    "fsp": ("kdkit_methods.feature_more:FSPLoss", {},
            "flow of solution procedure (Yim et al. 2017): MSE of Gram matrices between consecutive layers"),
    "cc": ("kdkit_methods.feature_more:CCLoss", {
        "gamma": _positive(0.4, "gamma of the Gaussian RBF kernel (Knowledge-Distillation-Zoo --gamma 0.4)"),
        "order": ConfigKey(2, "order P of its Taylor expansion (the paper's 2)", range="[0, inf)"),
        "embed_dim": ConfigKey(128, "width of the linear embedding heads (RepDistiller --feat_dim; null: none)",
                               type=int, range="[1, inf)", nullable=True),
        "kernel": ConfigKey("rbf", "rbf: the paper's Taylor-expanded RBF correlation; consecutive: RepDistiller's "
                                   "Correlation", choices=("rbf", "consecutive")),
    }, "correlation congruence (Peng et al. 2019): MSE of the batch's RBF-kernel correlation matrices"),
    "mgd": ("kdkit_methods.feature_more:MGDLoss", {
        "alpha_mgd": _positive(7e-5, "scale of the summed squared error (yzd-v/MGD alpha_mgd)"),
        "lambda_mgd": ConfigKey(0.15, "masked ratio (yzd-v/MGD lambda_mgd)", type=float, range="[0, 1)"),
        "mask": ConfigKey("channel", "channel: mask whole channels (the reference's classification code); spatial: "
                                     "positions (its detection code)", choices=("channel", "spatial")),
    }, "masked generative distillation (Yang et al. 2022): a generator rebuilds the teacher map from a masked student's"),
    # methods that use a classifier: SRRL, SimKD, CAT-KD (kdkit_methods.classifier_reuse)
    "srrl": ("kdkit_methods.classifier_reuse:SRRLLoss", {
        "alpha": _weight(1.0, "feature-matching weight (KD_SRRL: loss_stat weight 1)"),
        "beta": _weight(1.0, "softmax-regression weight: MSE of the teacher's classifier on the connected "
                             "student feature vs the teacher's logits"),
        "teacher_classifier": ConfigKey("classifier", "module path of the teacher's classifier (fc for "
                                                      "torchvision ResNets)"),
    }, "SRRL (Yang et al. 2021): connector + feature matching + the teacher's classifier on student features"),
    "simkd": ("kdkit_methods.classifier_reuse:SimKDLoss", {},
              "SimKD (Chen et al. 2022): MSE of the projected student map vs the teacher's (--method simkd "
              "reuses the teacher's classifier)"),
    "catkd": ("kdkit_methods.classifier_reuse:CATKDLoss", {
        "cam_resolution": ConfigKey(2, "side of the pooled class activation maps (CAM_RESOLUTION)", range="[1, inf)"),
        "normalize": ConfigKey(False, "L2-normalise each pooled CAM over its positions (IF_NORMALIZE)"),
        "binarize": ConfigKey(False, "binarise the teacher's CAMs at their mean absolute value (IF_BINARIZE)"),
        "student_classifier": ConfigKey("classifier", "module path of the student's classifier"),
        "teacher_classifier": ConfigKey("classifier", "module path of the teacher's classifier"),
    }, "CAT-KD (Guo et al. 2023): MSE of pooled class activation maps (classifier weights as a 1x1 conv)"),
}


#: the losses of :data:`LOSSES` that read the term's tapped features (registered with
#: ``inputs="features"``: a term naming no student/teacher module paths is refused before training)
FEATURE_LOSSES = frozenset({"at", "pkt", "rkd", "sp", "nst", "vid", "crd", "reviewkd", "ab", "ft", "fsp", "cc",
                            "mgd", "srrl", "simkd", "catkd"})


@kdkit.hookimpl
def kdkit_register_losses(register):
    for name, (target, options, description) in LOSSES.items():
        register(name, target, description=description, options=options,
                 inputs="features" if name in FEATURE_LOSSES else "logits")


@kdkit.hookimpl
def kdkit_register_methods(register):
    from kdkit_methods.presets import PRESETS

    for preset in PRESETS:
        register(preset.name, preset.method(), description=preset.description)
    # methods that are their own classes: SimKD (its student carries the teacher's classifier),
    register("simkd", "kdkit_methods.classifier_reuse:SimKDMethod",
             description="SimKD (Chen et al. 2022): student + projector + the teacher's frozen classifier, "
                         "trained by feature MSE")
    # the pipeline methods (DML, TAKD, born-again, BYOT),
    from kdkit_methods.pipelines import METHODS as PIPELINE_METHODS

    for name, (target, description) in PIPELINE_METHODS.items():
        register(name, target, description=description)
    # and AB, FSP, FT (an initialisation stage before the student's)
    from kdkit_methods.init_stage import INIT_METHODS

    for name, method in INIT_METHODS.items():
        register(name, method, description=method.description)
