"""The methods of kdkit_methods that use a classifier: SRRL (srrl), SimKD (simkd, SimKDMethod) and CAT-KD (catkd).

Each loss is checked, value and gradient, against an independent re-derivation written here from the
paper and the reference code (float64, plain loops over classes and channels, BatchNorm by its
formula), on random inputs of several shapes; the teacher's classifier gets no gradient and does not
change; the defaults are the reference configuration's; bad taps are one-line errors.  SimKD's method
runs end to end, resumes exactly after an interruption, and its student predicts — in training,
evaluation, ``kdkit eval`` and its checkpoint — through the teacher's classifier.
"""
from __future__ import annotations

import json

import pytest
import torch
from kdkit_methods.classifier_reuse import (
    CATKDLoss,
    SimKDLoss,
    SimKDMethod,
    SimKDStudent,
    SRRLLoss,
    build_simkd_student,
)
from methods_harness import INTERRUPT, TINY, Interrupt, methods_plugin_manager

import kdkit
from kdkit.distill import DistillInputs

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def randn(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return x.requires_grad_(grad)


def build(name, **options):
    return kdkit.get_registry("losses").build(name, **options)


class Net(torch.nn.Module):
    """Stands for a CIFAR ResNet: a feature map ``layer3`` and a linear ``classifier`` on its pooled vector."""

    def __init__(self, channels=6, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer3 = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.classifier = torch.nn.Linear(channels, classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.layer3(x)).mean((2, 3)))


def frozen(model):
    return kdkit.freeze(model)


def one_line_error(fn, *match):
    with pytest.raises(kdkit.ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for m in match:
        assert m in message, message
    return message


def test_the_registry_builds_the_three_losses_and_the_method():
    assert isinstance(build("srrl"), SRRLLoss)
    assert isinstance(build("simkd"), SimKDLoss)
    assert isinstance(build("catkd"), CATKDLoss)
    assert kdkit.get_registry("methods").get("simkd").target == "kdkit_methods.classifier_reuse:SimKDMethod"


# ============================================================================================== SRRL

def _batchnorm_train(x, gamma, beta, eps=1e-5):
    """BatchNorm2d in training mode by its formula: per channel, the batch mean and biased variance."""
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        values = x[:, c]
        mean = values.mean()
        var = ((values - mean) ** 2).mean()
        out[:, c] = (values - mean) / torch.sqrt(var + eps) * gamma[c] + beta[c]
    return out


def _srrl_reference(s, t, teacher_logits, conv_w, gamma, beta, fc_w, fc_b, alpha, beta_weight):
    """SRRL from the authors' code in float64: connector (1x1 conv, BN, ReLU) on the student map,
    statm_loss (the spatial means' squared difference, averaged) + MSE of the teacher's fc on the
    pooled connected feature vs the teacher's logits."""
    s = s.double()
    if s.dim() == 2:
        s = s[:, :, None, None]
    b, _, h, w = s.shape
    c_t = conv_w.shape[0]
    conv = torch.zeros(b, c_t, h, w, dtype=torch.float64)
    for o in range(c_t):  # a 1x1 convolution: every output channel a weighted sum of the input channels
        for i in range(s.shape[1]):
            conv[:, o] += conv_w[o, i, 0, 0].double() * s[:, i]
    connected = _batchnorm_train(conv, gamma.double(), beta.double()).clamp_min(0)
    pooled = connected.reshape(b, c_t, -1).mean(2)
    t_mean = t.double().reshape(b, t.shape[1], -1).mean(2)
    statm = ((pooled - t_mean) ** 2).mean(1).mean()
    regressed = pooled @ fc_w.double().T + fc_b.double()
    sr = ((regressed - teacher_logits.double()) ** 2).mean()
    return alpha * statm + beta_weight * sr


@pytest.mark.parametrize("s_shape, t_shape, alpha, beta", [
    ((4, 3, 4, 4), (4, 6, 4, 4), 1.0, 1.0),   # same resolution
    ((3, 5, 8, 8), (3, 4, 4, 4), 0.5, 2.0),   # student map larger than the teacher's (both are pooled)
    ((5, 7), (5, 6), 1.0, 1.0),               # pooled vectors (SimKD's CIFAR version: tap pool)
    ((2, 4, 2, 3), (2, 6), 1.0, 3.0),         # a map against the teacher's pooled vector
])
def test_srrl_value_and_gradient_match_the_references_formula(s_shape, t_shape, alpha, beta):
    teacher = frozen(Net(channels=t_shape[1], classes=5, seed=1))
    s, t = randn(*s_shape, seed=2, grad=True), randn(*t_shape, seed=3)
    logits = randn(s_shape[0], 5, seed=4)
    loss = SRRLLoss(alpha=alpha, beta=beta)
    inputs = DistillInputs(torch.zeros(s_shape[0], 5), teacher_logits=logits, teacher_index=0, student_feature=s,
                           teacher_feature=t, teacher_models=(teacher,))
    value = loss(inputs)
    value.backward()
    conv, bn = loss.connector[0], loss.connector[1]
    s64 = s.detach().double().requires_grad_(True)
    expected = _srrl_reference(s64, t, logits, conv.weight.detach(), bn.weight.detach(), bn.bias.detach(),
                               teacher.classifier.weight, teacher.classifier.bias, alpha, beta)
    expected.backward()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    assert conv.weight.grad is not None and bn.weight.grad is not None  # the connector trains with the student


def test_srrl_never_trains_or_changes_the_teachers_classifier():
    teacher = frozen(Net(channels=6, seed=1))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = randn(4, 3, 4, 4, seed=2, grad=True)
    loss = SRRLLoss()
    inputs = DistillInputs(torch.zeros(4, 5), teacher_logits=randn(4, 5, seed=4), teacher_index=0,
                           student_feature=s, teacher_feature=randn(4, 6, 4, 4, seed=3), teacher_models=(teacher,))
    loss(inputs).backward()
    assert all(p.grad is None for p in teacher.parameters())
    torch.optim.SGD([s, *loss.parameters()], lr=1.0).step()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # even a teacher whose requires_grad is on is applied with its weights detached
    thawed = Net(channels=6, seed=1)
    loss(DistillInputs(torch.zeros(4, 5), teacher_logits=randn(4, 5, seed=4), teacher_index=0,
                       student_feature=s, teacher_feature=randn(4, 6, 4, 4, seed=3), teacher_models=(thawed,))).backward()
    assert all(p.grad is None for p in thawed.parameters()) and s.grad.abs().sum() > 0


def test_srrl_connector_is_the_authors_transfer_conv_built_in_the_losss_mode():
    """1x1 conv without bias (normal, std sqrt(2 / C_t)), BN (1, 0), ReLU; built inside Distiller.materialize
    (eval mode) it does not absorb the set-up batch into its BatchNorm statistics."""
    from kdkit.distill import Distiller, TeacherCombiner, TermSpec

    torch.manual_seed(0)
    loss = SRRLLoss()
    spec = TermSpec("srrl", 1.0, "srrl", student="layer3", teacher="layer3")
    distiller = Distiller([spec], [loss], TeacherCombiner("avg_logits", 1), ce_weight=1.0, temperature=4.0)
    teacher = frozen(Net(channels=256, seed=1))
    distiller.materialize(torch.randn(8, 5), [torch.randn(8, 5)], torch.zeros(8, dtype=torch.long),
                          student_features={"layer3": torch.randn(8, 64, 2, 2)},
                          teacher_features=[{"layer3": torch.randn(8, 256, 2, 2)}], teacher_models=[teacher])
    conv, bn, relu = loss.connector
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert abs(float(conv.weight.std()) - (2.0 / 256) ** 0.5) < 0.1 * (2.0 / 256) ** 0.5
    assert torch.equal(bn.weight, torch.ones(256)) and torch.equal(bn.bias, torch.zeros(256))
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(256))
    assert loss.connector.training  # back in training mode with the distiller


def test_srrl_bad_inputs_are_one_line_errors():
    teacher = frozen(Net(channels=6, seed=1))

    def call(s, t, logits=None, models=(teacher,), **options):
        return SRRLLoss(**options)(DistillInputs(torch.zeros(2, 5), teacher_logits=logits, teacher_index=0,
                                                 student_feature=s, teacher_feature=t, teacher_models=models))

    map_s, map_t, logits = randn(2, 3, 4, 4), randn(2, 6, 4, 4), randn(2, 5)
    one_line_error(lambda: call([map_s, map_s], [map_t, map_t], logits), "loss srrl: 2 (student, teacher) feature pairs")
    one_line_error(lambda: call(randn(2, 3, 4), map_t, logits), "loss srrl: the student feature has shape (2, 3, 4)")
    one_line_error(lambda: call(map_s, map_t), "loss srrl needs the teacher's logits")
    one_line_error(lambda: call(map_s, map_t, logits, teacher_classifier="fc"),
                   "loss srrl: teacher 0 (Net) has no module 'fc'; nearest valid paths:")
    one_line_error(lambda: call(map_s, map_t, logits, models=(None,)), "that teacher is not a network")
    one_line_error(lambda: call(map_s, randn(2, 4, 4, 4), logits),
                   "loss srrl: the teacher's classifier 'classifier' cannot take the connected student feature (2, 4)")
    one_line_error(lambda: call(map_s, map_t, randn(2, 7)), "gives (2, 5) but the teacher's logits are (2, 7)")
    one_line_error(lambda: call(None, map_t, logits), "loss srrl needs a student feature")


# ============================================================================================= SimKD

@pytest.mark.parametrize("s_shape, t_shape", [((3, 6, 4, 4), (3, 6, 4, 4)), ((2, 5, 2, 2), (2, 5, 4, 4)),
                                              ((4, 3, 1, 3), (4, 3, 1, 3))])
def test_simkd_loss_is_the_mse_of_projected_student_and_teacher_maps(s_shape, t_shape):
    s, t = randn(*s_shape, seed=1, grad=True), randn(*t_shape, seed=2)
    value = SimKDLoss()(DistillInputs(torch.zeros(1, 1), student_feature=s, teacher_feature=t))
    value.backward()
    # the teacher's map average-pooled (by hand, block means) down to the student's
    kh, kw = t_shape[2] // s_shape[2], t_shape[3] // s_shape[3]
    target = t.double().reshape(*t_shape[:2], s_shape[2], kh, s_shape[3], kw).mean((3, 5))
    s64 = s.detach().double().requires_grad_(True)
    total = 0.0
    for b in range(s_shape[0]):
        for c in range(s_shape[1]):
            total = total + ((s64[b, c] - target[b, c]) ** 2).sum()
    expected = total / s64.numel()
    expected.backward()
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-8)


