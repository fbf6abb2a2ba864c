"""kdkit_methods.logit: DKD, DIST and logit-standardised KD against independent computations.

The references here are plain Python loops over samples and classes with the ``math`` module
(no torch softmax / kl_div), or the papers' identities.
"""
from __future__ import annotations

import math

import pytest
import torch

import kdkit
from kdkit.distill import DistillInputs, Distiller, TeacherCombiner, TermSpec, build_term_loss
from kdkit_methods.logit import (DISTLoss, DKDLoss, LogitStandardKDLoss, dist_relations, dkd_parts, dkd_warmup_factor,
                                 pearson_rows, zscore)


# ------------------------------------------------------------------------------------------ helpers
def _logits(b=4, c=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def _inputs(s, t, y=None, temperature=4.0, epoch=1000):
    return DistillInputs(student_logits=s, teacher_logits=t, labels=y, temperature=temperature, epoch=epoch)


def _softmax(row, temperature=1.0):
    row = [x / temperature for x in row]
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [v / z for v in e]


def _kl(q, p):
    """KL(q || p) of two discrete distributions given as lists."""
    return sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p) if qi > 0)


def _loop_dkd_parts(s_row, t_row, y, temperature):
    p, q = _softmax(s_row, temperature), _softmax(t_row, temperature)
    tckd = _kl([q[y], 1 - q[y]], [p[y], 1 - p[y]])
    p_nt = [p[i] / (1 - p[y]) for i in range(len(p)) if i != y]
    q_nt = [q[i] / (1 - q[y]) for i in range(len(q)) if i != y]
    return tckd, _kl(q_nt, p_nt), q[y]


def _pearson(x, y, eps=1e-8):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    dx, dy = [a - mx for a in x], [b - my for b in y]
    num = sum(a * b for a, b in zip(dx, dy))
    return num / (math.sqrt(sum(a * a for a in dx)) * math.sqrt(sum(b * b for b in dy)) + eps)


def _loop_dist(s, t, beta, gamma, tau):
    ps = [_softmax(row, tau) for row in s.tolist()]
    pt = [_softmax(row, tau) for row in t.tolist()]
    b, c = len(ps), len(ps[0])
    inter = 1 - sum(_pearson(ps[i], pt[i]) for i in range(b)) / b
    intra = 1 - sum(_pearson([ps[i][j] for i in range(b)], [pt[i][j] for i in range(b)]) for j in range(c)) / c
    return tau * tau * (beta * inter + gamma * intra)


def _loop_zscore(row):
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / (n - 1))  # unbiased, as the reference
    return [(x - mean) / (std + 1e-7) for x in row]


def _loop_lskd(s, t, temperature):
    total = 0.0
    for s_row, t_row in zip(s.tolist(), t.tolist()):
        total += _kl(_softmax(_loop_zscore(t_row), temperature), _softmax(_loop_zscore(s_row), temperature))
    return temperature ** 2 * total / s.shape[0]


# ---------------------------------------------------------------------------------------------- DKD
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_parts_match_a_loop(temperature):
    s, t, y = _logits(b=5, c=7, seed=1)
    tckd, nckd = dkd_parts(s, t, y, temperature)
    for b in range(5):
        ref_t, ref_n, _ = _loop_dkd_parts(s[b].tolist(), t[b].tolist(), int(y[b]), temperature)
        assert tckd[b].item() == pytest.approx(ref_t, rel=1e-9, abs=1e-12)
        assert nckd[b].item() == pytest.approx(ref_n, rel=1e-9, abs=1e-12)


def test_dkd_loss_matches_a_loop():
    s, t, y = _logits(b=4, c=6, seed=2)
    loss = DKDLoss(alpha=1.5, beta=3.0, warmup=20)
    value = loss(_inputs(s, t, y, temperature=4.0, epoch=19))  # epoch 19 (0-based) is the 20th: factor 1
    parts = [_loop_dkd_parts(s[b].tolist(), t[b].tolist(), int(y[b]), 4.0) for b in range(4)]
    ref = 16.0 * sum(1.5 * tc + 3.0 * nc for tc, nc, _ in parts) / 4
    assert value.item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dkd_decomposes_classical_kd_per_sample(temperature):
    """Zhao et al. eq. 5: KL(q || p) = TCKD + (1 - q_y) * NCKD, sample by sample."""
    s, t, y = _logits(b=6, c=5, seed=3)
    tckd, nckd = dkd_parts(s, t, y, temperature)
    for b in range(6):
        p, q = _softmax(s[b].tolist(), temperature), _softmax(t[b].tolist(), temperature)
        q_y = q[int(y[b])]
        assert tckd[b].item() + (1 - q_y) * nckd[b].item() == pytest.approx(_kl(q, p), rel=1e-9)
        # the same through the loss: one sample, alpha 1, beta 1 - q_y, no warm-up -> T^2 * KD
        one = DKDLoss(alpha=1.0, beta=1 - q_y, temperature=temperature, warmup=0)
        value = one(_inputs(s[b:b + 1], t[b:b + 1], y[b:b + 1]))
        assert value.item() == pytest.approx(temperature ** 2 * _kl(q, p), rel=1e-9)


