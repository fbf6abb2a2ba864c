"""The methods that train something before the student's main stage: ``ab``, ``fsp`` and ``ft``.

RepDistiller's ``train_student.py`` calls ``helper/pretrain.py``'s ``init()`` for exactly these three:

* **AB** and **FSP** — the student's feature layers (and AB's connectors) are first trained on the
  feature loss alone for ``--init_epochs 30`` (SGD at the main learning rate, constant), then the
  student trains as usual with cross-entropy (``-a 0``; the feature term is 0 in the main loop);
* **FT** — the paraphraser is first trained as an autoencoder of the teacher's feature (30 epochs,
  SGD at 0.01 for the CIFAR ResNets, constant), then frozen; the student trains with
  cross-entropy + 200 * FT through its translator.

Here each is ``kd``'s pipeline (teachers, optional baseline) with one more stage of the run before
the student's: ``student.init`` (AB, FSP: a :class:`kdkit.distill.StudentStage` of the ``init``
section's objective, trained into the same student model the main stage then continues from) or
``paraphraser`` (FT: a :class:`kdkit.Stage` of its own on the teacher's tapped feature).  Every
stage is a ``ctx.fit`` stage, so a run resumes exactly wherever it was stopped.
"""
from __future__ import annotations

from typing import ClassVar

from kdkit import ConfigError, ConfigKey
from kdkit.distill import KDMethod, StudentStage, distill_section

__all__ = ["INIT_METHODS", "ABMethod", "FSPMethod", "FTMethod", "InitStageMethod"]

STAGES = ["layer1", "layer2", "layer3"]
#: the student's pre-activations of kdkit's resnet8 (one block per stage): each stage's last block's
#: bn2 and shortcut, summed by the ab loss (``preact_pairs``)
RESNET8_PREACT = [path for stage in STAGES for path in (f"{stage}.0.bn2", f"{stage}.0.shortcut")]
#: each stage's input and output: the first block's identity shortcut outputs the stem's (post-ReLU) map
FSP_LAYERS = ["layer1.0.shortcut", *STAGES]

# the main stage of AB and FSP: cross-entropy, and the KL term at RepDistiller's -a 0
_CE_ONLY = [{"loss": "kl", "weight": 0.0}]


def _init_keys(epochs: int, lr: float, lr_source: str) -> dict:
    return {
        "epochs": ConfigKey(epochs, "epochs of the initialisation stage (RepDistiller --init_epochs 30)",
                            range="[1, inf)"),
        "lr": ConfigKey(lr, f"its learning rate ({lr_source})", range="(0, inf)"),
        "scheduler": ConfigKey("none", "its learning-rate schedule (none: constant, as RepDistiller's init())",
                               type=str),
    }


def _summary(stage_result, cfg) -> dict:
    distiller = stage_result.distiller
    return {"combine": cfg.distill.combine, "loss": cfg.distill.loss, "alpha": distiller.ce_weight,
            "temperature": distiller.temperature, "teacher_cache": stage_result.cached,
            "teacher_cache_mode": stage_result.cache_mode, "teacher_cache_reason": stage_result.cache_reason,
            "terms": stage_result.terms, "teacher_weights": stage_result.teacher_weights,
            "teacher_agreement": stage_result.agreement}