def test_simkd_loss_bad_taps_are_one_line_errors():
    def call(s, t):
        return SimKDLoss()(DistillInputs(torch.zeros(1, 1), student_feature=s, teacher_feature=t))

    one_line_error(lambda: call(randn(2, 4, 2, 2), randn(2, 6, 2, 2)), "differ in channels; tap the SimKD student's "
                                                                      "projector")
    one_line_error(lambda: call(randn(2, 4), randn(2, 4)), "loss simkd: student feature (2, 4)",
                   "expected two B x C x H x W maps")
    one_line_error(lambda: call([randn(2, 4, 2, 2)] * 2, [randn(2, 4, 2, 2)] * 2), "2 (student, teacher) feature pairs")
    one_line_error(lambda: call(None, randn(2, 4, 2, 2)), "loss simkd needs a student feature",
                   "{loss: simkd, student: projector, teacher: layer3}")


def test_simkd_student_is_backbone_projector_and_the_teachers_frozen_classifier():
    student, teacher = Net(channels=4, seed=0), frozen(Net(channels=8, seed=1))
    torch.manual_seed(3)
    wrapper = build_simkd_student(student, teacher, torch.zeros(1, 3, 6, 6), student_feature="layer3",
                                  teacher_feature="layer3", teacher_classifier="classifier",
                                  student_classifier="classifier", factor=2)
    # the reference's bottleneck: 1x1 (4 -> 4), 3x3 (4 -> 4), 1x1 (4 -> 8), each with BN and ReLU, no biases
    convs = [m for m in wrapper.projector if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(4, 4, 1, 1), (4, 4, 3, 3), (8, 4, 1, 1)]
    assert all(c.bias is None for c in convs) and sum(isinstance(m, torch.nn.BatchNorm2d) for m in wrapper.projector) == 3
    # its classifier is a frozen copy of the teacher's (the student's own is frozen: unused)
    assert wrapper.classifier is not teacher.classifier
    assert torch.equal(wrapper.classifier.weight, teacher.classifier.weight)
    assert not any(p.requires_grad for p in wrapper.classifier.parameters())
    assert not any(p.requires_grad for p in student.classifier.parameters())
    wrapper.train()
    assert wrapper.projector.training and not wrapper.classifier.training
    x = randn(2, 3, 6, 6, seed=5)
    wrapper.eval()
    with torch.no_grad():
        feature = student.layer3(x)  # the tapped module's output (this Net applies its ReLU after it)
        expected = teacher.classifier(wrapper.projector(feature).mean((2, 3)))
        torch.testing.assert_close(wrapper(x), expected)
    assert not any(k.startswith("_") for k in wrapper.state_dict())
    assert {k.split(".")[0] for k in wrapper.state_dict()} == {"backbone", "projector", "classifier"}