def test_dkd_is_not_classical_kd_with_the_default_beta():
    s, t, y = _logits(seed=4)
    kd = 16.0 * sum(_kl(_softmax(t[b].tolist(), 4.0), _softmax(s[b].tolist(), 4.0)) for b in range(4)) / 4
    assert DKDLoss()(_inputs(s, t, y)).item() != pytest.approx(kd, rel=1e-3)


def test_dkd_warmup_factor():
    assert dkd_warmup_factor(0, 20) == pytest.approx(1 / 20)  # first epoch: not 0
    assert dkd_warmup_factor(9, 20) == pytest.approx(0.5)
    assert dkd_warmup_factor(19, 20) == 1.0
    assert dkd_warmup_factor(500, 20) == 1.0
    assert dkd_warmup_factor(0, 1) == 1.0  # mdistiller's ImageNet WARMUP: 1 -> full weight from the start
    assert dkd_warmup_factor(0, 0) == 1.0  # warm-up off


def test_dkd_loss_follows_the_warmup():
    s, t, y = _logits(seed=5)
    loss = DKDLoss(warmup=20)
    full = loss(_inputs(s, t, y, epoch=25)).item()
    assert full > 0
    assert loss(_inputs(s, t, y, epoch=0)).item() == pytest.approx(full / 20, rel=1e-12)
    assert loss(_inputs(s, t, y, epoch=9)).item() == pytest.approx(full / 2, rel=1e-12)
    assert loss(_inputs(s, t, y, epoch=19)).item() == pytest.approx(full, rel=1e-12)


def test_dkd_temperature_option_overrides_distill_temperature():
    s, t, y = _logits(seed=6)
    from_inputs = DKDLoss(warmup=0)(_inputs(s, t, y, temperature=2.0))
    from_option = DKDLoss(temperature=2.0, warmup=0)(_inputs(s, t, y, temperature=4.0))
    other = DKDLoss(warmup=0)(_inputs(s, t, y, temperature=4.0))
    assert from_option.item() == pytest.approx(from_inputs.item(), rel=1e-12)
    assert other.item() != pytest.approx(from_inputs.item(), rel=1e-3)


def test_dkd_is_zero_for_identical_logits_and_finite_for_saturated_ones():
    s, _, y = _logits(seed=7)
    assert DKDLoss(warmup=0)(_inputs(s, s.clone(), y)).item() == pytest.approx(0.0, abs=1e-12)
    # a teacher certain to float precision: 1 - q_y rounds to 0, the log-space parts stay finite
    t = torch.full((2, 4), -200.0)
    t[:, 0] = 200.0
    st = torch.randn(2, 4, requires_grad=True)
    value = DKDLoss(warmup=0)(_inputs(st, t, torch.tensor([0, 1]), temperature=1.0))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(st.grad).all()


def test_dkd_needs_labels():
    s, t, _ = _logits()
    with pytest.raises(kdkit.ConfigError, match="labels"):
        DKDLoss()(_inputs(s, t, None))


# --------------------------------------------------------------------------------------------- DIST
def test_dist_is_zero_when_student_equals_teacher():
    s, _, _ = _logits(seed=8)
    assert DISTLoss()(_inputs(s, s.clone())).item() == pytest.approx(0.0, abs=1e-6)
    # softer probabilities have smaller centred norms, so the reference's eps (1e-8 added to the
    # product of norms) leaves a floor of ~1e-5 here; it is the only deviation from exactly 0
    assert DISTLoss(tau=4.0)(_inputs(s, s.clone())).item() == pytest.approx(0.0, abs=1e-4)
    assert DISTLoss(tau=4.0)(_inputs(s, s.clone())).item() == pytest.approx(_loop_dist(s, s, 1.0, 1.0, 4.0), rel=1e-9)


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_matches_a_loop(beta, gamma, tau):
    s, t, _ = _logits(b=5, c=4, seed=9)
    value = DISTLoss(beta=beta, gamma=gamma, tau=tau)(_inputs(s, t))
    assert value.item() == pytest.approx(_loop_dist(s, t, beta, gamma, tau), rel=1e-9)