class InitStageMethod(KDMethod):
    """``kd`` with a stage before the student's main one (see the module docs); subclasses give
    the ``distill`` and ``init`` defaults and :meth:`initialise`."""

    description = ""
    #: the initialisation stage's name
    init_stage_name: ClassVar[str] = "student.init"

    @classmethod
    def stages(cls, config) -> list[str]:
        """kd's stages with :attr:`init_stage_name` before the student's."""
        return [*super().stages(config)[:-1], cls.init_stage_name, "student"]

    def init_stage(self, ctx) -> StudentStage | None:
        """The initialisation stage's :class:`StudentStage` (``None`` when it is not a student stage)."""
        return None

    def initialise(self, ctx, stage: StudentStage, init: StudentStage | None, student, teachers, train,
                   references: dict, num_classes: int) -> dict:
        """Train the initialisation stage; returns its summary."""
        raise NotImplementedError

    def optimizer(self, ctx) -> dict:
        """The initialisation stage's train settings (the rest come from ``train``)."""
        init = ctx.config.init
        return {"epochs": int(init.epochs), "lr": float(init.lr), "scheduler": init.scheduler}

    def run(self, ctx) -> dict:
        cfg = ctx.config
        stage = self.student_stage(ctx)  # both objectives are built (and checked) before anything trains
        init = self.init_stage(ctx)

        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        method = cfg.method
        ctx.log(f"{method}: {cfg.data.name} with {num_classes} classes; train {len(train)}, "
                f"val {len(val) if val is not None else 0}, test {len(test)}; seed {cfg.seed}")
        stage.check_taps(num_classes)
        if init is not None:
            init.check_taps(num_classes)
        teachers, teacher_summary = self.build_teachers(ctx, train, val, test, num_classes, stage)

        summary: dict = {"method": method, "teachers": teacher_summary}
        if cfg.baseline.enabled:
            summary["baseline"] = stage.fit_baseline(num_classes, train, val, test)

        references = {name: s.get("val_top1", s.get("top1")) for name, s in teacher_summary.items()}
        student = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
        summary["init"] = self.initialise(ctx, stage, init, student, teachers, train, references, num_classes)
        result = stage.distil(num_classes, teachers, train, val, test, references=references, student=student)
        summary["student"] = {**result.summary, "name": cfg.student.name}
        summary["distill"] = _summary(result, cfg)
        summary["selection"] = {"select_on": cfg.checkpoint.select_on, "metric": "top1 (test, best epoch)"}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary


class _StudentInitMethod(InitStageMethod):
    """AB and FSP: the student (and the term's modules) trained on the ``init.distill`` objective
    first, as the stage ``student.init``, into the model the main stage continues from."""

    init_terms: ClassVar[list] = []

    @classmethod
    def default_config(cls) -> dict:
        import copy

        config = super().default_config()
        config["distill"] = distill_section(alpha=1.0, temperature=4.0, terms=copy.deepcopy(_CE_ONLY))
        config["init"] = {**_init_keys(30, 0.05, "RepDistiller: --learning_rate 0.05, the main stage's"),
                          "distill": distill_section(alpha=0.0, temperature=4.0, terms=copy.deepcopy(cls.init_terms))}
        return config

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        super().check_config(config, registry)
        StudentStage.check_config(config, cls.default_config()["init"]["distill"], registry,
                                  distill=config.init.distill)

    def init_stage(self, ctx) -> StudentStage:
        return StudentStage(ctx, self.default_config()["init"]["distill"], self.teacher_stage_names(ctx.config.teachers),
                            distill=ctx.config.init.distill)

    def initialise(self, ctx, stage, init, student, teachers, train, references, num_classes) -> dict:
        # no held-out evaluation: the init objective does not train the classifier, so the stage
        # keeps its last epoch (RepDistiller's init() evaluates nothing either)
        result = init.distil(num_classes, teachers, train, None, None, references=references,
                             name=self.init_stage_name, student=student, seed_tag="init", optimizer=self.optimizer(ctx))
        return {"stage": self.init_stage_name, "epochs": int(ctx.config.init.epochs), "terms": result.terms}


class ABMethod(_StudentInitMethod):
    """AB (Heo et al., AAAI 2019): the student's stages and connectors trained on the activation-boundary
    loss alone (``student.init``), then the student trained with cross-entropy (RepDistiller ``abound``)."""

    description = ("AB, activation boundaries (Heo et al. 2019): 30 epochs of the AB hinge alone (student.init), "
                   "then CE")
    init_terms: ClassVar[list] = [{"loss": "ab", "weight": 1.0, "student": RESNET8_PREACT, "teacher": STAGES,
                   "options": {"preact_pairs": True}}]