def test_simkd_student_pools_a_larger_student_map_to_the_teachers_size_first():
    class Strided(Net):
        def __init__(self):
            super().__init__(channels=8, seed=1)
            self.layer3 = torch.nn.Conv2d(3, 8, 3, padding=1, stride=2)

    student, teacher = Net(channels=4, seed=0), frozen(Strided())
    wrapper = build_simkd_student(student, teacher, torch.zeros(1, 3, 8, 8), student_feature="layer3",
                                  teacher_feature="layer3", teacher_classifier="classifier")
    assert wrapper.source_size == (4, 4)
    assert tuple(wrapper.eval().features(torch.zeros(2, 3, 8, 8)).shape) == (2, 8, 4, 4)


def test_simkd_student_bad_paths_are_one_line_errors():
    student, teacher = Net(channels=4, seed=0), frozen(Net(channels=8, seed=1))

    def wrap(**kw):
        options = {"student_feature": "layer3", "teacher_feature": "layer3", "teacher_classifier": "classifier"}
        options.update(kw)
        return build_simkd_student(student, teacher, torch.zeros(1, 3, 6, 6), **options)

    one_line_error(lambda: wrap(student_feature="layer9"), "student (Net) has no module 'layer9'")
    one_line_error(lambda: wrap(teacher_classifier="fc"), "teacher 0 (Net) has no module 'fc'")
    one_line_error(lambda: wrap(student_feature="classifier"), "simkd: student's classifier gave shape (1, 5)",
                   "SimKD needs a B x C x H x W feature map there")
    one_line_error(lambda: wrap(teacher_classifier="layer3"), "simkd: the teacher's classifier 'layer3' cannot take")


