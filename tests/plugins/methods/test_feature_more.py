"""The losses of kdkit_methods.feature_more: ab, fsp, ft, cc and mgd.

Each value and its gradient (to the student features) is checked against an independent
re-derivation written here from the paper's formula and the reference code's behaviour — float64,
plain loops over samples, channels and positions, other tensor operations — on random inputs of
several shapes; the defaults against the reference configurations (each value with the reference
file it comes from); bad shapes and options against their one-line ConfigError; the lazily built
modules against the set-up call (eval mode: BatchNorm statistics untouched).
"""
from __future__ import annotations

import copy
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import kdkit
from kdkit.distill import (
    Distiller,
    DistillInputs,
    TeacherCombiner,
    TermSpec,
    build_term_loss,
)

try:
    import kdkit_methods  # noqa: F401
except ImportError:  # the editable install predates plugins/kdkit_methods
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))

from kdkit_methods import LOSSES
from kdkit_methods.feature_more import (
    ABLoss,
    CCLoss,
    FSPLoss,
    FTLoss,
    MGDLoss,
    Paraphraser,
    Translator,
)
from kdkit_methods.init_stage import INIT_METHODS
from kdkit_methods.presets import PRESETS

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

STAGES = ["layer1", "layer2", "layer3"]


def build(name, **options):
    return kdkit.get_registry("losses").build(name, **options)


def inputs(student, teacher):
    return DistillInputs(student_logits=torch.zeros(2, 3), student_feature=student, teacher_feature=teacher)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def leaf(x):
    """A float32 leaf copy of ``x`` that collects a gradient."""
    return x.detach().float().clone().requires_grad_(True)


def grad_of(value, x):
    (g,) = torch.autograd.grad(value, x)
    return g


