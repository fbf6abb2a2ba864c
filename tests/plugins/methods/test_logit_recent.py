"""kdkit_methods.logit_recent: CTKD, MLKD, NKD and WSLD against independent computations.

The references here are plain Python loops over samples and classes with the ``math`` module (no
torch softmax / kl_div / matrix products), the reference repositories' own schedule and masking
rules (``numpy.percentile``), and the papers' identities.  Gradients are checked against central
differences of those loop references in float64, the losses themselves run in float32.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy
import pytest
import torch

import kdkit
from kdkit.distill import DistillInputs, Distiller, TeacherCombiner, TermSpec, build_term_loss

try:
    import kdkit_methods  # noqa: F401
except ImportError:  # the editable install predates plugins/kdkit_methods
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))

from kdkit_methods.logit_recent import (CTKDLoss, MLKDLoss, NKDLoss, WSLDLoss, ctkd_lambda,  # noqa: E402
                                        median_fraction, mlkd_parts, nkd_parts, reverse_gradient, wsld_weights)
from kdkit_methods.presets import PRESETS  # noqa: E402

SHAPES = [(1, 2), (3, 5), (6, 4), (5, 7)]


# ------------------------------------------------------------------------------------------ helpers
def _logits(b, c, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def _inputs(s, t, y=None, temperature=4.0, epoch=0):
    return DistillInputs(student_logits=s, teacher_logits=t, labels=y, temperature=temperature, epoch=epoch)


def _softmax(row, temperature=1.0):
    row = [x / temperature for x in row]
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [v / z for v in e]


def _kl(q, p):
    return sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p) if qi > 0)


def _cross_entropy(q, p):
    return -sum(qi * math.log(pi) for qi, pi in zip(q, p))


def _value_and_grad(fn, s, t, y, **kw):
    """The loss on float32 copies of ``s`` / ``t`` and its gradient w.r.t. the student logits."""
    s32 = s.float().requires_grad_(True)
    value = fn(_inputs(s32, t.float(), y, **kw))
    value.backward()
    return value.item(), s32.grad.double()


def _numeric_grad(ref, s, h=1e-6):
    """Central differences of the loop reference ``ref(list of rows)`` w.r.t. every student logit."""
    rows = s.tolist()
    grad = torch.zeros_like(s)
    for b in range(len(rows)):
        for c in range(len(rows[0])):
            plus = [r[:] for r in rows]
            minus = [r[:] for r in rows]
            plus[b][c] += h
            minus[b][c] -= h
            grad[b, c] = (ref(plus) - ref(minus)) / (2 * h)
    return grad


def _check(fn, ref, s, t, y, **kw):
    """Value (float32 rounding) and gradient of ``fn`` against the float64 loop ``ref``."""
    value, grad = _value_and_grad(fn, s, t, y, **kw)
    expected = ref(s.tolist())
    assert value == pytest.approx(expected, rel=2e-5, abs=1e-6)
    numeric = _numeric_grad(ref, s)
    scale = max(numeric.abs().max().item(), 1e-3)
    assert torch.allclose(grad, numeric, rtol=1e-4, atol=1e-5 * scale), (grad, numeric)


def _one_line(fn, *words):
    with pytest.raises(kdkit.ConfigError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def _build(name, **options):
    return kdkit.get_registry("losses").build(name, **options)


def _preset(name):
    return next(p for p in PRESETS if p.name == name)


# --------------------------------------------------------------------------------------------- CTKD
def _reference_cosine_decay(i, max_value, min_value, num_loops):
    """zhengli97/CTKD train_student.py CosineDecay.get_value (i: the 1-based epoch)."""
    i = min(max(i, 0), num_loops)
    return (math.cos(i * math.pi / num_loops) + 1.0) * 0.5 * (max_value - min_value) + min_value


def _loop_ctkd(s_rows, t_rows, temperature):
    return temperature ** 2 * sum(_kl(_softmax(tr, temperature), _softmax(sr, temperature))
                                  for sr, tr in zip(s_rows, t_rows)) / len(s_rows)


@pytest.mark.parametrize("epoch", [0, 1, 4, 8, 9, 10, 239])
def test_ctkd_curriculum_is_the_references_cosine_decay(epoch):
    """kdkit's 0-based epoch e is the reference's 1-based epoch e + 1; the reference's gradient factor
    (decay_max 0, decay_min -1, decay_loops 10: scripts/run_cifar_distill.sh) is -lambda."""
    reference = _reference_cosine_decay(epoch + 1, 0.0, -1.0, 10)
    assert ctkd_lambda(epoch, 10) == pytest.approx(-reference, abs=1e-15)
    # ImageNet script: decay_loops 5
    assert ctkd_lambda(epoch, 5) == pytest.approx(-_reference_cosine_decay(epoch + 1, 0.0, -1.0, 5), abs=1e-15)


def test_ctkd_curriculum_values_at_given_epochs():
    assert ctkd_lambda(0, 10) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)  # 0.0245: never 0
    assert ctkd_lambda(4, 10) == pytest.approx(0.5)  # the 5th epoch: half way
    assert ctkd_lambda(9, 10) == pytest.approx(1.0)  # the 10th: full strength, and after
    assert ctkd_lambda(100, 10) == 1.0
    assert ctkd_lambda(3, 0) == 1.0  # no curriculum: lambda_end at once
    assert ctkd_lambda(4, 10, lambda_start=0.2, lambda_end=0.6) == pytest.approx(0.4)
    values = [ctkd_lambda(e, 10) for e in range(12)]
    assert values == sorted(values)  # easy to hard: the strength never decreases


def test_reverse_gradient_is_identity_forward_and_scales_the_gradient_by_minus_lambda():
    x = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.5, -0.75], dtype=torch.float64))


@pytest.mark.parametrize("b, c", SHAPES)
def test_ctkd_matches_kd_at_the_learned_temperature_value_and_gradient(b, c):
    s, t, y = _logits(b, c, seed=b * 10 + c)
    loss = CTKDLoss()
    temperature = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # theta starts at 1 (reference Global_T: torch.ones(1))
    assert loss.current_temperature() == pytest.approx(temperature)
    t_rows = t.tolist()
    _check(loss, lambda rows: _loop_ctkd(rows, t_rows, temperature), s, t, y, epoch=3)
    with torch.no_grad():
        loss.theta.fill_(-0.7)
    temperature = 1.0 + 20.0 / (1.0 + math.exp(0.7))
    _check(loss, lambda rows: _loop_ctkd(rows, t_rows, temperature), s, t, y, epoch=3)


@pytest.mark.parametrize("epoch", [0, 4, 9, 30])
def test_ctkd_temperature_gradient_is_the_reversed_kd_gradient(epoch):
    """d loss / d theta through the GRL is -lambda(epoch) times the plain derivative of KD w.r.t. theta."""
    s, t, y = _logits(5, 6, seed=7)
    loss = CTKDLoss(temp_min=1.0, temp_range=20.0, curriculum_epochs=10)
    with torch.no_grad():
        loss.theta.fill_(0.4)
    loss(_inputs(s, t, y, epoch=epoch)).backward()  # float64: d KD / d T cancels to a small number
    s_rows, t_rows = s.tolist(), t.tolist()

    def kd_of_theta(theta):
        return _loop_ctkd(s_rows, t_rows, 1.0 + 20.0 / (1.0 + math.exp(-theta)))

    h = 1e-6
    plain = (kd_of_theta(0.4 + h) - kd_of_theta(0.4 - h)) / (2 * h)
    lam = -_reference_cosine_decay(epoch + 1, 0.0, -1.0, 10)
    assert loss.theta.grad.item() == pytest.approx(-lam * plain, rel=1e-6, abs=1e-12)


def test_ctkd_a_gradient_step_makes_the_temperature_ascend_the_kd_loss():
    """Adversarial: one descent step on the (reversed) gradient increases the KD loss for fixed logits."""
    s, t, y = _logits(8, 10, seed=3, scale=3.0)
    loss = CTKDLoss()
    inputs = _inputs(s.float(), t.float(), y, epoch=20)
    before = loss(inputs)
    before.backward()
    with torch.no_grad():
        loss.theta -= 0.5 * loss.theta.grad
    assert loss(inputs).item() > before.item()


def test_ctkd_without_reversal_the_temperature_gets_no_gradient():
    s, t, y = _logits(4, 5, seed=5)
    loss = CTKDLoss(lambda_start=0.0, lambda_end=0.0)
    loss(_inputs(s.float(), t.float(), y, epoch=50)).backward()
    assert loss.theta.grad.item() == 0.0


def test_ctkd_ignores_distill_temperature_and_trains_inside_the_distiller():
    s, t, y = _logits(4, 5, seed=6)
    loss = _build("ctkd")
    a = loss(_inputs(s.float(), t.float(), y, temperature=1.0))
    b = loss(_inputs(s.float(), t.float(), y, temperature=9.0))
    assert a.item() == b.item()
    spec = TermSpec(loss="ctkd", weight=0.9, name="ctkd", options={})
    fn = build_term_loss(kdkit.get_registry("losses"), spec)
    distiller = Distiller([spec], [fn], TeacherCombiner("avg_logits", 1), ce_weight=0.1, temperature=4.0)
    assert [name for name, _ in distiller.named_parameters()] == ["terms.ctkd.theta"]
    assert distiller.state_dict()["terms.ctkd.theta"].item() == 1.0  # checkpointed with the stage


# --------------------------------------------------------------------------------------------- MLKD
def _loop_fraction_at_or_below_median(values):
    """The reference's mask: value <= numpy.percentile(values, 50), as a fraction of ones (the
    `(scalar * mask).mean()` of KD_ours.py)."""
    threshold = numpy.percentile(numpy.asarray(values), 50)
    return sum(1 for v in values if v <= threshold) / len(values)


def _loop_gram(rows_a, rows_b):
    """[[sum_k rows_a[i][k] * rows_b[j][k]]] for lists of rows."""
    return [[sum(x * z for x, z in zip(ra, rb)) for rb in rows_b] for ra in rows_a]


def _transpose(rows):
    return [list(col) for col in zip(*rows)]


def _loop_mlkd_parts(s_rows, t_rows, temperature):
    p = [_softmax(r, temperature) for r in s_rows]
    q = [_softmax(r, temperature) for r in t_rows]
    b, c = len(p), len(p[0])
    instance = temperature ** 2 * sum(_kl(qi, pi) for pi, qi in zip(p, q)) / b
    gs, gt = _loop_gram(p, p), _loop_gram(q, q)
    batch = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b
    ms, mt = _loop_gram(_transpose(p), _transpose(p)), _loop_gram(_transpose(q), _transpose(q))
    klass = sum((mt[i][j] - ms[i][j]) ** 2 for i in range(c) for j in range(c)) / c
    return instance, batch, klass


def _loop_mlkd(s_rows, t_rows, temperatures):
    q1 = [_softmax(r) for r in t_rows]
    f_batch = _loop_fraction_at_or_below_median([max(r) for r in q1])
    f_class = _loop_fraction_at_or_below_median([sum(col) for col in _transpose(q1)])
    total = 0.0
    for temperature in temperatures:
        instance, batch, klass = _loop_mlkd_parts(s_rows, t_rows, temperature)
        total += f_batch * (instance + batch) + f_class * klass
    return total


@pytest.mark.parametrize("b, c", SHAPES)
def test_mlkd_matches_a_loop_value_and_gradient(b, c):
    s, t, y = _logits(b, c, seed=20 + b * c)
    t_rows = t.tolist()
    temperatures = [2.0, 3.0, 4.0, 5.0, 6.0]
    _check(MLKDLoss(), lambda rows: _loop_mlkd(rows, t_rows, temperatures), s, t, y)
    _check(MLKDLoss(temperatures=[1.0, 2.5]), lambda rows: _loop_mlkd(rows, t_rows, [1.0, 2.5]), s, t, y)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_mlkd_parts_match_a_loop(temperature):
    s, t, _ = _logits(5, 6, seed=31)
    parts = mlkd_parts(s, t, temperature)
    for got, want in zip(parts, _loop_mlkd_parts(s.tolist(), t.tolist(), temperature)):
        assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-13)


def test_mlkd_mask_fraction_is_the_references_percentile_rule():
    even = torch.tensor([0.9, 0.2, 0.5, 0.7], dtype=torch.float64)  # median 0.6 (interpolated): 2 of 4
    odd = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1], dtype=torch.float64)  # median 0.5: 3 of 5
    ties = torch.full((6,), 0.25, dtype=torch.float64)  # every value is the median
    for values, want in ((even, 0.5), (odd, 0.6), (ties, 1.0)):
        assert median_fraction(values).item() == pytest.approx(want)
        assert median_fraction(values).item() == pytest.approx(_loop_fraction_at_or_below_median(values.tolist()))


def test_mlkd_is_zero_when_the_student_predicts_like_the_teacher():
    s, t, y = _logits(6, 5, seed=33)
    assert MLKDLoss()(_inputs(t + 3.0, t, y)).item() == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift
    assert MLKDLoss()(_inputs(s, t, y)).item() > 0


def test_mlkd_is_invariant_to_reordering_the_batch():
    """Permuting the samples of both models together permutes the B x B Gram matrices on both axes
    and leaves the C x C ones unchanged: every level (and so the loss) is the same."""
    s, t, _ = _logits(6, 4, seed=34)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    _, _, klass = mlkd_parts(s, t, 2.0)
    _, _, klass_perm = mlkd_parts(s[perm], t[perm], 2.0)
    assert klass_perm.item() == pytest.approx(klass.item(), rel=1e-12)
    instance, batch, _ = mlkd_parts(s, t, 2.0)
    instance_perm, batch_perm, _ = mlkd_parts(s[perm], t[perm], 2.0)
    assert instance_perm.item() == pytest.approx(instance.item(), rel=1e-12)
    assert batch_perm.item() == pytest.approx(batch.item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------- NKD
def _loop_nkd_parts(s_row, t_row, y, temperature):
    p, q = _softmax(s_row), _softmax(t_row)
    target = -q[y] * math.log(p[y])
    s_nt = [v for i, v in enumerate(s_row) if i != y]
    t_nt = [v for i, v in enumerate(t_row) if i != y]
    non_target = _cross_entropy(_softmax(t_nt, temperature), _softmax(s_nt, temperature)) if s_nt else 0.0
    return target, non_target


def _loop_nkd(s_rows, t_rows, labels, temperature, gamma):
    parts = [_loop_nkd_parts(sr, tr, y, temperature) for sr, tr, y in zip(s_rows, t_rows, labels)]
    n = len(parts)
    return sum(tg for tg, _ in parts) / n + gamma * temperature ** 2 * sum(nt for _, nt in parts) / n


@pytest.mark.parametrize("b, c", SHAPES)
@pytest.mark.parametrize("temperature, gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_a_loop_value_and_gradient(b, c, temperature, gamma):
    s, t, y = _logits(b, c, seed=40 + b + c)
    t_rows, labels = t.tolist(), y.tolist()
    loss = NKDLoss(temperature=temperature, gamma=gamma)
    _check(loss, lambda rows: _loop_nkd(rows, t_rows, labels, temperature, gamma), s, t, y)


def test_nkd_decomposes_the_kd_cross_entropy_at_t_1():
    """Yang et al. eq. 3-4: CE(Q, P) = -Q_y log P_y - (1 - Q_y) * sum_{c != y} N(Q)_c log N(P)_c
    - (1 - Q_y) log(1 - P_y), sample by sample (N: the normalised non-target distribution)."""
    s, t, y = _logits(6, 5, seed=41)
    target, non_target = nkd_parts(s, t, y, 1.0)
    for b in range(6):
        p, q = _softmax(s[b].tolist()), _softmax(t[b].tolist())
        yb = int(y[b])
        rebuilt = target[b].item() + (1 - q[yb]) * non_target[b].item() - (1 - q[yb]) * math.log(1 - p[yb])
        assert rebuilt == pytest.approx(_cross_entropy(q, p), rel=1e-10)


def test_nkd_non_target_term_ignores_the_target_logits():
    s, t, y = _logits(4, 6, seed=42)
    s2, t2 = s.clone(), t.clone()
    rows = torch.arange(4)
    s2[rows, y] += 5.0
    t2[rows, y] -= 3.0
    _, a = nkd_parts(s, t, y, 2.0)
    _, b = nkd_parts(s2, t2, y, 2.0)
    assert torch.allclose(a, b, rtol=1e-12)


def test_nkd_temperature_none_uses_distill_temperature():
    s, t, y = _logits(3, 5, seed=43)
    a = NKDLoss(temperature=None, gamma=2.0)(_inputs(s, t, y, temperature=3.0))
    b = NKDLoss(temperature=3.0, gamma=2.0)(_inputs(s, t, y, temperature=8.0))
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- WSLD
def _loop_wsld_weight(s_row, t_row, y):
    ce_s = -math.log(_softmax(s_row)[y])
    ce_t = -math.log(_softmax(t_row)[y])
    return 1.0 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))


def _loop_wsld(s_rows, t_rows, labels, temperature, weights):
    n = len(s_rows)
    return temperature ** 2 * sum(w * _cross_entropy(_softmax(tr, temperature), _softmax(sr, temperature))
                                  for sr, tr, w in zip(s_rows, t_rows, weights)) / n


@pytest.mark.parametrize("b, c", SHAPES)
@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_wsld_matches_a_loop_value_and_gradient(b, c, temperature):
    """The weights carry no gradient (the reference computes them from detached logits): the loop's
    derivative is taken with the weights of the unperturbed logits."""
    s, t, y = _logits(b, c, seed=50 + b * c)
    t_rows, labels = t.tolist(), y.tolist()
    weights = [_loop_wsld_weight(sr, tr, yb) for sr, tr, yb in zip(s.tolist(), t_rows, labels)]
    loss = WSLDLoss(temperature=temperature)
    _check(loss, lambda rows: _loop_wsld(rows, t_rows, labels, temperature, weights), s, t, y)


def test_wsld_weights_follow_the_cross_entropy_ratio():
    s, t, y = _logits(6, 5, seed=51)
    w = wsld_weights(s, t, y)
    for b in range(6):
        assert w[b].item() == pytest.approx(_loop_wsld_weight(s[b].tolist(), t[b].tolist(), int(y[b])), rel=1e-12)
    assert ((w >= 0) & (w <= 1)).all()
    # equal cross-entropies: 1 - 1/e; a student already certain of the label: ~0 (its soft labels add variance)
    same = wsld_weights(t, t, y)
    assert same.tolist() == pytest.approx([_loop_wsld_weight(r, r, int(yb)) for r, yb in zip(t.tolist(), y)], rel=1e-12)
    assert same.tolist() == pytest.approx([1 - math.exp(-1)] * 6, rel=1e-4)  # up to the 1e-7 in the ratio
    confident = torch.zeros(1, 5, dtype=torch.float64)
    confident[0, 2] = 40.0
    assert wsld_weights(confident, t[:1], torch.tensor([2])).item() < 1e-12


def test_wsld_default_temperature_is_2_and_none_uses_distill_temperature():
    s, t, y = _logits(3, 4, seed=52)
    assert WSLDLoss().temperature == 2.0
    a = WSLDLoss(temperature=None)(_inputs(s, t, y, temperature=4.0))
    b = WSLDLoss(temperature=4.0)(_inputs(s, t, y, temperature=1.0))
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# -------------------------------------------------------------------------------- defaults and presets
def test_loss_defaults_are_the_references():
    ctkd = _build("ctkd")
    # zhengli97/CTKD train_student.py: --t_start 1, --t_end 20; scripts/run_cifar_distill.sh: --decay_max 0
    # --decay_min -1 --decay_loops 10; models/temp_global.py: Global_T starts at torch.ones(1)
    assert (ctkd.temp_min, ctkd.temp_range, ctkd.lambda_start, ctkd.lambda_end, ctkd.curriculum_epochs) == \
        (1.0, 20.0, 0.0, 1.0, 10.0)
    assert ctkd.theta.item() == 1.0
    # Jin-Ying/Multi-Level-Logit-Distillation KD_ours.py: cfg.KD.TEMPERATURE (4, engine/cfg.py) and 3, 5, 2, 6
    assert sorted(_build("mlkd").temperatures) == [2.0, 3.0, 4.0, 5.0, 6.0]
    # yzd-v/cls_KD mmcls/models/dis_losses/nkd.py: NKDLoss(temp=1.0, gamma=1.5)
    nkd = _build("nkd")
    assert (nkd.temperature, nkd.gamma) == (1.0, 1.5)
    # bellymonster/Weighted-Soft-Label-Distillation knowledge_distiller.py: self.T = 2, 1e-7 in the ratio
    wsld = _build("wsld")
    assert (wsld.temperature, wsld.eps) == (2.0, 1e-7)


def test_presets_are_the_references_cifar_100_configurations():
    ctkd = _preset("ctkd")
    # zhengli97/CTKD scripts/run_cifar_distill.sh: -r 0.1 (CE) -a 0.9 (KD) -b 0, --decay_loops 10
    assert (ctkd.alpha, ctkd.terms) == (0.1, [{"loss": "ctkd", "weight": 0.9, "options": {"curriculum_epochs": 10}}])
    mlkd = _preset("mlkd")
    # Multi-Level-Logit-Distillation mdistiller/engine/cfg.py: KD.LOSS.CE_WEIGHT 0.1, KD_WEIGHT 0.9, TEMPERATURE 4
    assert (mlkd.alpha, mlkd.temperature) == (0.1, 4.0)
    assert mlkd.terms == [{"loss": "mlkd", "weight": 0.9, "options": {"temperatures": [2.0, 3.0, 4.0, 5.0, 6.0]}}]
    nkd = _preset("nkd")
    # yzd-v/cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: NKDLoss(temp=3.0, gamma=3.5), CE 1
    assert (nkd.alpha, nkd.temperature) == (1.0, 3.0)
    assert nkd.terms == [{"loss": "nkd", "weight": 1.0, "options": {"temperature": 3.0, "gamma": 3.5}}]
    wsld = _preset("wsld")
    # yzd-v/cls_KD res34_distill_res18_cifar.py: WSLDLoss(temp=4.0, alpha=2.25); CE weight 1
    # (bellymonster knowledge_distiller.py: hard_loss + alpha * soft_loss)
    assert (wsld.alpha, wsld.temperature) == (1.0, 4.0)
    assert wsld.terms == [{"loss": "wsld", "weight": 2.25, "options": {"temperature": 4.0}}]


# ------------------------------------------------------------------------------------ shared contract
LOSSES = [("ctkd", CTKDLoss), ("mlkd", MLKDLoss), ("nkd", NKDLoss), ("wsld", WSLDLoss)]


@pytest.mark.parametrize("name, cls", LOSSES)
def test_built_through_the_losses_registry(name, cls):
    assert type(_build(name)).__name__ == cls.__name__


@pytest.mark.parametrize("name, cls", LOSSES)
def test_gradients_reach_the_student_not_the_teacher(name, cls):
    s, t, y = _logits(6, 5, seed=60)
    s = s.float().requires_grad_(True)
    t = t.float().requires_grad_(True)
    value = cls()(_inputs(s, t, y, epoch=3))
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name, cls", LOSSES)
def test_half_precision_logits_are_computed_in_float32(name, cls):
    s, t, y = _logits(4, 6, seed=61)
    value = cls()(_inputs(s.half(), t.half(), y))
    reference = cls()(_inputs(s.half().float(), t.half().float(), y))
    assert value.dtype == torch.float32 and value.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("name, cls", LOSSES)
def test_autocast_does_not_lower_the_precision(name, cls):
    """Under (CPU) bfloat16 autocast the loss is still the float32 one (MLKD's Gram products included)."""
    s, t, y = _logits(6, 5, seed=63)
    s, t = s.float(), t.float()
    reference = cls()(_inputs(s, t, y))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = cls()(_inputs(s, t, y))
    assert value.dtype == torch.float32 and value.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("name, cls", LOSSES)
@pytest.mark.parametrize("teacher_shape", [(4, 9), (3, 6)])
def test_shape_mismatch_is_a_one_line_error_naming_both_shapes(name, cls, teacher_shape):
    s, _, y = _logits(4, 6)
    t = torch.randn(*teacher_shape, dtype=torch.float64)
    _one_line(lambda: cls()(_inputs(s, t, y)), "(4, 6)", str(teacher_shape))


@pytest.mark.parametrize("name, cls", LOSSES)
def test_missing_teacher_logits_is_a_config_error(name, cls):
    s, _, y = _logits(3, 4)
    _one_line(lambda: cls()(_inputs(s, None, y)), "teacher")


@pytest.mark.parametrize("name, cls", [("nkd", NKDLoss), ("wsld", WSLDLoss)])
def test_label_based_losses_need_one_label_per_sample(name, cls):
    s, t, y = _logits(4, 5)
    _one_line(lambda: cls()(_inputs(s, t, None)), f"loss {name}", "labels")
    _one_line(lambda: cls()(_inputs(s, t, y[:3])), f"loss {name}", "(3,)", "(4, 5)")
    _one_line(lambda: cls()(_inputs(s, t, torch.zeros(4, 5))), f"loss {name}", "(4, 5)", "class index")


@pytest.mark.parametrize("name, options, option", [
    ("ctkd", {"temp_min": 0.0}, "temp_min"),
    ("ctkd", {"temp_range": -1.0}, "temp_range"),
    ("ctkd", {"lambda_end": -1.0}, "lambda_end"),
    ("ctkd", {"curriculum_epochs": -2}, "curriculum_epochs"),
    ("mlkd", {"temperatures": [2.0, 0.0]}, "temperatures"),
    ("mlkd", {"temperatures": "four"}, "temperatures"),
    ("nkd", {"gamma": -1.0}, "gamma"),
    ("nkd", {"temperature": 0.0}, "temperature"),
    ("wsld", {"temperature": -4.0}, "temperature"),
    ("wsld", {"eps": 0.0}, "eps"),
])
def test_bad_options_are_one_line_config_errors_naming_the_option(name, options, option):
    _one_line(lambda: _build(name, **options), f"option {option}")


def test_mlkd_needs_at_least_one_temperature():
    _one_line(lambda: _build("mlkd", temperatures=[]), "temperatures", "at least one")


@pytest.mark.parametrize("name", ["ctkd", "mlkd", "nkd", "wsld"])
def test_term_in_the_objective_is_weighted_once(name):
    """Through kdkit's objective: alpha * CE + weight * term, the term's logged value unweighted."""
    s, t, y = _logits(5, 6, seed=62)
    s, t = s.float(), t.float()
    spec = TermSpec(loss=name, weight=2.5, name=name, options={})
    fn = build_term_loss(kdkit.get_registry("losses"), spec)
    distiller = Distiller([spec], [fn], TeacherCombiner("avg_logits", 1), ce_weight=0.5, temperature=4.0)
    total, logs = distiller(s, [t], y, epoch=5)
    ce = torch.nn.functional.cross_entropy(s, y)
    direct = fn(_inputs(s, t, y, temperature=4.0, epoch=5))
    assert logs[name].item() == pytest.approx(direct.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * ce.item() + 2.5 * direct.item(), rel=1e-6)