# ============================================================================================ CAT-KD

def _catkd_reference(s, t, w_s, w_t, resolution, normalize, binarize):
    """CAT-KD from the reference's CAT_KD.py in float64: CAMs as 1x1 convolutions (loops over classes
    and channels), binarisation at the mean |CAM|, block-mean pooling, L2 normalisation over positions."""
    def cams(f, w):
        out = torch.zeros(f.shape[0], w.shape[0], *f.shape[2:], dtype=torch.float64)
        for k in range(w.shape[0]):
            for c in range(w.shape[1]):
                out[:, k] += w[k, c] * f[:, c]
        return out

    def pool(x):
        b, k, h, w = x.shape
        return x.reshape(b, k, resolution, h // resolution, resolution, w // resolution).mean((3, 5))

    cam_s, cam_t = cams(s, w_s), cams(t, w_t)
    if binarize:
        threshold = cam_t.abs().sum((2, 3), keepdim=True) / (cam_t.shape[2] * cam_t.shape[3])
        cam_t = torch.where(cam_t - threshold > 0, 1.0, 0.0).double()
    cam_s, cam_t = pool(cam_s), pool(cam_t)
    if normalize:  # F.normalize's norm floor 1e-12: an all-zero (binarised) map stays zero
        cam_s = cam_s / cam_s.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        cam_t = cam_t / cam_t.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    return ((cam_s - cam_t) ** 2).mean()


@pytest.mark.parametrize("s_shape, t_shape, resolution, normalize, binarize", [
    ((3, 4, 4, 4), (3, 6, 4, 4), 2, False, False),   # the CAT-KD configs' defaults
    ((2, 5, 8, 8), (2, 3, 4, 4), 2, True, False),    # different resolutions, normalised
    ((4, 4, 4, 4), (4, 4, 4, 4), 2, True, True),     # binarised teacher CAMs (the CAT_Binarization config)
    ((2, 3, 6, 6), (2, 6, 6, 6), 3, False, True),
    ((2, 4, 4, 4), (2, 5, 4, 4), 1, False, False),   # one pooled value per class
])
def test_catkd_value_and_gradient_match_the_references_formula(s_shape, t_shape, resolution, normalize, binarize):
    student, teacher = Net(channels=s_shape[1], classes=5, seed=0), frozen(Net(channels=t_shape[1], classes=5, seed=1))
    s, t = randn(*s_shape, seed=2, grad=True), randn(*t_shape, seed=3)
    loss = CATKDLoss(cam_resolution=resolution, normalize=normalize, binarize=binarize)
    value = loss(DistillInputs(torch.zeros(2, 5), teacher_index=0, student_feature=s, teacher_feature=t,
                               student_model=student, teacher_models=(teacher,)))
    value.backward()
    s64 = s.detach().double().requires_grad_(True)
    w64 = student.classifier.weight.detach().double().requires_grad_(True)
    expected = _catkd_reference(s64, t.double(), w64, teacher.classifier.weight.double(), resolution, normalize,
                                binarize)
    expected.backward()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-8)
    # the student's classifier weights train through its CAMs (the reference's conv_test); the teacher's never
    torch.testing.assert_close(student.classifier.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-8)
    assert student.classifier.bias.grad is None and all(p.grad is None for p in teacher.parameters())