def one_line_error(fn, *match):
    with pytest.raises(kdkit.ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for m in match:
        assert m in message, message
    return message


def close(a, b, rtol=1e-4, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=rtol, atol=atol)


def test_the_registry_builds_the_five_classes():
    assert isinstance(build("ab"), ABLoss)
    assert isinstance(build("fsp"), FSPLoss)
    assert isinstance(build("ft"), FTLoss)
    assert isinstance(build("cc"), CCLoss)
    assert isinstance(build("mgd"), MGDLoss)


# =============================================================================================== AB
# Heo et al., AAAI 2019.  Reference: RepDistiller distiller_zoo/AB.py (ABLoss: w = 2^(i - n + 1),
# criterion_alternative_l2 summed, / bsz, / 1000 * 3) with models/util.py Connector.

def reference_ab(students, teachers, margin=1.0):
    """float64 loops: for every element, the hinge the reference's two masks select."""
    n, total = len(students), 0.0
    for i, (s, t) in enumerate(zip(students, teachers)):
        w = 2.0 ** (i - n + 1)
        layer = 0.0
        for sv, tv in zip(s.double().flatten().tolist(), t.double().flatten().tolist()):
            if tv <= 0 and sv > -margin:
                layer += (sv + margin) ** 2
            elif tv > 0 and sv <= margin:
                layer += (sv - margin) ** 2
        total += w * layer / s.shape[0] * 3 / 1000
    return total


AB_CASES = [  # (student shapes, teacher shapes): identity connectors (RepDistiller: same C and H)
    [(2, 3, 4, 4)],
    [(3, 2, 5, 5), (3, 4, 3, 3)],
    [(2, 2, 6, 6), (2, 3, 4, 4), (2, 4, 2, 2)],
]


@pytest.mark.parametrize("shapes", AB_CASES)
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_the_hinge_loop_and_its_gradient(shapes, margin):
    students = [randn(*s, seed=10 + i) for i, s in enumerate(shapes)]
    teachers = [randn(*s, seed=20 + i) for i, s in enumerate(shapes)]
    s_leaves = [leaf(s) for s in students]
    loss = build("ab", margin=margin)
    value = loss(inputs(s_leaves if len(shapes) > 1 else s_leaves[0],
                        [t.float() for t in teachers] if len(shapes) > 1 else teachers[0].float()))
    close(value, reference_ab(students, teachers, margin))
    # gradient of the reference: 2 (s + m) where the first mask holds, 2 (s - m) where the second does
    grads = torch.autograd.grad(value, s_leaves)
    n = len(shapes)
    for i, (s, t, g) in enumerate(zip(students, teachers, grads)):
        scale = 2.0 ** (i - n + 1) / s.shape[0] * 3 / 1000
        expected = torch.zeros_like(s)
        for idx in itertools.product(*map(range, s.shape)):
            sv, tv = float(s[idx]), float(t[idx])
            if tv <= 0 and sv > -margin:
                expected[idx] = 2 * (sv + margin) * scale
            elif tv > 0 and sv <= margin:
                expected[idx] = 2 * (sv - margin) * scale
        close(g, expected)
    assert all(isinstance(c, nn.Identity) for c in loss.connectors)


def test_ab_post_relu_teacher_gives_the_pre_activation_s_loss():
    """Only the teacher's sign matters: relu(t) > 0 exactly when t > 0."""
    s, t = randn(2, 3, 4, 4, seed=1), randn(2, 3, 4, 4, seed=2)
    loss = build("ab")
    close(loss(inputs(s.float(), t.float())), loss(inputs(s.float(), t.clamp(min=0).float())), rtol=0, atol=0)


def test_ab_preact_pairs_sums_bn2_and_shortcut():
    bn2 = [randn(2, 3, 4, 4, seed=3), randn(2, 5, 2, 2, seed=4)]
    shortcut = [randn(2, 3, 4, 4, seed=5), randn(2, 5, 2, 2, seed=6)]
    teachers = [randn(2, 3, 4, 4, seed=7), randn(2, 5, 2, 2, seed=8)]
    leaves = [leaf(x) for pair in zip(bn2, shortcut) for x in pair]
    value = build("ab", preact_pairs=True)(inputs(leaves, [t.float() for t in teachers]))
    close(value, reference_ab([a + b for a, b in zip(bn2, shortcut)], teachers))
    grads = torch.autograd.grad(value, leaves)
    for k in range(0, 4, 2):  # d/d bn2 = d/d shortcut = d/d (their sum)
        close(grads[k], grads[k + 1], rtol=0, atol=0)


def test_ab_connector_is_a_1x1_conv_and_batchnorm_where_the_stages_differ():
    s, t = randn(4, 3, 4, 4, seed=11), randn(4, 6, 4, 4, seed=12)
    loss = build("ab")
    x = leaf(s)
    value = loss(inputs([x, leaf(t)], [t.float(), t.float()]))
    conv_bn, identity = loss.connectors
    assert isinstance(identity, nn.Identity)
    conv, bn = conv_bn
    assert conv.kernel_size == (1, 1) and conv.bias is not None and isinstance(bn, nn.BatchNorm2d)
    # the connector by hand: y[b, o, h, w] = sum_c W[o, c] x[b, c, h, w] + bias[o], then batch statistics
    weight, bias = conv.weight.detach().double()[:, :, 0, 0], conv.bias.detach().double()
    y = torch.einsum("oc,bchw->bohw", weight, s) + bias[None, :, None, None]
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = ((y - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach().double()[None, :, None, None] \
        + bn.bias.detach().double()[None, :, None, None]
    close(value, reference_ab([y, t], [t, t]))
    assert grad_of(value, x).abs().sum() > 0
    always = build("ab", connector="always")
    always(inputs([leaf(s), leaf(t)], [t.float(), t.float()]))
    assert all(isinstance(c, nn.Sequential) for c in always.connectors)


@pytest.mark.parametrize("s_size,t_size,kind,kernel,stride", [(4, 2, nn.Conv2d, (3, 3), (2, 2)),
                                                             (2, 4, nn.ConvTranspose2d, (4, 4), (2, 2)),
                                                             (5, 3, nn.Conv2d, (3, 3), (1, 1)),
                                                             (3, 3, nn.Conv2d, (1, 1), (1, 1))])
def test_ab_connector_convolution_follows_repdistillers_convreg(s_size, t_size, kind, kernel, stride):
    """models/util.py ConvReg: s_H == 2 t_H -> 3x3 stride 2; 2 s_H == t_H -> 4x4 stride-2 transposed;
    otherwise (s_H >= t_H) a (1 + s_H - t_H) kernel; Connector: none only for equal C and H."""
    s, t = randn(2, 3, s_size, s_size, seed=13), randn(2, 5, t_size, t_size, seed=14)
    loss = build("ab")
    x = leaf(s)
    value = loss(inputs(x, t.float()))
    conv, bn = loss.connectors[0]
    assert type(conv) is kind and conv.kernel_size == kernel and conv.stride == stride and conv.bias is not None
    assert tuple(conv(x).shape) == tuple(t.shape) and isinstance(bn, nn.BatchNorm2d)
    assert math.isfinite(float(value)) and grad_of(value, x).abs().sum() > 0


# ============================================================================================== FSP
# Yim et al., CVPR 2017.  Reference: RepDistiller distiller_zoo/FSP.py (compute_fsp: the larger map
# adaptive-average-pooled to the smaller; (bot * top).mean(-1); compute_loss: (s - t)^2 mean).

def reference_fsp_matrix(a, b):
    """G[b, j, i] = mean over positions of b[j] * a[i], both at the smaller size (average pooling by
    hand for the 2x factors these tests use)."""
    def pool(x, size):
        k = x.shape[2] // size
        return x.reshape(x.shape[0], x.shape[1], size, k, size, k).mean(dim=(3, 5))

    size = min(a.shape[2], b.shape[2])
    a, b = (pool(a, size) if a.shape[2] != size else a), (pool(b, size) if b.shape[2] != size else b)
    rows = [[[(b[n, j] * a[n, i]).sum() / (size * size) for i in range(a.shape[1])] for j in range(b.shape[1])]
            for n in range(a.shape[0])]
    return torch.stack([torch.stack([torch.stack(r) for r in m]) for m in rows])


def reference_fsp(students, teachers):
    total = 0.0
    for k in range(len(students) - 1):
        gs = reference_fsp_matrix(students[k], students[k + 1])
        gt = reference_fsp_matrix(teachers[k], teachers[k + 1])
        total = total + ((gs - gt) ** 2).mean()
    return total


FSP_CASES = [
    [(2, 3, 4, 4), (2, 3, 4, 4)],
    [(2, 2, 8, 8), (2, 2, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2)],  # kdkit's resnet: stem, layer1..3 (pooled)
    [(3, 4, 2, 2), (3, 2, 4, 4)],  # the later map larger: it is the one pooled
]


@pytest.mark.parametrize("shapes", FSP_CASES)
def test_fsp_matches_the_loop_and_its_gradient(shapes):
    students = [randn(*s, seed=30 + i) for i, s in enumerate(shapes)]
    teachers = [randn(*s, seed=40 + i) for i, s in enumerate(shapes)]
    leaves = [leaf(s) for s in students]
    value = build("fsp")(inputs(leaves, [t.float() for t in teachers]))
    s64 = [s.clone().requires_grad_(True) for s in students]
    expected = reference_fsp(s64, teachers)
    close(value, expected)
    for g, e in zip(torch.autograd.grad(value, leaves), torch.autograd.grad(expected, s64)):
        close(g, e)


def test_fsp_is_zero_for_equal_flows_and_ignores_a_channel_permutation_of_neither():
    s = [randn(2, 3, 4, 4, seed=50), randn(2, 3, 4, 4, seed=51)]
    assert float(build("fsp")(inputs([x.float() for x in s], [x.float() for x in s]))) == 0.0


# =============================================================================================== FT
# Kim et al., NeurIPS 2018.  Reference: RepDistiller distiller_zoo/FT.py (FactorTransfer(p1=2, p2=1):
# factor(f) = normalize(f.pow(2).mean(1).view(B, -1)), (factor_s - factor_t).abs().mean()),
# models/util.py Paraphraser (use_bn=False) / Translator (use_bn=True), k = 0.5.

def reference_phi(f, factor):
    """phi per sample, with explicit sums: attention = mean over channels of f^2, flat = f itself;
    then divided by its L2 norm."""
    rows = []
    for b in range(f.shape[0]):
        if factor == "attention":
            v = sum(f[b, c] ** 2 for c in range(f.shape[1])) / f.shape[1]
        else:
            v = f[b]
        v = v.flatten()
        rows.append(v / torch.sqrt((v * v).sum()).clamp(min=1e-12))
    return torch.stack(rows)


@pytest.mark.parametrize("s_shape,t_shape,factor,p", [
    ((2, 3, 4, 4), (2, 4, 4, 4), "attention", 1.0),
    ((3, 2, 4, 4), (3, 6, 2, 2), "attention", 1.0),  # the translator's factor (4x4) pooled to 2x2
    ((2, 4, 4, 4), (2, 4, 4, 4), "flat", 1.0),
    ((2, 3, 3, 3), (2, 4, 3, 3), "attention", 2.0),
])
def test_ft_matches_the_factor_distance_and_its_gradient(s_shape, t_shape, factor, p):
    s, t = randn(*s_shape, seed=60), randn(*t_shape, seed=61)
    torch.manual_seed(0)
    loss = build("ft", factor=factor, p=p)
    paraphraser = loss.make_paraphraser(t_shape[1])
    loss.set_paraphraser(paraphraser)
    x = leaf(s)
    value = loss(inputs(x, t.float()))
    # the reference on float64 copies of the same two modules
    translator = copy.deepcopy(loss.translator).double()
    s64 = s.clone().requires_grad_(True)
    f_s = translator(s64)
    f_t = copy.deepcopy(paraphraser).double().encoder(t)
    size = min(f_s.shape[2], f_t.shape[2])
    f_s = torch.nn.functional.adaptive_avg_pool2d(f_s, size) if f_s.shape[2] != size else f_s
    f_t = torch.nn.functional.adaptive_avg_pool2d(f_t, size) if f_t.shape[2] != size else f_t
    d = reference_phi(f_s, factor) - reference_phi(f_t, factor)
    expected = (d.abs() ** p).sum() / d.numel()
    close(value, expected)
    close(grad_of(value, x), grad_of(expected, s64), rtol=1e-3, atol=1e-7)


def test_ft_paraphraser_and_translator_are_repdistillers():
    p = Paraphraser(8, 4)
    convs = [m for m in p.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(8, 8, (3, 3)), (8, 4, (3, 3)),
                                                                               (4, 4, (3, 3))]
    deconvs = [m for m in p.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in deconvs] == [(4, 4), (4, 8), (8, 8)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in p.modules())  # use_bn=False
    assert all(m.negative_slope == 0.1 for m in p.modules() if isinstance(m, nn.LeakyReLU))
    tr = Translator(3, 4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in tr.modules()) == 3  # use_bn=True
    x = randn(2, 8, 4, 4).float()
    factor, rec = p(x)
    assert factor.shape == (2, 4, 4, 4) and rec.shape == x.shape


def test_ft_paraphraser_stays_frozen_and_in_eval_mode():
    loss = build("ft")
    loss.set_paraphraser(loss.make_paraphraser(4))
    loss.train()
    assert not loss.paraphraser.training
    assert not any(p.requires_grad for p in loss.paraphraser.parameters())
    value = loss(inputs(leaf(randn(2, 3, 4, 4)), randn(2, 4, 4, 4).float()))
    value.backward()
    assert all(p.grad is None for p in loss.paraphraser.parameters())
    assert all(p.grad is not None for p in loss.translator.parameters())
    assert any(k.startswith("paraphraser.") for k in loss.state_dict())  # checkpointed with the stage


# =============================================================================================== CC
# Peng et al., ICCV 2019.  RBF Taylor form: AberHu/Knowledge-Distillation-Zoo kd_losses/cc.py
# (gamma 0.4, P_order 2, F.mse_loss of the correlation matrices); embedding heads: RepDistiller
# train_student.py LinearEmbed(feat[-1], 128) on both sides; 'consecutive': RepDistiller CC.py.

def reference_rbf(e, gamma, order):
    n = e.shape[0]
    c = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            cos = float((e[i] @ e[j]) / (e[i].norm() * e[j].norm()))
            # the truncated series of exp(-gamma ||a - b||^2) = exp(-2 gamma) exp(2 gamma cos) for unit vectors
            c[i, j] = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos ** p
                          for p in range(order + 1))
    return c


@pytest.mark.parametrize("batch,d_s,d_t,gamma,order", [(4, 5, 7, 0.4, 2), (6, 3, 3, 0.4, 2), (5, 4, 6, 1.0, 3)])
def test_cc_rbf_matches_the_loop_without_heads(batch, d_s, d_t, gamma, order):
    s, t = randn(batch, d_s, seed=70), randn(batch, d_t, seed=71)
    x = leaf(s)
    value = build("cc", embed_dim=None, gamma=gamma, order=order)(inputs(x, t.float()))
    cs, ct = reference_rbf(s, gamma, order), reference_rbf(t, gamma, order)
    close(value, ((cs - ct) ** 2).sum() / batch ** 2)
    # gradient by central differences of the float64 reference
    g = grad_of(value, x)
    eps = 1e-6
    for idx in [(0, 0), (batch - 1, d_s - 1), (1, d_s // 2)]:
        up, down = s.clone(), s.clone()
        up[idx] += eps
        down[idx] -= eps
        numeric = (((reference_rbf(up, gamma, order) - ct) ** 2).mean()
                   - ((reference_rbf(down, gamma, order) - ct) ** 2).mean()) / (2 * eps)
        close(g[idx], numeric, rtol=1e-3, atol=1e-7)


def test_cc_taylor_series_approaches_the_gaussian_kernel():
    """With a high order the correlation is the RBF kernel exp(-gamma ||a - b||^2) of unit vectors."""
    from kdkit_methods.feature_more import rbf_correlation

    e = randn(5, 4, seed=72)
    u = e / e.norm(dim=1, keepdim=True)
    exact = torch.exp(-0.4 * torch.cdist(u, u) ** 2)
    close(rbf_correlation(e, 0.4, 12), exact, rtol=1e-6, atol=1e-9)


def test_cc_heads_are_linear_embeddings_of_the_pooled_features():
    s, t = randn(4, 6, 2, 2, seed=73), randn(4, 8, seed=74)
    loss = build("cc")
    x = leaf(s)
    value = loss(inputs(x, t.float()))
    assert (loss.embed_s.in_features, loss.embed_s.out_features) == (6, 128)
    assert (loss.embed_t.in_features, loss.embed_t.out_features) == (8, 128)
    w_s, b_s = loss.embed_s.weight.detach().double(), loss.embed_s.bias.detach().double()
    w_t, b_t = loss.embed_t.weight.detach().double(), loss.embed_t.bias.detach().double()
    pooled = s.mean(dim=(2, 3))
    e_s, e_t = pooled @ w_s.t() + b_s, t @ w_t.t() + b_t
    close(value, ((reference_rbf(e_s, 0.4, 2) - reference_rbf(e_t, 0.4, 2)) ** 2).mean())
    assert grad_of(value, x).abs().sum() > 0


def test_cc_consecutive_is_repdistillers_correlation():
    s, t = randn(5, 4, seed=75), randn(5, 4, seed=76)
    x = leaf(s)
    value = build("cc", kernel="consecutive", embed_dim=None)(inputs(x, t.float()))
    expected = sum(sum(abs(float(s[i, d] - t[i, d])) * abs(float(s[i + 1, d] - t[i + 1, d])) for d in range(4))
                   for i in range(4)) / 4
    close(value, expected)
    g = grad_of(value, x)
    # d/ds[i,d] = sign(s-t)[i,d] * (|delta[i-1,d]| + |delta[i+1,d]|) / (B - 1)
    delta = s - t
    for i in range(5):
        for d in range(4):
            around = (abs(float(delta[i - 1, d])) if i > 0 else 0.0) + (abs(float(delta[i + 1, d])) if i < 4 else 0.0)
            close(g[i, d], math.copysign(1.0, float(delta[i, d])) * around / 4)


# ============================================================================================== MGD
# Yang et al., ECCV 2022.  Reference: yzd-v/MGD cls/mmcls/distillation/losses/mgd.py (align 1x1 conv
# when channels differ, mask rand(N, C, 1, 1) < lambda -> 0, generation conv3x3-ReLU-conv3x3,
# MSELoss(sum) / N * alpha_mgd).

def reference_conv3x3(x, weight, bias):
    """3x3 convolution, padding 1, as a sum of nine shifted channel mixes."""
    n, c, h, w = x.shape
    padded = torch.zeros(n, c, h + 2, w + 2, dtype=torch.float64)
    padded[:, :, 1:-1, 1:-1] = x
    out = bias.double()[None, :, None, None].expand(n, -1, h, w).clone()
    for dy in range(3):
        for dx in range(3):
            out = out + torch.einsum("oc,nchw->nohw", weight.double()[:, :, dy, dx], padded[:, :, dy:dy + h, dx:dx + w])
    return out


@pytest.mark.parametrize("s_shape,t_shape,mask_kind", [((2, 3, 4, 4), (2, 5, 4, 4), "channel"),
                                                       ((3, 4, 3, 3), (3, 4, 3, 3), "channel"),
                                                       ((2, 2, 4, 4), (2, 3, 4, 4), "spatial")])
def test_mgd_matches_the_masked_generation_and_its_gradient(s_shape, t_shape, mask_kind):
    s, t = randn(*s_shape, seed=80), randn(*t_shape, seed=81)
    torch.manual_seed(1)
    loss = build("mgd", mask=mask_kind, alpha_mgd=0.5)
    n, c_t, h, w = t_shape
    mask_shape = (n, c_t, 1, 1) if mask_kind == "channel" else (n, 1, h, w)
    mask = (randn(*mask_shape, seed=82) > -0.5).double()
    x = leaf(s)
    value = loss(inputs(x, t.float()), mask=mask.float())
    s64 = s.clone().requires_grad_(True)
    if s_shape[1] != c_t:
        conv = loss.align
        aligned = torch.einsum("oc,bchw->bohw", conv.weight.double()[:, :, 0, 0], s64) \
            + conv.bias.double()[None, :, None, None]
    else:
        assert isinstance(loss.align, nn.Identity)
        aligned = s64
    g1, g2 = loss.generation[0], loss.generation[2]
    hidden = reference_conv3x3(aligned * mask, g1.weight.detach(), g1.bias.detach()).clamp(min=0)
    generated = reference_conv3x3(hidden, g2.weight.detach(), g2.bias.detach())
    expected = 0.5 * ((generated - t) ** 2).sum() / n
    close(value, expected)
    close(grad_of(value, x), grad_of(expected, s64), rtol=1e-3, atol=1e-7)


def test_mgd_masks_a_lambda_share_and_masked_channels_get_no_gradient():
    loss = build("mgd", lambda_mgd=0.3)
    torch.manual_seed(0)
    masks = loss.draw_mask(torch.zeros(2000, 8, 2, 2))
    assert masks.shape == (2000, 8, 1, 1)
    assert abs(float(1 - masks.mean()) - 0.3) < 0.02
    assert build("mgd", mask="spatial").draw_mask(torch.zeros(3, 8, 2, 5)).shape == (3, 1, 2, 5)
    s, t = randn(2, 4, 3, 3, seed=83), randn(2, 4, 3, 3, seed=84)  # equal channels: no align
    mask = torch.ones(2, 4, 1, 1)
    mask[0, 1] = 0
    x = leaf(s)
    g = grad_of(loss(inputs(x, t.float()), mask=mask), x)
    assert float(g[0, 1].abs().sum()) == 0.0 and float(g[0, 0].abs().sum()) > 0


# ========================================================================= defaults vs the references

def _declared(name):
    return {k: key.default for k, key in LOSSES[name][1].items()}


def test_loss_defaults_are_the_references():
    # RepDistiller distiller_zoo/AB.py: ABLoss(feat_num, margin=1.0); models/util.py Connector
    assert _declared("ab") == {"margin": 1.0, "connector": "auto", "preact_pairs": False}
    assert ABLoss.stage_weights(3) == [0.25, 0.5, 1.0]  # AB.py: w = [2**(i-feat_num+1) for i in range(feat_num)]
    # RepDistiller FT.py FactorTransfer(p1=2, p2=1); models/util.py Paraphraser(t_shape, k=0.5)
    assert _declared("ft") == {"rate": 0.5, "p": 1.0, "factor": "attention"}
    assert _declared("fsp") == {}
    # Knowledge-Distillation-Zoo train_kd.py --gamma 0.4 --P_order 2; RepDistiller --feat_dim 128
    assert _declared("cc") == {"gamma": 0.4, "order": 2, "embed_dim": 128, "kernel": "rbf"}
    # yzd-v/MGD cls/configs/distillers/mgd/res34_distill_res18_img.py: alpha_mgd=0.00007, lambda_mgd=0.15;
    # cls/mmcls/distillation/losses/mgd.py: mat = torch.rand((N,C,1,1))
    assert _declared("mgd") == {"alpha_mgd": 7e-5, "lambda_mgd": 0.15, "mask": "channel"}
    for name, (target, options, _) in LOSSES.items():
        if name in ("ab", "ft", "fsp", "cc", "mgd"):
            cls = build(name)
            for option, key in options.items():  # the declarations and the classes agree
                assert getattr(cls, option) == key.default, (name, option)


def _preset(name):
    return next(p for p in PRESETS if p.name == name)


def test_cc_and_mgd_presets_are_the_references_configurations():
    cc = _preset("cc")
    # Knowledge-Distillation-Zoo example_train_script.sh: --kd_mode cc --lambda_kd 100.0 (CE 1, no KL);
    # RepDistiller train_student.py: the embeddings of feat[-1], the pooled feature -> kdkit's pool
    assert (cc.alpha, [t["loss"] for t in cc.terms]) == (1.0, ["cc"])
    assert cc.terms[0]["weight"] == 100.0 and cc.terms[0]["student"] == cc.terms[0]["teacher"] == "pool"
    mgd = _preset("mgd")
    # yzd-v/MGD classification_distiller.py: student CE (weight 1) + loss_mgd(fea_s[-1], fea_t[-1]), no KD
    assert (mgd.alpha, [t["loss"] for t in mgd.terms]) == (1.0, ["mgd"])
    assert mgd.terms[0]["weight"] == 1.0 and mgd.terms[0]["student"] == mgd.terms[0]["teacher"] == "layer3"


def _defaults(name):
    from kdkit.config import plain_defaults

    return plain_defaults(INIT_METHODS[name].default_config())


def test_ab_fsp_ft_methods_defaults_are_repdistillers():
    ab, fsp, ft = _defaults("ab"), _defaults("fsp"), _defaults("ft")
    for cfg in (ab, fsp):
        # train_student.py --init_epochs 30; helper/pretrain.py init(): lr = opt.learning_rate (0.05), no
        # adjust_learning_rate in init; the init loss is sum(loss_group) alone (weight 1, no CE)
        assert (cfg["init"]["epochs"], cfg["init"]["lr"], cfg["init"]["scheduler"]) == (30, 0.05, "none")
        assert cfg["init"]["distill"]["alpha"] == 0.0
        assert [t["weight"] for t in cfg["init"]["distill"]["terms"]] == [1.0]
        # scripts/run_cifar_distill.sh: -a 0 -b 1 (AB) / -b 50 (FSP) with loss_kd = 0 in the main loop: CE only
        assert cfg["distill"]["alpha"] == 1.0 and cfg["distill"]["terms"] == [{"loss": "kl", "weight": 0.0}]
    (ab_term,) = ab["init"]["distill"]["terms"]
    # train_student.py 'abound': feat[1:-1] with preact=True: the three stages before their last ReLU
    assert ab_term["loss"] == "ab" and ab_term["teacher"] == STAGES and ab_term["options"] == {"preact_pairs": True}
    assert ab_term["student"] == ["layer1.0.bn2", "layer1.0.shortcut", "layer2.0.bn2", "layer2.0.shortcut",
                                  "layer3.0.bn2", "layer3.0.shortcut"]
    (fsp_term,) = fsp["init"]["distill"]["terms"]
    # train_student.py 'fsp': feat[:-1] = [stem (post-ReLU), layer1, layer2, layer3]
    assert fsp_term["student"] == fsp_term["teacher"] == ["layer1.0.shortcut", *STAGES]
    assert fsp["student"]["width"] == 16  # equal channels (resnet32x4 -> resnet8x4 in the reference)
    # 'factor': -a 0 -b 200 on feat[-2]; init() lr 0.01 for the CIFAR ResNets, 30 epochs
    assert (ft["init"]["epochs"], ft["init"]["lr"], ft["init"]["scheduler"]) == (30, 0.01, "none")
    assert ft["distill"]["alpha"] == 1.0
    assert ft["distill"]["terms"] == [{"loss": "ft", "weight": 200.0, "student": "layer3", "teacher": "layer3"}]


def test_kdkit_resnets_give_the_taps_the_methods_name():
    """layer1.0.shortcut outputs the stem's post-ReLU map; bn2 + shortcut of a stage's last block is its
    pre-activation (relu of it is the stage's output)."""
    from kdkit.distill import FeatureTaps
    from kdkit.models.cifar_resnet import CifarResNet

    model = CifarResNet(8, 10, 4).eval()
    x = randn(2, 3, 32, 32).float()
    paths = ["bn1", "layer1.0.shortcut", *[p for s in STAGES for p in (f"{s}.0.bn2", f"{s}.0.shortcut", s)]]
    with FeatureTaps(model, paths) as taps, torch.no_grad():
        model(x)
        out = taps.pop()
    close(out["layer1.0.shortcut"], out["bn1"].clamp(min=0), rtol=0, atol=0)
    for s in STAGES:
        close(out[s], (out[f"{s}.0.bn2"] + out[f"{s}.0.shortcut"]).clamp(min=0), rtol=0, atol=1e-6)


# ======================================================================================== errors

def test_errors_are_one_line():
    m4 = randn(2, 3, 4, 4).float()
    one_line_error(lambda: build("ab")(inputs([m4, randn(2, 3, 2, 2).float()], [m4, randn(2, 3, 3, 3).float()])),
                   "smaller than teacher feature")
    one_line_error(lambda: build("ab", preact_pairs=True)(inputs([m4, m4, m4], [m4])), "two student paths")
    one_line_error(lambda: build("ab")(inputs(randn(2, 3).float(), randn(2, 3).float())), "B x C x H x W")
    one_line_error(lambda: build("ab", connector="sometimes"), "connector")
    one_line_error(lambda: build("fsp")(inputs([m4, m4], [m4, randn(2, 4, 4, 4).float()])), "channel counts")
    one_line_error(lambda: build("fsp")(inputs(m4, m4)), "at least 2")
    one_line_error(lambda: build("ft")(inputs(m4, m4)), "paraphraser", "--method ft")
    ft = build("ft")
    ft.set_paraphraser(ft.make_paraphraser(5))
    one_line_error(lambda: ft(inputs(m4, m4)), "5 channels")
    one_line_error(lambda: ft(inputs([m4, m4], [m4, m4])), "one module path each")
    one_line_error(lambda: build("ft", factor="sum"), "factor")
    one_line_error(lambda: build("ft", rate=0), "rate")
    one_line_error(lambda: build("cc")(inputs(randn(2, 3, 4).float(), randn(2, 3, 4).float())), "B x D")
    one_line_error(lambda: build("cc", kernel="consecutive", embed_dim=None)(inputs(randn(3, 4).float(),
                                                                                     randn(3, 5).float())), "embed_dim")
    one_line_error(lambda: build("mgd")(inputs(m4, randn(2, 3, 2, 2).float())), "spatial size")
    one_line_error(lambda: build("mgd", lambda_mgd=1.0), "lambda_mgd")
    one_line_error(lambda: build("mgd", mask="pixel"), "mask")
    cc = build("cc")
    cc(inputs(randn(3, 4).float(), randn(3, 5).float()))
    one_line_error(lambda: cc(inputs(randn(3, 6).float(), randn(3, 5).float())), "built for")
    # the declarations reject bad values when the config is resolved
    with pytest.raises(kdkit.ConfigError):
        kdkit.get_registry("losses").get("ab").check_options({"connector": "never"}, "distill.terms.0.options")


# ============================================================ modules built in the loss's own mode

def _materialized(spec, student_features, teacher_features, batch):
    fn = build_term_loss(kdkit.get_registry("losses"), spec)
    distiller = Distiller([spec], [fn], TeacherCombiner(), ce_weight=1.0, temperature=4.0)
    torch.manual_seed(0)
    distiller.materialize(torch.zeros(batch, 3), [torch.zeros(batch, 3)], torch.arange(batch) % 3,
                          student_features=student_features, teacher_features=[teacher_features])
    return fn


def _bn_untouched(module):
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    for m in norms:
        assert int(m.num_batches_tracked) == 0 and torch.equal(m.running_mean, torch.zeros_like(m.running_mean))


def test_materialize_leaves_the_connectors_batchnorm_statistics_alone():
    s, t = randn(4, 3, 4, 4).float(), randn(4, 6, 4, 4).float()
    fn = _materialized(TermSpec(loss="ab", weight=1.0, name="ab", student="a", teacher="b"), {"a": s}, {"b": t}, 4)
    _bn_untouched(fn)


def test_materialize_leaves_the_translators_batchnorm_statistics_alone():
    spec = TermSpec(loss="ft", weight=1.0, name="ft", student="a", teacher="b")
    fn = build_term_loss(kdkit.get_registry("losses"), spec)
    fn.set_paraphraser(fn.make_paraphraser(6))
    distiller = Distiller([spec], [fn], TeacherCombiner(), ce_weight=1.0, temperature=4.0)
    distiller.materialize(torch.zeros(4, 3), [torch.zeros(4, 3)], torch.arange(4) % 3,
                          student_features={"a": randn(4, 3, 4, 4).float()},
                          teacher_features=[{"b": randn(4, 6, 4, 4).float()}])
    _bn_untouched(fn.translator)
    distiller.train()
    assert fn.translator.training and not fn.paraphraser.training
