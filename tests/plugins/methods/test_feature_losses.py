"""The feature losses of kdkit_methods (at, pkt, rkd, sp, nst).

Each loss is checked against an independent plain-Python computation (loops over samples,
pairs and triplets with the math module) or a hand-derived value, against the identities its
paper states, and for its error messages, gradients and dtype handling.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kdkit_methods.feature import ATLoss, NSTLoss, PKTLoss, RKDLoss, SPLoss  # plugins/: tests/conftest.py

import kdkit
from kdkit.distill import DistillInputs, TermSpec, build_term_loss

NAMES = ["at", "pkt", "rkd", "sp", "nst"]
CLASSES = {"at": ATLoss, "pkt": PKTLoss, "rkd": RKDLoss, "sp": SPLoss, "nst": NSTLoss}
SPATIAL = {"at", "nst"}  # need B x C x H x W maps


def build(name, **options):
    return kdkit.get_registry("losses").build(name, **options)


def inputs(student, teacher):
    return DistillInputs(student_logits=torch.zeros(2, 3), student_feature=student, teacher_feature=teacher)


def value(loss, student, teacher) -> float:
    return float(loss(inputs(student, teacher)))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).float()


def features(batch=4, channels=3, seed=0):
    """A tiny B x C x H x W feature, which every loss accepts (the relational ones flatten it)."""
    return randn(batch, channels, 3, 2, seed=seed)


# ------------------------------------------------------------------ plain-Python references (no torch ops)

def rows(x):
    """Each sample as a flat Python list of floats."""
    return [list(map(float, r)) for r in x.reshape(x.shape[0], -1).tolist()]


def norm(v):
    return math.sqrt(sum(a * a for a in v))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def huber(d):
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


def ref_at(s, t, p=2.0):
    """mean over samples and positions of (q_s/|q_s| - q_t/|q_t|)^2, q = mean_c |A_c|^p."""
    def attention(x):
        out = []
        for sample in x.tolist():
            positions = len(sample[0]) * len(sample[0][0])
            q = [0.0] * positions
            for channel in sample:
                flat = [v for row in channel for v in row]
                for j, v in enumerate(flat):
                    q[j] += abs(v) ** p / len(sample)
            n = norm(q)
            out.append([v / n for v in q])
        return out
    a_s, a_t = attention(s), attention(t)
    total = sum((u - v) ** 2 for qs, qt in zip(a_s, a_t) for u, v in zip(qs, qt))
    return total / (len(a_s) * len(a_s[0]))


def ref_pkt(s, t, eps=1e-7):
    def distribution(x):
        vs = [[a / (norm(v) + eps) for a in v] for v in rows(x)]
        k = [[(dot(a, b) + 1.0) / 2.0 for b in vs] for a in vs]
        return [[kij / sum(row) for kij in row] for row in k]
    p_s, p_t = distribution(s), distribution(t)
    b = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(b) for j in range(b)) / b ** 2


def ref_rkd(s, t, w_d=25.0, w_a=50.0):
    def distances(x):
        vs = rows(x)
        b = len(vs)
        d = [[0.0 if i == j else math.sqrt(sum((u - v) ** 2 for u, v in zip(vs[i], vs[j]))) for j in range(b)]
             for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mean for v in row] for row in d]

    def angles(x):
        vs = rows(x)
        b = len(vs)
        out = []
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    e_ij = [u - v for u, v in zip(vs[j], vs[i])]
                    e_ik = [u - v for u, v in zip(vs[k], vs[i])]
                    n_ij, n_ik = norm(e_ij), norm(e_ik)
                    out.append(0.0 if n_ij == 0 or n_ik == 0 else dot(e_ij, e_ik) / (n_ij * n_ik))
        return out
    d_s, d_t = distances(s), distances(t)
    b = len(d_s)
    loss_d = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(b) for j in range(b)) / b ** 2
    a_s, a_t = angles(s), angles(t)
    loss_a = sum(huber(u - v) for u, v in zip(a_s, a_t)) / b ** 3
    return w_d * loss_d + w_a * loss_a


def ref_sp(s, t):
    def gram(x):
        vs = rows(x)
        g = [[dot(a, b) for b in vs] for a in vs]
        return [[v / norm(row) for v in row] for row in g]
    g_s, g_t = gram(s), gram(t)
    b = len(g_s)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


def ref_nst(s, t, degree=2, constant=0.0):
    def channels(x):  # per sample: the L2-normalised spatial activation of every channel
        out = []
        for sample in x.tolist():
            chans = [[v for row in channel for v in row] for channel in sample]
            out.append([[v / norm(c) for v in c] for c in chans])
        return out

    def kernel_mean(a, b):
        return sum((dot(x, y) + constant) ** degree for x in a for y in b) / (len(a) * len(b))
    cs, ct = channels(s), channels(t)
    per_sample = [kernel_mean(t_, t_) + kernel_mean(s_, s_) - 2 * kernel_mean(s_, t_) for s_, t_ in zip(cs, ct)]
    return sum(per_sample) / len(per_sample)


# ------------------------------------------------------------------------------------ registry, options

@pytest.mark.parametrize("name", NAMES)
def test_built_through_the_registry(name):
    loss = build(name)
    assert isinstance(loss, CLASSES[name]) and callable(loss)
    assert kdkit.get_registry("losses").get(name).plugin == "methods"


def test_defaults_are_the_references():
    assert build("at").p == 2.0
    assert build("pkt").eps == 1e-7 and build("pkt").pool is False
    rkd = build("rkd")
    assert (rkd.distance_weight, rkd.angle_weight, rkd.squared, rkd.eps, rkd.pool) == (25.0, 50.0, False, 1e-12, False)
    assert (build("nst").degree, build("nst").constant) == (2, 0.0)


def test_build_term_loss_uses_the_new_contract():
    """The loss is not mistaken for a legacy (student_logits, teacher_logits, T) callable."""
    spec = TermSpec(loss="at", weight=1000.0, student="layer3", teacher="layer3")
    loss = build_term_loss(kdkit.get_registry("losses"), spec)
    s, t = randn(2, 3, 4, 4, seed=1), randn(2, 5, 4, 4, seed=2)
    assert value(loss, s, t) == pytest.approx(ref_at(s, t), rel=1e-5)


def test_the_distiller_hands_a_list_term_its_layers_in_order():
    """End to end through kdkit.distill.Distiller: a term naming lists of paths sees lists of
    tensors, and the objective is alpha * CE + weight * (sum over the pairs)."""
    from kdkit.distill import Distiller, TeacherCombiner

    paths = ("layer1", "layer2", "layer3")
    spec = TermSpec(loss="at", weight=1000.0, name="at", student=paths, teacher=paths)
    distiller = Distiller([spec], [build_term_loss(kdkit.get_registry("losses"), spec)], TeacherCombiner(),
                          ce_weight=1.0, temperature=4.0)
    s = {p: randn(2, 3, 4 // (i + 1), 4 // (i + 1), seed=60 + i) for i, p in enumerate(paths)}
    t = {p: randn(2, 5, 4 // (i + 1), 4 // (i + 1), seed=70 + i) for i, p in enumerate(paths)}
    logits, labels = randn(2, 3, seed=80), torch.tensor([0, 2])
    loss, logs = distiller(logits, [randn(2, 3, seed=81)], labels, student_features=s, teacher_features=[t])
    expected = sum(ref_at(s[p], t[p]) for p in paths)
    assert float(logs["at"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, labels)) + 1000 * expected, rel=1e-5)


@pytest.mark.parametrize("name, options, fragment", [
    ("at", {"p": 0}, "option p"),
    ("at", {"p": "two"}, "option p"),
    ("pkt", {"eps": -1.0}, "option eps"),
    ("pkt", {"pool": "yes"}, "option pool"),
    ("rkd", {"distance_weight": 0, "angle_weight": 0}, "both 0"),
    ("rkd", {"angle_weight": -1}, "option angle_weight"),
    ("rkd", {"squared": 1}, "option squared"),
    ("nst", {"degree": 0}, "option degree"),
    ("nst", {"degree": 1.5}, "option degree"),
    ("nst", {"constant": float("nan")}, "option constant"),
])
def test_invalid_options_are_one_line_config_errors(name, options, fragment):
    with pytest.raises(kdkit.ConfigError) as err:
        build(name, **options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------- values vs. independent loops

def test_at_matches_a_loop_and_a_hand_value():
    s, t = randn(3, 4, 3, 3, seed=1), randn(3, 6, 3, 3, seed=2)
    assert value(build("at"), s, t) == pytest.approx(ref_at(s, t), rel=1e-5)
    assert value(build("at", p=4), s, t) == pytest.approx(ref_at(s, t, p=4), rel=1e-5)
    assert value(build("at", p=3), s, t) == pytest.approx(ref_at(s, t, p=3), rel=1e-5)  # |A|^p, not A^p
    # one sample, one channel, two positions: attention (1, 0) vs (0, 1) -> mean((1, -1)^2) = 1
    hand_s, hand_t = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 3.0]]]])
    assert value(build("at"), hand_s, hand_t) == pytest.approx(1.0)


def test_at_and_nst_pool_the_larger_map_to_the_smaller():
    s, t = randn(2, 3, 4, 4, seed=3), randn(2, 5, 2, 2, seed=4)
    pooled = F.avg_pool2d(s, 2)  # 4x4 -> 2x2 in 2x2 blocks, what adaptive pooling to 2x2 does
    for name, ref in (("at", ref_at), ("nst", ref_nst)):
        assert value(build(name), s, t) == pytest.approx(ref(pooled, t), rel=1e-5)
        assert value(build(name), t, s) == pytest.approx(ref(t, pooled), rel=1e-5)


def test_pkt_matches_a_loop_and_a_hand_value():
    s, t = randn(5, 7, seed=5), randn(5, 4, seed=6)
    assert value(build("pkt"), s, t) == pytest.approx(ref_pkt(s, t), rel=1e-5)
    maps_s, maps_t = randn(4, 3, 2, 2, seed=7), randn(4, 2, 3, 3, seed=8)  # flattened
    assert value(build("pkt"), maps_s, maps_t) == pytest.approx(ref_pkt(maps_s, maps_t), rel=1e-5)
    # pool: average over positions first
    assert value(build("pkt", pool=True), maps_s, maps_t) == pytest.approx(
        ref_pkt(maps_s.mean((2, 3)), maps_t.mean((2, 3))), rel=1e-5)
    # teacher: orthogonal -> rows (2/3, 1/3); student: parallel -> rows (1/2, 1/2)
    hand = (2 / 3 * math.log((2 / 3) / (1 / 2)) + 1 / 3 * math.log((1 / 3) / (1 / 2))) / 2
    s_hand, t_hand = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert value(build("pkt"), s_hand, t_hand) == pytest.approx(hand, rel=1e-5)


def test_rkd_matches_a_loop():
    s, t = randn(4, 3, seed=9), randn(4, 5, seed=10)
    assert value(build("rkd"), s, t) == pytest.approx(ref_rkd(s, t), rel=1e-5)
    assert value(build("rkd", distance_weight=1, angle_weight=0), s, t) == pytest.approx(ref_rkd(s, t, 1, 0), rel=1e-5)
    assert value(build("rkd", distance_weight=0, angle_weight=1), s, t) == pytest.approx(ref_rkd(s, t, 0, 1), rel=1e-5)
    maps_s, maps_t = randn(3, 2, 2, 2, seed=11), randn(3, 4, 1, 2, seed=12)
    assert value(build("rkd"), maps_s, maps_t) == pytest.approx(ref_rkd(maps_s, maps_t), rel=1e-5)
    assert value(build("rkd", pool=True), maps_s, maps_t) == pytest.approx(
        ref_rkd(maps_s.mean((2, 3)), maps_t.mean((2, 3))), rel=1e-5)


def test_rkd_hand_value_of_the_distance_term():
    # student on a line 0, 1, 2: distances (1, 2, 1) / mean 4/3 -> (3/4, 3/2, 3/4)
    # teacher an equilateral triangle: every distance / mean = 1
    s = torch.tensor([[0.0], [1.0], [2.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    pairs = [3 / 4, 3 / 2, 3 / 4] * 2  # the off-diagonal entries, both orders
    hand = sum(huber(d - 1.0) for d in pairs) / 9
    assert value(build("rkd", distance_weight=1, angle_weight=0), s, t) == pytest.approx(hand, rel=1e-5)


def test_sp_matches_a_loop_and_a_hand_value():
    s, t = randn(4, 3, 2, 2, seed=13), randn(4, 5, 3, 1, seed=14)  # channels and spatial sizes differ
    assert value(build("sp"), s, t) == pytest.approx(ref_sp(s, t), rel=1e-5)
    # student orthogonal: normalised G = I; teacher parallel: every row (1, 1) / sqrt(2)
    s_hand, t_hand = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    hand = (2 * (1 - r) ** 2 + 2 * (0 - r) ** 2) / 4
    assert value(build("sp"), s_hand, t_hand) == pytest.approx(hand, rel=1e-5)


def test_nst_matches_a_loop():
    s, t = randn(2, 3, 2, 3, seed=15), randn(2, 5, 2, 3, seed=16)
    assert value(build("nst"), s, t) == pytest.approx(ref_nst(s, t), rel=1e-5)
    assert value(build("nst", degree=3, constant=0.5), s, t) == pytest.approx(ref_nst(s, t, 3, 0.5), rel=1e-5)


# --------------------------------------------------------------------------------- the papers' identities

@pytest.mark.parametrize("name", NAMES)
def test_zero_when_the_features_are_equal(name):
    f = features(seed=17)
    assert value(build(name), f, f.clone()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_zero_for_a_positive_multiple_of_the_teacher(name):
    t = features(seed=18)
    assert value(build(name), 3.5 * t, t) == pytest.approx(0.0, abs=1e-6)
    assert value(build(name), t, 0.25 * t) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_not_zero_for_different_features(name):
    """The identities above are not vacuous: unrelated features give a positive loss."""
    assert value(build(name), features(seed=19), features(seed=20)) > 1e-4


def test_rkd_is_invariant_to_a_global_scale_of_either_feature():
    s, t = randn(5, 4, seed=21), randn(5, 6, seed=22)
    base = value(build("rkd"), s, t)
    assert base > 1e-3
    assert value(build("rkd"), 7.5 * s, t) == pytest.approx(base, rel=1e-4)
    assert value(build("rkd"), s, 0.02 * t) == pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize("name", ["pkt", "rkd", "sp"])
def test_relational_losses_accept_different_channel_counts(name):
    s, t = randn(4, 6, seed=23), randn(4, 11, seed=24)
    assert math.isfinite(value(build(name), s, t))
    s_map, t_map = randn(4, 2, 3, 3, seed=25), randn(4, 8, 2, 2, seed=26)
    assert math.isfinite(value(build(name), s_map, t_map))


@pytest.mark.parametrize("name", NAMES)
def test_a_list_of_layers_is_the_sum_over_the_pairs(name):
    pairs = [(features(channels=2, seed=30), features(channels=4, seed=31)),
             (randn(4, 3, 2, 2, seed=32), randn(4, 5, 2, 2, seed=33)),
             (randn(4, 2, 1, 3, seed=34), randn(4, 3, 1, 3, seed=35))]
    loss = build(name)
    separate = [value(loss, s, t) for s, t in pairs]
    together = value(loss, [s for s, _ in pairs], [t for _, t in pairs])
    assert together == pytest.approx(sum(separate), rel=1e-5)
    assert min(separate) > 0  # a sum of positive parts, not one of them
    assert value(loss, tuple(s for s, _ in pairs), tuple(t for _, t in pairs)) == pytest.approx(together)


def test_rkd_batch_of_one_is_zero_not_nan():
    s = randn(1, 4, seed=36).requires_grad_()
    out = build("rkd")(inputs(s, randn(1, 4, seed=37)))
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# ---------------------------------------------------------------------------------------------- errors

def one_line_error(loss, student, teacher) -> str:
    with pytest.raises(kdkit.ConfigError) as err:
        loss(inputs(student, teacher))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_different_batch_sizes_are_a_one_line_error_naming_both_shapes(name):
    s, t = randn(4, 3, 2, 2, seed=40), randn(5, 3, 2, 2, seed=41)
    message = one_line_error(build(name), s, t)
    assert "(4, 3, 2, 2)" in message and "(5, 3, 2, 2)" in message and "batch" in message
    # inside a list too, naming the pair
    good = randn(4, 3, 2, 2, seed=42)
    message = one_line_error(build(name), [good, s], [good, t])
    assert "(4, 3, 2, 2)" in message and "(5, 3, 2, 2)" in message and "pair 2 of 2" in message


@pytest.mark.parametrize("name", NAMES)
def test_lists_of_different_lengths_are_a_one_line_error(name):
    f = features(seed=43)
    message = one_line_error(build(name), [f, f], [f])
    assert "2 student features" in message and "1 teacher features" in message
    message = one_line_error(build(name), [f, f], f)
    assert "list of 2" in message and "one tensor" in message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("missing", ["student", "teacher"])
def test_a_missing_feature_says_which_key_to_add(name, missing):
    f = features(seed=44)
    s, t = (None, f) if missing == "student" else (f, None)
    message = one_line_error(build(name), s, t)
    assert f"{missing}:" in message and name in message


@pytest.mark.parametrize("name", sorted(SPATIAL))
def test_at_and_nst_need_spatial_maps(name):
    message = one_line_error(build(name), randn(4, 8, seed=45), randn(4, 8, seed=46))
    assert "(4, 8)" in message and "B x C x H x W" in message


def test_a_non_tensor_or_missing_entry_is_a_one_line_error():
    message = one_line_error(build("sp"), (randn(2, 3),), ({"out": randn(2, 3)},))
    assert "dict" in message
    message = one_line_error(build("sp"), [randn(2, 3), None], [randn(2, 3), randn(2, 3)])
    assert "student feature (pair 2 of 2) is missing" in message


# ------------------------------------------------------------------------------------ gradients, dtype

@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_feature_only(name):
    s = features(seed=50).requires_grad_()
    t = features(channels=5, seed=51).requires_grad_()  # even if the teacher's were not detached
    build(name)(inputs(s, t)).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_computed_in_float32(name):
    s, t = features(seed=52), features(channels=5, seed=53)
    expected = value(build(name), s, t)
    half = build(name)(inputs(s.bfloat16(), t.bfloat16()))
    assert half.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build(name)(inputs(s, t))
    assert out.dtype == torch.float32 and float(out) == pytest.approx(expected, rel=1e-5)