def test_catkd_accepts_a_1x1_convolution_classifier():
    class ConvHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(4, 5, 1, bias=False)

    student, teacher = Net(channels=4, classes=5, seed=0), frozen(ConvHead())
    s, t = randn(2, 4, 4, 4, seed=2), randn(2, 4, 4, 4, seed=3)
    value = CATKDLoss(teacher_classifier="head")(DistillInputs(
        torch.zeros(2, 5), teacher_index=0, student_feature=s, teacher_feature=t, student_model=student,
        teacher_models=(teacher,)))
    expected = _catkd_reference(s.double(), t.double(), student.classifier.weight.detach().double(),
                                teacher.head.weight[:, :, 0, 0].double(), 2, False, False)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)


def test_catkd_bad_inputs_are_one_line_errors():
    student, teacher = Net(channels=4, classes=5, seed=0), frozen(Net(channels=6, classes=5, seed=1))

    def call(s, t, teacher_model=teacher, **options):
        return CATKDLoss(**options)(DistillInputs(torch.zeros(2, 5), teacher_index=0, student_feature=s,
                                                  teacher_feature=t, student_model=student,
                                                  teacher_models=(teacher_model,)))

    s, t = randn(2, 4, 4, 4), randn(2, 6, 4, 4)
    one_line_error(lambda: call(randn(2, 4), randn(2, 6)), "loss catkd: student feature (2, 4)",
                   "expected two B x C x H x W maps")
    one_line_error(lambda: call(randn(2, 3, 4, 4), t), "the student's classifier takes 4 channels but its feature "
                                                       "(2, 3, 4, 4) has 3")
    one_line_error(lambda: call(s, t, student_classifier="fc"), "loss catkd: student (Net) has no module 'fc'")
    one_line_error(lambda: call(s, t, teacher_classifier="layer3"),
                   "the teacher's classifier 'layer3' (Conv2d) has a weight of shape (6, 3, 3, 3)")
    one_line_error(lambda: call(s, t, teacher_model=frozen(Net(channels=6, classes=7))),
                   "the student's classifier has 5 classes, the teacher's 7")
    one_line_error(lambda: call(s, t, teacher_model=None), "that teacher is not a network")
    one_line_error(lambda: CATKDLoss(cam_resolution=0), "option cam_resolution must be a positive integer")


