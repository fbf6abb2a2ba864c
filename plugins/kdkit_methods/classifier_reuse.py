"""Distillation through the classifier: SRRL, SimKD and CAT-KD.

The three methods use a classifier's weights, not only tapped tensors, and reach it through
:meth:`kdkit.distill.DistillInputs.teacher_module` / :meth:`~kdkit.distill.DistillInputs.student_module`
(a dotted module path, ``classifier`` for kdkit's CIFAR ResNets; ``kdkit layers MODEL`` lists the
paths of other models):

* :class:`SRRLLoss` (``srrl``) — a connector maps the student's last features to the teacher's
  width; feature matching plus the teacher's classifier applied to the connected student feature;
* :class:`SimKDLoss` (``simkd``) and :class:`SimKDMethod` (``--method simkd``) — the student
  becomes backbone + projector + the teacher's frozen classifier (:class:`SimKDStudent`), trained by
  feature matching alone;
* :class:`CATKDLoss` (``catkd``) — class activation maps (each classifier's weights as a 1x1
  convolution over its own last feature map), pooled, compared by MSE.

The teacher's classifier is applied to student tensors with its parameters detached
(:func:`frozen_call`): gradients reach the student's tensors, never the teacher.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdkit
from kdkit.distill import FeatureTaps, KDMethod, StudentStage
from kdkit_methods.feature import _maps, _no_autocast

__all__ = [
    "CATKDLoss",
    "SRRLLoss",
    "SimKDLoss",
    "SimKDMethod",
    "SimKDStage",
    "SimKDStudent",
    "class_activation_maps",
    "frozen_call",
    "simkd_projector",
]


def _shape(x: torch.Tensor) -> tuple:
    return tuple(x.shape)


def frozen_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with every parameter and buffer of ``module`` detached: the output depends on
    ``x`` with gradients, on the module's weights without — the teacher's classifier passes gradients
    to the student feature and is never updated, even if its ``requires_grad`` were on."""
    state = {name: t.detach() for name, t in module.named_parameters()}
    state.update({name: t for name, t in module.named_buffers()})
    return torch.func.functional_call(module, state, (x,))


def _one_pair(inputs, loss: str, example: str):
    pairs = inputs.feature_pairs(loss, example=example)
    if len(pairs) != 1:
        raise kdkit.ConfigError(f"loss {loss}: {len(pairs)} (student, teacher) feature pairs; it distils one "
                                f"pair: give student: and teacher: one module path each (e.g. {example})")
    return pairs[0]


# ----------------------------------------------------------------------------------------------- SRRL