def test_dist_tau_none_uses_distill_temperature():
    s, t, _ = _logits(seed=10)
    assert DISTLoss(tau=None)(_inputs(s, t, temperature=3.0)).item() == pytest.approx(
        _loop_dist(s, t, 1.0, 1.0, 3.0), rel=1e-9)


def test_pearson_relations_are_invariant_to_positive_affine_maps():
    """Pearson is invariant to x -> a x + b (a > 0): inter under a map per sample (row), intra
    under a map per class (column)."""
    g = torch.Generator().manual_seed(11)
    ys, yt = torch.rand(5, 6, generator=g, dtype=torch.float64), torch.rand(5, 6, generator=g, dtype=torch.float64)
    inter, intra = dist_relations(ys, yt)
    a_row, b_row = torch.rand(5, 1, dtype=torch.float64, generator=g) * 3 + 0.1, torch.randn(5, 1, generator=g,
                                                                                            dtype=torch.float64)
    a_col, b_col = torch.rand(1, 6, dtype=torch.float64, generator=g) * 3 + 0.1, torch.randn(1, 6, generator=g,
                                                                                            dtype=torch.float64)
    assert dist_relations(a_row * ys + b_row, yt)[0].item() == pytest.approx(inter.item(), rel=1e-6)
    assert dist_relations(a_col * ys + b_col, yt)[1].item() == pytest.approx(intra.item(), rel=1e-6)
    # a negative scale flips the correlation: the check above can fail
    assert pearson_rows(-ys, yt).tolist() == pytest.approx((-pearson_rows(ys, yt)).tolist(), rel=1e-9)


def test_dist_ignores_an_affine_relaxation_of_the_teacher_that_kl_penalises():
    """A student whose probabilities are a p_t + (1 - a) / C (a in (0, 1): a valid distribution, a
    positive affine map of the teacher's, the same for every sample and class) has DIST loss 0
    though its KL to the teacher is not."""
    _, t, _ = _logits(b=6, c=5, seed=12)
    p_t = torch.softmax(t, dim=1)
    a = 0.3
    s = torch.log(a * p_t + (1 - a) / 5)
    assert DISTLoss()(_inputs(s, t)).item() == pytest.approx(0.0, abs=1e-6)
    kl = sum(_kl(_softmax(t[b].tolist()), _softmax(s[b].tolist())) for b in range(6))
    assert kl > 1e-3


# --------------------------------------------------------------------------------------------- LSKD
def test_lskd_matches_kd_of_standardised_logits_in_a_loop():
    s, t, _ = _logits(b=4, c=7, seed=13, scale=3.0)
    for temperature in (1.0, 2.0, 5.0):
        value = LogitStandardKDLoss(temperature=temperature)(_inputs(s, t))
        assert value.item() == pytest.approx(_loop_lskd(s, t, temperature), rel=1e-9)


def test_lskd_default_temperature_is_2_and_none_uses_distill_temperature():
    s, t, _ = _logits(seed=14)
    assert LogitStandardKDLoss()(_inputs(s, t, temperature=4.0)).item() == pytest.approx(_loop_lskd(s, t, 2.0),
                                                                                          rel=1e-9)
    assert LogitStandardKDLoss(temperature=None)(_inputs(s, t, temperature=4.0)).item() == pytest.approx(
        _loop_lskd(s, t, 4.0), rel=1e-9)


def test_lskd_is_invariant_to_shift_and_positive_scale_of_the_logits():
    s, t, _ = _logits(seed=15)
    loss = LogitStandardKDLoss()
    base = loss(_inputs(s, t)).item()
    assert base > 0
    assert loss(_inputs(s + 7.5, t)).item() == pytest.approx(base, rel=1e-6)
    assert loss(_inputs(3.0 * s, t)).item() == pytest.approx(base, rel=1e-6)
    assert loss(_inputs(0.2 * s - 4.0, 5.0 * t + 1.0)).item() == pytest.approx(base, rel=1e-6)
    # plain KD is not: the invariance is the standardisation's doing
    kd = [sum(_kl(_softmax(tr, 2.0), _softmax(sr, 2.0)) for sr, tr in zip(x.tolist(), t.tolist())) for x in (s, 3 * s)]
    assert kd[0] != pytest.approx(kd[1], rel=1e-3)