# ===================================================================================== the defaults

def _preset(name):
    from kdkit_methods.presets import PRESETS

    return next(p for p in PRESETS if p.name == name)


def test_srrl_defaults_are_the_authors():
    (term,) = _preset("srrl").terms
    # jingyang2017/KD_SRRL train_imagenet_distillation.py: loss = loss_ce + (loss_stat + mse(pred_sc, pred_t)) * 1
    assert _preset("srrl").alpha == 1.0 and term["weight"] == 1.0
    assert term["options"] == {"alpha": 1.0, "beta": 1.0}
    loss = SRRLLoss()
    assert (loss.alpha, loss.beta, loss.teacher_classifier) == (1.0, 1.0, "classifier")
    # the authors tap the last stage's map (layer4 of their ImageNet ResNets: `fea` before avgpool); the
    # teacher's map enters only through its spatial mean, which kdkit's `pool` is
    assert (term["student"], term["teacher"]) == ("layer3", "pool")


def test_srrl_with_the_teachers_pooled_feature_equals_srrl_with_its_map():
    teacher = frozen(Net(channels=6, seed=1))
    s, t, logits = randn(4, 3, 4, 4, seed=2), randn(4, 6, 4, 4, seed=3), randn(4, 5, seed=4)
    values = []
    for feature in (t, t.mean((2, 3))):
        torch.manual_seed(0)
        values.append(SRRLLoss()(DistillInputs(torch.zeros(4, 5), teacher_logits=logits, teacher_index=0,
                                               student_feature=s, teacher_feature=feature, teacher_models=(teacher,))))
    torch.testing.assert_close(values[0], values[1])


def test_catkd_defaults_are_the_reference_configs():
    preset = _preset("catkd")
    (term,) = preset.terms
    # GzyAftermath/CAT-KD configs/cifar100/CAT_KD/res32x4_res8x4.yaml: CAT_loss_weight 15, CE_WEIGHT 1,
    # CAM_RESOLUTION 2, onlyCAT False (CE kept), IF_NORMALIZE False; mdistiller/engine/cfg.py: IF_BINARIZE False
    assert term["weight"] == 15.0 and preset.alpha == 1.0
    assert term["options"] == {"cam_resolution": 2, "normalize": False, "binarize": False}
    loss = CATKDLoss()
    assert (loss.cam_resolution, loss.normalize, loss.binarize) == (2, False, False)
    # the CAMs come from the last feature map (feature_student["feats"][-1]): layer3 of kdkit's CIFAR ResNets
    assert term["student"] == term["teacher"] == "layer3"


def test_simkd_defaults_are_the_references():
    config = SimKDMethod.default_config()
    distill = {k: v.default if hasattr(v, "default") else v for k, v in config["distill"].items()}
    # DefangChen/SimKD scripts/run_distill.sh: --distill simkd -c 0 -d 0 -b 1 (no CE, no KL, MSE weight 1)
    assert distill["alpha"] == 0.0
    assert distill["terms"] == [{"loss": "simkd", "weight": 1.0, "student": "projector", "teacher": "layer3",
                                 "options": {}}]
    simkd = {k: v.default for k, v in config["simkd"].items()}
    # train_student.py: -f/--factor 2; the projector takes feat_s[-2] (the last map, before pooling)
    assert simkd == {"student_feature": "layer3", "student_classifier": "classifier",
                     "teacher_classifier": "classifier", "factor": 2}


# ================================================================== SimKD's method, end to end

@pytest.fixture
def methods_manager():
    with methods_plugin_manager() as pm:
        yield pm