class SRRLLoss(nn.Module):
    """Knowledge distillation via softmax regression representation learning (Yang, Martinez,
    Bulat & Tzimiropoulos, ICLR 2021), registered as ``srrl``.

    A connector ``c`` — a 1x1 convolution without bias, BatchNorm, ReLU (``C_s -> C_t``) — maps the
    student's last feature ``s`` (a ``B x C_s x H x W`` map, or a ``B x C_s`` vector taken as a 1x1
    map) to the teacher's width.  With ``avg`` the mean over spatial positions, ``t`` the teacher's
    feature, ``W_t`` the teacher's classifier and ``z_t`` the teacher's logits::

        srrl = alpha * mse(avg(c(s)), avg(t)) + beta * mse(W_t(avg(c(s))), z_t)

    (``mse``: the mean over every element.)  The first term is feature matching (the authors'
    ``statm_loss``: the squared difference of the spatial means, averaged over batch and channels),
    the second softmax regression: the teacher's classifier, frozen, applied to the connected
    student feature must reproduce the teacher's logits.  Gradients reach the student and the
    connector, never the teacher's classifier (:func:`frozen_call`).

    Options (defaults: the authors' jingyang2017/KD_SRRL ``train_imagenet_distillation.py``,
    ``loss_kd = loss_stat + F.mse_loss(pred_sc, pred_t)`` weighted by ``--weight 1``):

    :param alpha: weight of the feature-matching term, ``1.0``.
    :param beta: weight of the softmax-regression term, ``1.0`` (MSE of logits, not KL, as in the
        authors' code and DefangChen/SimKD's CIFAR re-implementation ``criterion_kd = nn.MSELoss()``).
    :param teacher_classifier: the module path of the teacher's classifier, ``classifier`` (kdkit's
        CIFAR ResNets; ``fc`` for torchvision ResNets).  It takes the pooled ``B x C_t`` feature.

    The connector is built on the first call (initialised as the authors' ``transfer_conv``: normal
    with std ``sqrt(2 / (k*k*C_t))``, BatchNorm weight 1 and bias 0), in the loss module's own
    train/eval mode, trains with the student and is checkpointed with the stage.  Taps: the
    student's last stage map (``layer3`` in kdkit, ``layer4`` in the authors' ImageNet ResNets);
    tapping its pooled feature (``pool``) gives SimKD's CIFAR version, which applies the connector to
    the pooled vector.  The teacher's feature enters only through its spatial mean, so its map and
    its pooled feature (``pool``, the preset's choice: ``H x W`` times less to cache) give the same
    value.  The teacher's logits come from ``inputs.teacher_logits`` (the teacher cache or the
    online teacher).
    """

    name = "srrl"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, teacher_classifier: str = "classifier"):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)
        if not isinstance(teacher_classifier, str):
            raise kdkit.ConfigError(f"loss srrl: option teacher_classifier must be a module path such as "
                                    f"classifier or fc, got {teacher_classifier!r}")
        self.teacher_classifier = teacher_classifier
        self.connector: nn.Sequential | None = None
        self._channels: tuple[int, int] | None = None

    def _build(self, c_s: int, c_t: int, device) -> None:
        conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
        nn.init.normal_(conv.weight, 0.0, (2.0 / c_t) ** 0.5)  # the authors' n = k * k * out_channels
        self.connector = nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU()).to(device)
        self.connector.train(self.training)  # built in Distiller.materialize (eval): no statistics update
        self._channels = (c_s, c_t)

    def forward(self, inputs) -> torch.Tensor:
        s, t, where = _one_pair(inputs, "srrl", "{loss: srrl, student: layer3, teacher: layer3}")
        for which, x in (("student", s), ("teacher", t)):
            if x.dim() not in (2, 4):
                raise kdkit.ConfigError(f"loss srrl: the {which} feature{where} has shape {_shape(x)}; expected a "
                                        "B x C x H x W map or a B x C vector (tap the last stage, e.g. layer3, or pool)")
        if inputs.teacher_logits is None:
            raise kdkit.ConfigError("loss srrl needs the teacher's logits (its softmax-regression term); the term "
                                    "has a teacher network")
        s_map = s[:, :, None, None] if s.dim() == 2 else s
        t_vec = t.mean((2, 3)) if t.dim() == 4 else t
        if self.connector is None:
            self._build(s_map.shape[1], t_vec.shape[1], s.device)
        if (s_map.shape[1], t_vec.shape[1]) != self._channels:
            raise kdkit.ConfigError(f"loss srrl: built for (student, teacher) channels {self._channels}, now given "
                                    f"{(s_map.shape[1], t_vec.shape[1])}; a term must tap the same layers on every batch")
        classifier = inputs.teacher_module(self.teacher_classifier, loss="srrl")
        with _no_autocast(s.device):
            connected = self.connector(s_map.float()).float().mean((2, 3))  # B x C_t
            feature_matching = F.mse_loss(connected, t_vec)
            try:
                regressed = frozen_call(classifier, connected).float()
            except RuntimeError as err:
                raise kdkit.ConfigError(f"loss srrl: the teacher's classifier {self.teacher_classifier!r} cannot "
                                        f"take the connected student feature {_shape(connected)} (the teacher feature "
                                        f"has {t_vec.shape[1]} channels): {str(err).splitlines()[0]}") from None
            target = inputs.teacher_logits.detach().float()
            if regressed.shape != target.shape:
                raise kdkit.ConfigError(f"loss srrl: the teacher's classifier {self.teacher_classifier!r} gives "
                                        f"{_shape(regressed)} but the teacher's logits are {_shape(target)}; name the "
                                        "module that maps the pooled feature to the logits")
            softmax_regression = F.mse_loss(regressed, target)
        return self.alpha * feature_matching + self.beta * softmax_regression