def test_zscore_uses_the_unbiased_std():
    z = zscore(torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64))
    assert z[0].tolist() == pytest.approx(_loop_zscore([1.0, 2.0, 3.0, 6.0]), rel=1e-12)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert z.std().item() == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------------------------------------------------ shared contract
LOSSES = [("dkd", DKDLoss), ("dist", DISTLoss), ("lskd", LogitStandardKDLoss)]


@pytest.mark.parametrize("name, cls", LOSSES)
@pytest.mark.parametrize("teacher_shape", [(4, 9), (3, 6)])
def test_shape_mismatch_names_both_shapes(name, cls, teacher_shape):
    s, _, y = _logits(b=4, c=6)
    t = torch.randn(*teacher_shape, dtype=torch.float64)
    with pytest.raises(kdkit.ConfigError) as err:
        cls()(_inputs(s, t, y))
    message = str(err.value)
    assert "(4, 6)" in message and str(teacher_shape) in message and "\n" not in message


@pytest.mark.parametrize("name, cls", LOSSES)
def test_missing_teacher_logits_is_a_config_error(name, cls):
    s, _, y = _logits()
    with pytest.raises(kdkit.ConfigError, match="teacher"):
        cls()(_inputs(s, None, y))


@pytest.mark.parametrize("name, options, option", [
    ("dkd", {"beta": -1.0}, "beta"),
    ("dkd", {"alpha": -0.5}, "alpha"),
    ("dkd", {"warmup": -1}, "warmup"),
    ("dkd", {"temperature": 0.0}, "temperature"),
    ("dkd", {"beta": "eight"}, "beta"),
    ("dkd", {"alpha": True}, "alpha"),
    ("dist", {"gamma": -1.0}, "gamma"),
    ("dist", {"beta": float("nan")}, "beta"),
    ("dist", {"tau": 0.0}, "tau"),
    ("lskd", {"temperature": -2.0}, "temperature"),
    ("lskd", {"eps": 0.0}, "eps"),
])
def test_bad_options_are_config_errors_naming_the_option_and_range(name, options, option):
    """Checked by the options the loss declared when it was registered (one validation system)."""
    with pytest.raises(kdkit.ConfigError) as err:
        kdkit.get_registry("losses").build(name, **options)
    message = str(err.value)
    assert f"option {option}" in message and ", inf)" in message and "\n" not in message


@pytest.mark.parametrize("name, cls", LOSSES)
def test_built_through_the_losses_registry(name, cls):
    registry = kdkit.get_registry("losses")
    assert name in registry
    options = {"dkd": {"alpha": 1.0, "beta": 2.0}, "dist": {"gamma": 2.0}, "lskd": {"temperature": 3.0}}[name]
    loss = registry.build(name, **options)
    assert type(loss).__name__ == cls.__name__
    for key, value in options.items():
        assert getattr(loss, key) == value


@pytest.mark.parametrize("name, cls", LOSSES)
def test_gradients_reach_the_student_not_the_teacher(name, cls):
    s, t, y = _logits(seed=16)
    s = s.float().requires_grad_(True)
    t = t.float().requires_grad_(True)
    value = cls()(_inputs(s, t, y))
    assert value.dim() == 0 and value.dtype == torch.float32
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", ["dkd", "dist", "lskd"])
def test_term_in_the_objective_is_weighted_once(name):
    """Through kdkit's objective: alpha * CE + weight * term, the term's logged value unweighted."""
    s, t, y = _logits(seed=17)
    s, t = s.float(), t.float()
    spec = TermSpec(loss=name, weight=2.5, name=name, options={})
    fn = build_term_loss(kdkit.get_registry("losses"), spec)
    distiller = Distiller([spec], [fn], TeacherCombiner("avg_logits", 1), ce_weight=0.5, temperature=4.0)
    total, logs = distiller(s, [t], y, epoch=30)
    ce = torch.nn.functional.cross_entropy(s, y)
    direct = fn(_inputs(s, t, y, temperature=4.0, epoch=30))
    assert logs[name].item() == pytest.approx(direct.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * ce.item() + 2.5 * direct.item(), rel=1e-6)