def test_simkd_runs_end_to_end_resumes_exactly_and_predicts_through_the_teachers_classifier(tmp_path,
                                                                                           methods_manager):
    from kdkit.engine import evaluate_run, train

    summary = train("simkd", sets=TINY, out=tmp_path / "ref", manager=methods_manager)
    assert summary["method"] == "simkd" and summary["distill"]["alpha"] == 0.0
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    student_lines = [x for x in lines if x["stage"] == "student" and "train.simkd" in x]
    assert len(student_lines) == 2
    assert all(x["train.loss"] == pytest.approx(x["train.simkd"]) for x in student_lines)  # CE weight 0

    # the student's checkpoint is the deployed model: backbone, projector and the teacher's classifier,
    # which is exactly the trained teacher's
    best = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "best.pt", weights_only=True)["model"]
    teacher = torch.load(tmp_path / "ref" / "checkpoints" / "teacher.resnet8" / "best.pt", weights_only=True)["model"]
    assert {k.split(".")[0] for k in best} == {"backbone", "projector", "classifier"}
    assert torch.equal(best["classifier.weight"], teacher["classifier.weight"])
    assert torch.equal(best["classifier.bias"], teacher["classifier.bias"])

    # its test top-1 is computed through that classifier: rebuild backbone + projector by hand from the
    # checkpoint and apply the teacher's own classifier weights
    from kdkit.engine import open_run

    ctx, method = open_run(tmp_path / "ref", manager=methods_manager, device="cpu")
    test = ctx.build_dataset(None, "test")
    net = ctx.build_model("students", ctx.config.student, 10, seed_tag="student")
    net.load_state_dict({k[len("backbone."):]: v for k, v in best.items() if k.startswith("backbone.")})
    projector = method.stage_model(ctx, "student", 10, test).projector
    net.eval()
    correct = 0
    with torch.no_grad():
        features = {}
        handle = net.layer3.register_forward_hook(lambda m, a, out: features.update(f=out))
        for x, y in torch.utils.data.DataLoader(test, batch_size=16):
            net(x)
            pooled = projector(features["f"]).mean((2, 3))
            logits = pooled @ teacher["classifier.weight"].T + teacher["classifier.bias"]
            correct += int((logits.argmax(1) == y).sum())
        handle.remove()
    assert summary["student"]["top1"] == pytest.approx(100.0 * correct / len(test))
    assert isinstance(method.stage_model(ctx, "student", 10, test), SimKDStudent)
    # kdkit eval rebuilds the same wrapper
    evaluated = evaluate_run(tmp_path / "ref", manager=methods_manager)
    assert evaluated["student"]["top1"] == pytest.approx(summary["student"]["top1"])

    # killed in the student stage's second epoch, resumed: the same summary and the same weights
    INTERRUPT.at, INTERRUPT.seen = 2, 0
    try:
        with pytest.raises(Interrupt):
            train("simkd", sets=TINY, out=tmp_path / "run", manager=methods_manager)
    finally:
        INTERRUPT.at = None
    train(resume=tmp_path / "run", manager=methods_manager)
    assert (tmp_path / "run" / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()
    ref_last = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "last.pt", weights_only=True)["model"]
    run_last = torch.load(tmp_path / "run" / "checkpoints" / "student" / "last.pt", weights_only=True)["model"]
    assert ref_last.keys() == run_last.keys() and all(torch.equal(ref_last[k], run_last[k]) for k in ref_last)


def test_simkd_wrong_paths_fail_before_any_teacher_trains(tmp_path, methods_manager):
    from kdkit.engine import train

    for sets, match in [(["simkd.student_feature=layer9"], "student (CifarResNet) has no module 'layer9'"),
                        (["simkd.teacher_classifier=fc"], "teacher 0 (CifarResNet) has no module 'fc'"),
                        (["distill.terms.0.teacher=layer9"], "teacher 0 (CifarResNet) has no module 'layer9'"),
                        (["distill.terms.0.student=projectr"], "student (SimKDStudent) has no module 'projectr'")]:
        with pytest.raises(kdkit.ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")) as err:
            train("simkd", sets=[*TINY, *sets], out=tmp_path / "run", manager=methods_manager)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "run" / "checkpoints").exists()