# ---------------------------------------------------------------------------------------------- SimKD

class SimKDLoss:
    """The training loss of SimKD (Chen et al., CVPR 2022, arXiv:2203.14001),
    registered as ``simkd``: the mean squared error between the projected student feature map and
    the teacher's last feature map::

        simkd = mse(P(s), t)

    ``P(s)`` is the output of the SimKD student's projector (:class:`SimKDStudent`: tap its
    ``projector``), ``t`` the teacher's last map (``layer3``); when their spatial sizes differ the
    larger is adaptive-average-pooled to the smaller (the reference pools the teacher's map down to
    the student's; the student's map is pooled before the projector when it is the larger).  The
    channel counts must match: the projector maps to the teacher's width.  No options, nothing
    trainable here: the projector belongs to the student (it is deployed with it).  Source:
    DefangChen/SimKD ``models/util.py`` ``SimKD`` and ``helper/loops.py``
    (``criterion_kd(trans_feat_s, trans_feat_t)``, ``nn.MSELoss()``).
    """

    name = "simkd"

    def __call__(self, inputs) -> torch.Tensor:
        s, t, where = _one_pair(inputs, "simkd", "{loss: simkd, student: projector, teacher: layer3}")
        s, t = _maps("simkd", s, t, where)
        if s.shape[1] != t.shape[1]:
            raise kdkit.ConfigError(f"loss simkd: the student feature {_shape(s)} and the teacher feature {_shape(t)}"
                                    f"{where} differ in channels; tap the SimKD student's projector (kdkit train "
                                    "--method simkd builds it), which maps to the teacher's channels")
        with _no_autocast(s.device):
            return F.mse_loss(s, t)

    def __repr__(self) -> str:
        return "SimKDLoss()"


def simkd_projector(c_s: int, c_t: int, factor: int = 2) -> nn.Sequential:
    """SimKD's projector: a bottleneck of 1x1, 3x3 and 1x1 convolutions without bias
    (``C_s -> C_t/factor -> C_t/factor -> C_t``), each followed by BatchNorm and ReLU (DefangChen/SimKD
    ``models/util.py`` ``SimKD.transfer``; PyTorch's default initialisation, as there)."""
    mid = c_t // factor
    if mid < 1:
        raise kdkit.ConfigError(f"simkd.factor: {factor} leaves no channels in the projector's bottleneck "
                                f"({c_t} teacher channels // {factor}); use a smaller factor")
    return nn.Sequential(
        nn.Conv2d(c_s, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_t, kernel_size=1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))