class FSPMethod(_StudentInitMethod):
    """FSP (Yim et al., CVPR 2017): the student trained to match the teacher's FSP matrices alone
    (``student.init``), then with cross-entropy (RepDistiller ``fsp``).  FSP matrices need a student of
    the teacher's widths: the default student is resnet8 at width 16, the teacher's (RepDistiller's
    resnet32x4 -> resnet8x4 have equal widths too)."""

    description = "FSP, flow of solution procedure (Yim et al. 2017): 30 epochs of FSP alone (student.init), then CE"
    init_terms: ClassVar[list] = [{"loss": "fsp", "weight": 1.0, "student": FSP_LAYERS, "teacher": FSP_LAYERS}]

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config["student"]["width"] = 16
        return config


def _ft_term(distill):
    """The ``ft`` term of a ``distill`` section (the first one)."""
    from kdkit.distill import distill_terms

    terms = [spec for spec in distill_terms(distill) if spec.loss == "ft"]
    if not terms:
        raise ConfigError("config key distill.terms: the ft method trains a paraphraser for an ft term, and there is "
                          "none; add {loss: ft, weight: 200, student: layer3, teacher: layer3}")
    spec = terms[0]
    if not isinstance(spec.teacher, str):
        raise ConfigError(f"config key distill.terms ({spec.name}): the ft term's teacher: must be one module path "
                          f"(the paraphraser's input), got {list(spec.teacher) if spec.teacher else spec.teacher}")
    return spec


class FTMethod(InitStageMethod):
    """FT (Kim et al., NeurIPS 2018): the paraphraser trained on the teacher's feature first (stage
    ``paraphraser``), then the student with cross-entropy + 200 * FT through its translator
    (RepDistiller ``factor``)."""

    description = ("FT, factor transfer (Kim et al. 2018): paraphraser pre-trained on the teacher's layer3, then "
                   "CE + 200*FT")
    init_stage_name = "paraphraser"

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config["distill"] = distill_section(alpha=1.0, temperature=4.0, terms=[
            {"loss": "ft", "weight": 200.0, "student": "layer3", "teacher": "layer3"}])
        config["init"] = _init_keys(30, 0.01, "RepDistiller's init(): 0.01 for FT with CIFAR ResNet students")
        return config

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        super().check_config(config, registry)
        _ft_term(config.distill)

    def initialise(self, ctx, stage, init, student, teachers, train, references, num_classes) -> dict:
        import torch
        import torch.nn.functional as F

        import kdkit
        from kdkit.distill import FeatureTaps

        spec = _ft_term(ctx.config.distill)
        ft = stage.distiller.terms[spec.name]
        teacher = teachers[spec.teacher_index].to(ctx.device)
        taps = FeatureTaps(teacher, [spec.teacher], detach=True, owner=f"teacher {spec.teacher_index}")
        with taps, torch.no_grad():  # the teacher feature's channels size the paraphraser
            teacher(kdkit.to_device(train[0][0][None], ctx.device))
            channels = taps.pop()[spec.teacher].shape[1]
        kdkit.seed_everything(kdkit.derive_seed(ctx.seed, "init", "paraphraser"))
        paraphraser = ft.make_paraphraser(channels)

        def reconstruct(model, batch):
            with torch.no_grad():
                teacher(batch[0])
            target = taps.pop()[spec.teacher].float()
            _, reconstruction = model(target)
            loss = F.mse_loss(reconstruction.float(), target)
            return loss, {"reconstruction": loss.detach()}

        # RepDistiller's init(): the reconstruction MSE on every training batch, no evaluation (last epoch kept)
        ctx.fit(kdkit.Stage(name=self.init_stage_name, model=paraphraser, train_data=train, step_fn=reconstruct,
                            optimizer=self.optimizer(ctx), taps=[taps]))
        ft.set_paraphraser(paraphraser)
        return {"stage": self.init_stage_name, "epochs": int(ctx.config.init.epochs), "teacher": spec.teacher,
                "channels": int(channels), "factor_channels": int(paraphraser.factor_channels)}


#: name -> method class, registered by the plugin
INIT_METHODS = {"ab": ABMethod, "fsp": FSPMethod, "ft": FTMethod}