class SimKDStudent(nn.Module):
    """The SimKD student as it is trained, evaluated and deployed: the student network (``backbone``)
    up to its feature map ``feature``, average-pooled to ``source_size`` when it is larger than the
    teacher's map, the ``projector``, global average pooling and the **teacher's classifier**
    (``classifier``, a frozen copy: ``requires_grad`` off, always in eval mode)::

        logits = W_t( avg( P( backbone.feature(x) ) ) )

    The backbone's own classifier still runs in the forward pass (its output is not used); the SimKD
    method freezes it.  Its ``state_dict`` holds all three parts, so a checkpoint is the whole
    deployed model.
    """

    def __init__(self, backbone: nn.Module, feature: str, projector: nn.Module, classifier: nn.Module,
                 source_size: tuple[int, int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.classifier = classifier
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.classifier.eval()
        self.feature = feature
        self.source_size = tuple(source_size) if source_size is not None else None
        FeatureTaps(backbone, [feature], owner="student")  # a wrong path: the one-line error, now
        self._feature_name = feature.removeprefix("module.")

    def train(self, mode: bool = True) -> SimKDStudent:
        super().train(mode)
        self.classifier.eval()  # the teacher's classifier stays as the teacher ran it
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The projected feature map ``P(s)`` (what the ``simkd`` term compares with the teacher's map)."""
        captured = []
        module = self.backbone.get_submodule(self._feature_name)  # looked up, not kept: no second registration
        handle = module.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            self.backbone(x)
        finally:
            handle.remove()
        source = captured[-1]
        if self.source_size is not None and tuple(source.shape[2:]) != self.source_size:
            source = F.adaptive_avg_pool2d(source, self.source_size)
        return self.projector(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def _probe(model: nn.Module, path: str, x: torch.Tensor, owner: str) -> torch.Tensor:
    """The output of ``path`` of ``model`` on ``x`` (eval mode, no gradients; the mode is restored)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, [path], detach=True, owner=owner) as taps:
            model(x.to(device))
            out = taps.pop().get(path)
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        got = "did not run" if out is None else f"gave {type(out).__name__}" if not isinstance(out, torch.Tensor) \
            else f"gave shape {_shape(out)}"
        raise kdkit.ConfigError(f"simkd: {owner}'s {path} {got}; SimKD needs a B x C x H x W feature map there "
                                "(the last stage, e.g. layer3)")
    return out


def build_simkd_student(student: nn.Module, teacher: nn.Module, probe: torch.Tensor, *, student_feature: str,
                        teacher_feature: str, teacher_classifier: str, student_classifier: str | None = None,
                        factor: int = 2) -> SimKDStudent:
    """:class:`SimKDStudent` around ``student`` for ``teacher``: the channel counts and spatial sizes
    come from one forward pass of both on ``probe`` (one input sample, ``1 x ...``); the projector
    is initialised from the current RNG; the teacher's classifier is copied and frozen; the
    student's own classifier (``student_classifier``, unused) is frozen."""
    s = _probe(student, student_feature, probe, "student")
    t = _probe(teacher, teacher_feature, probe, "teacher 0")
    modules = FeatureTaps(teacher, [teacher_classifier], owner="teacher 0").modules
    classifier = copy.deepcopy(modules[teacher_classifier])
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    try:
        with torch.no_grad():
            frozen_call(classifier, torch.zeros(1, t.shape[1], device=next(
                (p.device for p in classifier.parameters()), torch.device("cpu"))))
    except RuntimeError as err:
        raise kdkit.ConfigError(f"simkd: the teacher's classifier {teacher_classifier!r} cannot take the pooled "
                                f"{teacher_feature} feature ({t.shape[1]} channels): {str(err).splitlines()[0]}; "
                                "name the module that maps the pooled last feature map to the logits") from None
    if student_classifier:
        own = FeatureTaps(student, [student_classifier], owner="student").modules[student_classifier]
        for p in own.parameters():
            p.requires_grad_(False)  # unused: the predictions come from the teacher's classifier
    projector = simkd_projector(s.shape[1], t.shape[1], factor)
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    return SimKDStudent(student, student_feature, projector.to(device), classifier.to(device),
                        size if size != tuple(s.shape[2:]) else None)


class SimKDStage(StudentStage):
    """The student stage of :class:`SimKDMethod`: the student is a :class:`SimKDStudent` built
    around a new ``student`` model and teacher 0 (``simkd`` section), for the tap check as for
    the distillation."""

    def __init__(self, ctx, defaults, teacher_names):
        super().__init__(ctx, defaults, teacher_names)
        self.section = ctx.config.simkd
        term = next((s for s in self.distiller.specs if s.loss == "simkd"), None)
        if term is None or not isinstance(term.teacher, str):
            raise kdkit.ConfigError("method simkd: distill.terms needs a simkd term with one teacher: path (e.g. "
                                    "{loss: simkd, weight: 1.0, student: projector, teacher: layer3})")
        self.term = term
        self._probe_input = None

    def probe_input(self, test=None) -> torch.Tensor:
        """One input sample (the first of the test split) to read the feature shapes from."""
        if self._probe_input is None:
            data = test if test is not None else self.ctx.build_dataset(None, "test")
            sample = data[0][0]
            if not isinstance(sample, torch.Tensor):
                raise kdkit.ConfigError(f"method simkd: the dataset gives {type(sample).__name__} inputs; SimKD's "
                                        "projector is built from image feature maps")
            self._probe_input = sample.unsqueeze(0)
        return self._probe_input

    def wrap(self, student: nn.Module, teacher, test=None) -> SimKDStudent:
        """``student`` as a :class:`SimKDStudent` for ``teacher`` (the term's teacher)."""
        if not isinstance(teacher, nn.Module):
            raise kdkit.ConfigError(f"method simkd: teacher {self.term.teacher_index} is not a network, so there is "
                                    "no classifier to reuse")
        sec = self.section
        return build_simkd_student(student, teacher, self.probe_input(test), student_feature=sec.student_feature,
                                   teacher_feature=self.term.teacher, teacher_classifier=sec.teacher_classifier,
                                   student_classifier=sec.student_classifier, factor=int(sec.factor))

    def build_student(self, num_classes: int, teacher, test=None) -> SimKDStudent:
        student = self.ctx.build_model("students", self.config.student, num_classes, seed_tag="student")
        return self.wrap(student, teacher, test)

    def check_taps(self, num_classes: int) -> None:
        """Fresh models (no pretrained weights), the SimKD student built around them and every path
        the terms tap resolved on it and on the teachers, before anything trains."""
        ctx = self.ctx
        teachers = [ctx.build_model("teachers", {k: v for k, v in self.model_options(tcfg).items()
                                                 if k != "pretrained"}, num_classes, seed_tag=name)
                    for tcfg, name in zip(self.teachers, self.teacher_names)]
        wrapper = self.build_student(num_classes, teachers[self.term.teacher_index])
        FeatureTaps(wrapper, self.distiller.student_paths(), owner="student")
        for i, (teacher, paths) in enumerate(zip(teachers, self.distiller.teacher_paths(len(teachers)))):
            FeatureTaps(teacher, paths, owner=f"teacher {i}")

    def distil(self, num_classes, teachers, train, val, test, *, student=None, **kwargs):
        if student is None:
            student = self.build_student(num_classes, list(teachers)[self.term.teacher_index], test)
        return super().distil(num_classes, teachers, train, val, test, student=student, **kwargs)


class SimKDMethod(KDMethod):
    """SimKD (Chen et al., CVPR 2022): the student reuses the teacher's classifier.

    ``kd``'s pipeline (teachers, optional baseline, a distilled student) whose student is a
    :class:`SimKDStudent` — the student network, a projector and the teacher's frozen classifier —
    trained with the ``simkd`` feature loss alone (``distill.alpha: 0``: the reference's ``-c 0 -d 0
    -b 1``).  Its evaluation, checkpoints, ``kdkit eval`` and :meth:`stage_model` (export) use that
    wrapper: **the deployed student carries the teacher's classifier**.
    """

    @classmethod
    def default_config(cls) -> dict:
        from kdkit import ConfigKey
        from kdkit.distill import distill_section

        config = super().default_config()
        config["distill"] = distill_section(alpha=0.0, temperature=4.0, terms=[
            {"loss": "simkd", "weight": 1.0, "student": "projector", "teacher": "layer3", "options": {}}])
        config["simkd"] = {
            "student_feature": ConfigKey("layer3", "the student's last feature map, which the projector takes "
                                                   "(a module path of the student)"),
            "student_classifier": ConfigKey("classifier", "the student's own classifier, frozen (unused: "
                                                          "predictions go through the teacher's); null: none",
                                            nullable=True),
            "teacher_classifier": ConfigKey("classifier", "the teacher's classifier the student reuses (a module "
                                                          "path of the teacher; fc for torchvision ResNets)"),
            "factor": ConfigKey(2, "channel reduction of the projector's bottleneck (C_t / factor)", range="[1, inf)"),
        }
        return config

    def student_stage(self, ctx) -> SimKDStage:
        return SimKDStage(ctx, self.default_config()["distill"], self.teacher_stage_names(ctx.config.teachers))

    def stage_model(self, ctx, stage: str, num_classes: int, test=None) -> nn.Module:
        """The model of a trained stage, rebuilt from the config with its best checkpoint loaded: the
        :class:`SimKDStudent` for ``student``, the plain networks for the teachers and ``baseline``."""
        cfg = ctx.config
        names = self.teacher_stage_names(cfg.teachers)
        if stage == "student":
            sim = self.student_stage(ctx)
            i = sim.term.teacher_index
            tcfg = cfg.teachers[i]
            teacher = ctx.build_model("teachers", {k: v for k, v in tcfg.items() if k != "pretrained"}, num_classes,
                                      seed_tag=names[i])
            model = sim.build_student(num_classes, teacher, test)
        elif stage in names:
            tcfg = cfg.teachers[names.index(stage)]
            model = ctx.build_model("teachers", {k: v for k, v in tcfg.items() if k != "pretrained"}, num_classes,
                                    seed_tag=stage)
        else:
            model = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
        ctx.load_best(stage, model)
        return model.eval()

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: the best checkpoint of every trained stage on the test split — the student
        through the teacher's classifier it carries."""
        _, _, test, classes = ctx.classification_data()
        out: dict = {"teachers": {}}
        for sname in self.teacher_stage_names(ctx.config.teachers):
            if (ctx.run_dir / "checkpoints" / sname / "best.pt").exists():
                out["teachers"][sname] = ctx.evaluate(self.stage_model(ctx, sname, len(classes), test), test)
        for sname in ["student"] + (["baseline"] if ctx.config.baseline.enabled else []):
            out[sname] = ctx.evaluate(self.stage_model(ctx, sname, len(classes), test), test)
        return out


# --------------------------------------------------------------------------------------------- CAT-KD

def _class_weights(module: nn.Module, who: str, path: str) -> torch.Tensor:
    """A classifier's ``classes x channels`` weight (a linear layer's, or a 1x1 convolution's)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1):
        weight = weight.flatten(1)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        got = "no weight" if not isinstance(weight, torch.Tensor) else f"a weight of shape {_shape(weight)}"
        raise kdkit.ConfigError(f"loss catkd: the {who}'s classifier {path!r} ({type(module).__name__}) has {got}; "
                                "expected a linear classifier (classes x channels) or a 1x1 convolution")
    return weight


def class_activation_maps(feature: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``B x K x H x W`` class activation maps: the classifier's ``K x C`` weight as a 1x1
    convolution without bias over the ``B x C x H x W`` feature map (CAT-KD's ``conv_test``)."""
    return torch.einsum("kc,bchw->bkhw", weight, feature)


class CATKDLoss:
    """Class attention transfer (Guo et al., "Class Attention Transfer Based Knowledge
    Distillation", CVPR 2023; GzyAftermath/CAT-KD), registered as ``catkd``.

    The class activation maps of student and teacher — each model's classifier weights ``W`` (``K x
    C``) as a 1x1 convolution without bias over its own last feature map, ``CAM[b, k] = sum_c W[k,
    c] f[b, c]`` — are adaptive-average-pooled to ``cam_resolution x cam_resolution`` and compared::

        catkd = mse( N(pool(CAM_s)), N(pool(CAM_t)) )

    ``N`` is the L2 normalisation of each map over its positions when ``normalize`` is on (the
    identity otherwise); with ``binarize`` the teacher's maps are first replaced by 1 where they
    exceed their mean absolute value and 0 elsewhere (the reference's ``IF_BINARIZE``).  The
    student's CAMs carry gradients to its feature map **and its classifier weights**; the teacher's
    are detached.

    Options (defaults: GzyAftermath/CAT-KD ``configs/cifar100/CAT_KD/res32x4_res8x4.yaml`` and
    ``mdistiller/engine/cfg.py``):

    :param cam_resolution: ``2`` (``CAM_RESOLUTION: 2`` in every config).
    :param normalize: ``False`` (``IF_NORMALIZE: False`` in every CAT-KD config; ``cfg.py``'s default
        ``True`` is used by its CAT-only configs).
    :param binarize: ``False`` (``IF_BINARIZE``, ``cfg.py``; the CAT-binarisation experiment sets it).
    :param student_classifier: the student's classifier path, ``classifier`` (kdkit's models).
    :param teacher_classifier: the teacher's classifier path, ``classifier``.

    Not implemented: ``IF_OnlyTransferPartialCAMs`` (transfer only the top / bottom classes' CAMs, an
    ablation; off by default).  The reference trains its student as a bias-free 1x1 convolution
    followed by pooling (``ResNet_test``, so its logits have no bias); kdkit's student keeps its
    linear classifier, whose weight gives its CAMs and whose bias (a constant per class over
    positions) is left out of them.
    """

    name = "catkd"

    def __init__(self, cam_resolution: int = 2, normalize: bool = False, binarize: bool = False,
                 student_classifier: str = "classifier", teacher_classifier: str = "classifier"):
        if int(cam_resolution) != cam_resolution or int(cam_resolution) < 1:
            raise kdkit.ConfigError(f"loss catkd: option cam_resolution must be a positive integer, got "
                                    f"{cam_resolution!r}")
        for key, value in (("student_classifier", student_classifier), ("teacher_classifier", teacher_classifier)):
            if not isinstance(value, str):
                raise kdkit.ConfigError(f"loss catkd: option {key} must be a module path such as classifier or fc, "
                                        f"got {value!r}")
        self.cam_resolution = int(cam_resolution)
        self.normalize = bool(normalize)
        self.binarize = bool(binarize)
        self.student_classifier = student_classifier
        self.teacher_classifier = teacher_classifier

    def __call__(self, inputs) -> torch.Tensor:
        s, t, where = _one_pair(inputs, "catkd", "{loss: catkd, student: layer3, teacher: layer3}")
        if s.dim() != 4 or t.dim() != 4:
            raise kdkit.ConfigError(f"loss catkd: student feature {_shape(s)} and teacher feature {_shape(t)}{where}: "
                                    "expected two B x C x H x W maps (the last stage, e.g. layer3, whose pooled "
                                    "output the classifier takes)")
        w_s = _class_weights(inputs.student_module(self.student_classifier, loss="catkd"), "student",
                             self.student_classifier)
        w_t = _class_weights(inputs.teacher_module(self.teacher_classifier, loss="catkd"), "teacher",
                             self.teacher_classifier).detach()
        for who, w, f in (("student", w_s, s), ("teacher", w_t, t)):
            if w.shape[1] != f.shape[1]:
                raise kdkit.ConfigError(f"loss catkd: the {who}'s classifier takes {w.shape[1]} channels but its "
                                        f"feature {_shape(f)} has {f.shape[1]}; tap the map the classifier's pooled "
                                        "input comes from")
        if w_s.shape[0] != w_t.shape[0]:
            raise kdkit.ConfigError(f"loss catkd: the student's classifier has {w_s.shape[0]} classes, the "
                                    f"teacher's {w_t.shape[0]}")
        size = (self.cam_resolution, self.cam_resolution)
        with _no_autocast(s.device):
            cam_s = class_activation_maps(s, w_s.float())
            cam_t = class_activation_maps(t, w_t.float())
            if self.binarize:
                threshold = cam_t.abs().mean((2, 3), keepdim=True)
                cam_t = (cam_t > threshold).float()
            cam_s, cam_t = F.adaptive_avg_pool2d(cam_s, size), F.adaptive_avg_pool2d(cam_t, size)
            if self.normalize:
                cam_s, cam_t = F.normalize(cam_s, dim=(2, 3)), F.normalize(cam_t, dim=(2, 3))
            return F.mse_loss(cam_s, cam_t)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"CATKDLoss({options})"
