"""The losses of kdkit_methods with trainable parts and state: vid, crd and reviewkd.

Each formula is checked against an independent computation (plain loops with the math module,
hand-written matrix products, hand-derived weights), CRD's memory bank against the momentum rule
row by row (also with two gloo processes), and every loss for its one-line errors, its gradients
(to the student features and its own parameters, never to the teacher features) and the
state_dict round trip that exact resume needs.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import kdkit
from kdkit.distill import DistillInputs

try:
    import kdkit_methods  # noqa: F401
except ImportError:  # the editable install predates plugins/kdkit_methods
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))

from kdkit_methods.crd import CRDLoss, nce_loss  # noqa: E402
from kdkit_methods.reviewkd import ABF, ReviewKDLoss, hcl_loss, warmup_factor  # noqa: E402
from kdkit_methods.vid import VIDLoss, pred_variance, variance_logit, vid_nll  # noqa: E402

# float(loss value) on a graph is intended throughout
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def build(name, **options):
    return kdkit.get_registry("losses").build(name, **options)


def inputs(student, teacher, **kw):
    return DistillInputs(student_logits=torch.zeros(2, 3), student_feature=student, teacher_feature=teacher, **kw)


def randn(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return x.requires_grad_(grad)


def sgd_step(module, lr):
    """One plain gradient step, so that the state differs from its initialisation."""
    with torch.no_grad():
        for p in module.parameters():
            p -= lr * p.grad


def one_line_error(fn, *match):
    with pytest.raises(kdkit.ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for m in match:
        assert m in message, message
    return message


def test_the_registry_builds_the_three_classes():
    assert isinstance(build("vid"), VIDLoss)
    assert isinstance(build("crd"), CRDLoss)
    assert isinstance(build("reviewkd"), ReviewKDLoss)


# ============================================================================================== VID

def test_vid_nll_matches_a_plain_loop():
    mu, t = randn(2, 3, 2, 2, seed=1), randn(2, 3, 2, 2, seed=2)
    var = torch.tensor([0.5, 2.0, 5.0])
    total, count = 0.0, 0
    for b in range(2):
        for c in range(3):
            for h in range(2):
                for w in range(2):
                    v = float(var[c])
                    total += 0.5 * (math.log(v) + (float(mu[b, c, h, w]) - float(t[b, c, h, w])) ** 2 / v)
                    count += 1
    assert float(vid_nll(mu, t, var)) == pytest.approx(total / count, rel=1e-6)


def test_vid_variance_starts_at_init_pred_var():
    alpha = torch.tensor([variance_logit(5.0, 1e-5)], dtype=torch.float64)
    assert float(pred_variance(alpha, 1e-5)) == pytest.approx(5.0, rel=1e-12)
    # softplus(alpha) + eps == log(1 + exp(alpha)) + eps (RepDistiller's expression)
    a = torch.tensor([-3.0, 0.0, 2.5], dtype=torch.float64)
    assert torch.allclose(pred_variance(a, 1e-5), torch.log(1 + torch.exp(a)) + 1e-5)


def _regress(weights, x):
    """The regressor by hand: 1x1 convolutions are channel matrix products, ReLU between them."""
    w1, w2, w3 = (w[:, :, 0, 0] for w in weights)
    h = torch.einsum("oc,bchw->bohw", w1, x).clamp_min(0)
    h = torch.einsum("oc,bchw->bohw", w2, h).clamp_min(0)
    return torch.einsum("oc,bchw->bohw", w3, h)


def test_vid_sums_the_layers_nll_of_its_regressors():
    s = [randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)]
    t = [randn(2, 4, 4, 4, seed=3), randn(2, 6, 2, 2, seed=4)]
    loss = build("vid")
    value = float(loss(inputs(s, t)))
    expected = 0.0
    for i, (si, ti) in enumerate(zip(s, t)):
        convs = [m.weight.detach() for m in loss.regressors[i] if isinstance(m, torch.nn.Conv2d)]
        assert [tuple(w.shape) for w in convs] == [(ti.shape[1], si.shape[1], 1, 1), (ti.shape[1],) * 2 + (1, 1),
                                                   (ti.shape[1],) * 2 + (1, 1)]  # mid = teacher channels
        assert all(m.bias is None for m in loss.regressors[i] if isinstance(m, torch.nn.Conv2d))
        mu = _regress(convs, si)
        expected += float(torch.mean(0.5 * (math.log(5.0) + (mu - ti) ** 2 / 5.0)))
    assert value == pytest.approx(expected, rel=1e-5)
    wide = build("vid", mid_channels=7)
    wide(inputs(s, t))
    assert wide.regressors[1][0].weight.shape == (7, 5, 1, 1) and wide.regressors[1][4].weight.shape == (6, 7, 1, 1)


def test_vid_pools_the_larger_map_and_takes_vectors():
    loss = build("vid")
    s, t = randn(2, 3, 8, 8, seed=1), randn(2, 4, 4, 4, seed=2)
    a = float(loss(inputs(s, t)))
    assert a == pytest.approx(float(loss(inputs(F.adaptive_avg_pool2d(s, 4), t))), rel=1e-6)
    loss2 = build("vid")
    s2, t2 = randn(2, 3, 2, 2, seed=1), randn(2, 4, 4, 4, seed=2)
    b = float(loss2(inputs(s2, t2)))
    assert b == pytest.approx(float(loss2(inputs(s2, F.adaptive_avg_pool2d(t2, 2)))), rel=1e-6)
    v = build("vid")
    vs, vt = randn(3, 5, seed=1), randn(3, 6, seed=2)
    assert float(v(inputs(vs, vt))) == pytest.approx(float(v(inputs(vs[:, :, None, None], vt[:, :, None, None]))))


def test_vid_gradients_reach_the_student_and_its_parameters_only():
    s, t = [randn(2, 3, 4, 4, seed=1, grad=True)], [randn(2, 4, 4, 4, seed=2, grad=True)]
    loss = build("vid")
    loss(inputs(s, t)).backward()
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0
    assert t[0].grad is None
    params = list(loss.parameters())
    assert len(params) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_vid_state_round_trips():
    s1, t1 = [randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)], [randn(2, 4, 4, 4, seed=3), randn(2, 6, 2, 2, seed=4)]
    s2, t2 = [randn(2, 3, 4, 4, seed=5), randn(2, 5, 2, 2, seed=6)], [randn(2, 4, 4, 4, seed=7), randn(2, 6, 2, 2, seed=8)]
    torch.manual_seed(0)
    a = build("vid")
    a(inputs(s1, t1)).backward()
    sgd_step(a, 0.1)  # trained state, not the initial one
    torch.manual_seed(1)
    b = build("vid")
    with torch.no_grad():
        b(inputs(s1, t1))
    assert float(a(inputs(s2, t2))) != pytest.approx(float(b(inputs(s2, t2))))
    b.load_state_dict(a.state_dict())
    assert float(a(inputs(s2, t2))) == float(b(inputs(s2, t2)))


def test_vid_errors_are_one_line():
    s, t = randn(2, 3, 4, 4), randn(2, 4, 4, 4)
    one_line_error(lambda: build("vid")(inputs(None, t)), "student")
    one_line_error(lambda: build("vid")(inputs(s, None)), "teacher")
    one_line_error(lambda: build("vid")(inputs([s, s], [t])), "2 student", "1 teacher")
    one_line_error(lambda: build("vid")(inputs([s], t)), "same number")
    one_line_error(lambda: build("vid")(inputs(s, randn(2, 4))), "(2, 3, 4, 4)", "(2, 4)")
    one_line_error(lambda: build("vid")(inputs(s, randn(3, 4, 4, 4))), "batch size")
    one_line_error(lambda: build("vid")(inputs(randn(2, 3, 8, 2), randn(2, 4, 4, 4))), "(2, 3, 8, 2)")
    built = build("vid")
    built(inputs(s, t))
    one_line_error(lambda: built(inputs(randn(2, 5, 4, 4), t)), "channels")
    for options in ({"eps": 0}, {"eps": "x"}, {"init_pred_var": -1.0}, {"init_pred_var": 1e-6},
                    {"mid_channels": 0}, {"mid_channels": 2.5}, {"mid_channels": True}):
        one_line_error(lambda: build("vid", **options), "vid", "option")  # declared ranges, or the class's rule
    one_line_error(lambda: build("vid", nonsense=1), "loss 'vid': unknown option 'nonsense'")


# ============================================================================================== CRD

def test_nce_loss_matches_a_hand_computation():
    probs = torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.05, 0.9]], dtype=torch.float64)
    n, eps = 10, 1e-7
    noise = 2 / n  # K / N
    total = 0.0
    for row in probs.tolist():
        total += math.log(row[0] / (row[0] + noise + eps))
        total += sum(math.log(noise / (p + noise + eps)) for p in row[1:])
    assert float(nce_loss(probs, n)) == pytest.approx(-total / 2, rel=1e-12)


def _crd_batch(rows=3, d_s=5, d_t=6, seed=0):
    return randn(rows, d_s, seed=seed), randn(rows, d_t, seed=seed + 1)


def _built_crd(n=7, feat_dim=4, nce_k=3, **kw):
    """A crd loss built by an eval-mode call (as kdkit materialises it), then given a hand-set bank."""
    torch.manual_seed(0)
    loss = build("crd", feat_dim=feat_dim, nce_k=nce_k, **kw)
    f_s, f_t = _crd_batch()
    loss.eval()
    with torch.no_grad():
        loss(inputs(f_s, f_t, indices=torch.tensor([0, 1, 2]), num_samples=n))
    loss.train()
    bank = F.normalize(randn(2 * n, feat_dim, seed=9), dim=1)
    loss.memory_s.copy_(bank[:n])
    loss.memory_t.copy_(bank[n:])
    return loss


def test_crd_build_and_eval_calls_change_no_state():
    loss = _built_crd()
    assert float(loss.z_s) == -1 and float(loss.z_t) == -1
    assert loss.memory_s.shape == (7, 4) and loss.memory_t.shape == (7, 4)
    before = loss.memory_s.clone()
    loss.eval()
    f_s, f_t = _crd_batch(seed=4)
    loss(inputs(f_s, f_t, indices=torch.tensor([3, 4, 5]), num_samples=7))
    assert torch.equal(loss.memory_s, before) and float(loss.z_s) == -1


def test_crd_loss_for_given_negatives_matches_an_independent_computation():
    n, t = 7, 0.07
    loss = _built_crd(n=n)
    bank_s, bank_t = loss.memory_s.clone().double(), loss.memory_t.clone().double()
    f_s, f_t = _crd_batch(seed=4)
    idx = torch.tensor([5, 0, 3])
    negatives = torch.tensor([[1, 2, 6], [4, 4, 2], [0, 6, 1]])

    def embed(f, lin):  # the head by hand: x W^T + b, divided by its norm
        e = f.double() @ lin.weight.detach().double().t() + lin.bias.detach().double()
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in e.tolist()]

    v_s, v_t = embed(f_s, loss.embed_s), embed(f_t, loss.embed_t)

    def scores(v, bank):
        out = []
        for b in range(3):
            cols = [int(idx[b])] + [int(j) for j in negatives[b]]
            out.append([math.exp(sum(x * y for x, y in zip(v[b], bank[j].tolist())) / t) for j in cols])
        return out

    out_s, out_t = scores(v_s, bank_t), scores(v_t, bank_s)
    z_s = n * sum(map(sum, out_s)) / 12  # N * mean over the 3 x (1 + 3) scores
    z_t = n * sum(map(sum, out_t)) / 12

    def nce(out, z):
        k, noise = 3, 3 / n
        total = 0.0
        for row in out:
            p = [x / z for x in row]
            total += math.log(p[0] / (p[0] + noise + 1e-7)) + sum(math.log(noise / (q + noise + 1e-7)) for q in p[1:])
        return -total / 3

    value = loss(inputs(f_s, f_t, indices=idx, num_samples=n), negatives=negatives)
    assert float(value) == pytest.approx(nce(out_s, z_s) + nce(out_t, z_t), rel=1e-5)
    # Z: set on this first training call, as N * mean(exp(scores / T)), and kept afterwards
    assert float(loss.z_s) == pytest.approx(z_s, rel=1e-5) and float(loss.z_t) == pytest.approx(z_t, rel=1e-5)
    loss(inputs(f_s, f_t, indices=torch.tensor([1, 2, 4]), num_samples=n))
    assert float(loss.z_s) == pytest.approx(z_s, rel=1e-5)


def test_crd_updates_exactly_the_batch_rows_with_the_momentum_mix():
    n, m = 7, 0.3
    loss = _built_crd(n=n, nce_mom=m)
    before_s, before_t = loss.memory_s.clone(), loss.memory_t.clone()
    f_s, f_t = _crd_batch(seed=4)
    idx = torch.tensor([5, 0, 3])
    with torch.no_grad():
        v_s, v_t = loss.embeddings(f_s, f_t)
    loss(inputs(f_s, f_t, indices=idx, num_samples=n))
    for bank, before, v in ((loss.memory_s, before_s, v_s), (loss.memory_t, before_t, v_t)):
        for row in range(n):
            if row in idx.tolist():
                b = idx.tolist().index(row)
                mixed = [m * x + (1 - m) * y for x, y in zip(before[row].tolist(), v[b].tolist())]
                norm = math.sqrt(sum(x * x for x in mixed))
                assert bank[row].tolist() == pytest.approx([x / norm for x in mixed], rel=1e-5)
            else:
                assert torch.equal(bank[row], before[row])


def test_crd_update_of_a_repeated_index_uses_its_first_occurrence():
    loss = _built_crd(nce_mom=0.25)
    before = loss.memory_s.clone()
    v = F.normalize(randn(3, 4, seed=3), dim=1)
    loss.update_memory(v, v, torch.tensor([2, 2, 6]))
    expected = F.normalize(0.25 * before[2] + 0.75 * v[0], dim=0)
    assert torch.allclose(loss.memory_s[2], expected, atol=1e-6)


def test_crd_negatives_are_uniform_over_the_other_samples_from_the_global_rng():
    loss = _built_crd(n=7, nce_k=100)
    assert loss.num_negatives == 6  # capped at num_samples - 1
    idx = torch.tensor([0, 3, 6] * 200)
    torch.manual_seed(3)
    neg = loss.sample_negatives(idx)
    torch.manual_seed(3)
    assert torch.equal(neg, loss.sample_negatives(idx))
    assert neg.shape == (600, 6) and int(neg.min()) >= 0 and int(neg.max()) < 7
    assert not (neg == idx[:, None]).any()
    for i in (0, 3, 6):
        counts = torch.bincount(neg[idx == i].reshape(-1), minlength=7).float()
        others = torch.cat([counts[:i], counts[i + 1:]])
        assert counts[i] == 0 and others.min() > 0.8 * others.mean()  # 1200 draws over 6 values


def test_crd_dense_and_gathered_scores_agree():
    loss = _built_crd()
    loss.eval()
    f_s, f_t = _crd_batch(seed=4)
    x = inputs(f_s, f_t, indices=torch.tensor([5, 0, 3]), num_samples=7)
    neg = torch.tensor([[1, 2, 6], [4, 4, 2], [0, 6, 1]])
    dense = loss(x, negatives=neg)
    loss.dense_ratio = 0
    assert float(loss(x, negatives=neg)) == pytest.approx(float(dense), rel=1e-6)


def test_crd_pools_maps_and_reads_one_element_lists():
    loss = _built_crd()
    loss.eval()
    maps_s, maps_t = randn(3, 5, 2, 2, seed=1), randn(3, 6, 4, 4, seed=2)
    idx, neg = torch.tensor([5, 0, 3]), torch.tensor([[1, 2, 6], [4, 4, 2], [0, 6, 1]])
    a = loss(inputs(maps_s, [maps_t], indices=idx, num_samples=7), negatives=neg)
    b = loss(inputs(maps_s.mean((2, 3)), maps_t.mean((2, 3)), indices=idx, num_samples=7), negatives=neg)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_crd_gradients_reach_the_student_and_both_heads_only():
    loss = _built_crd()
    f_s, f_t = randn(3, 5, seed=4, grad=True), randn(3, 6, seed=5, grad=True)
    loss(inputs(f_s, f_t, indices=torch.tensor([5, 0, 3]), num_samples=7)).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for p in loss.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in loss.buffers())


def test_crd_state_round_trips_for_exact_resume():
    n = 9
    b1, b2 = _crd_batch(seed=1), _crd_batch(seed=2)
    x1 = inputs(*b1, indices=torch.tensor([0, 4, 8]), num_samples=n)
    x2 = inputs(*b2, indices=torch.tensor([1, 4, 7]), num_samples=n)

    def materialised(seed):
        torch.manual_seed(seed)
        loss = build("crd", feat_dim=4, nce_k=5).eval()
        with torch.no_grad():
            loss(x1)
        return loss.train()

    a = materialised(0)
    a(x1).backward()  # Z set, bank updated, head gradients
    sgd_step(a, 0.5)
    b = materialised(1)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(7)
    va = a(x2)
    torch.manual_seed(7)
    vb = b(x2)
    assert float(va) == float(vb)
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(ta, tb), ka


def test_crd_errors_are_one_line():
    f_s, f_t = _crd_batch()
    idx = torch.tensor([0, 1, 2])
    one_line_error(lambda: build("crd")(inputs(f_s, f_t, indices=idx)), "num_samples")
    one_line_error(lambda: build("crd")(inputs(f_s, f_t, num_samples=5)), "indices")
    one_line_error(lambda: build("crd")(inputs(None, f_t, indices=idx, num_samples=5)), "student")
    one_line_error(lambda: build("crd")(inputs(f_s, None, indices=idx, num_samples=5)), "teacher")
    one_line_error(lambda: build("crd")(inputs([f_s, f_s], f_t, indices=idx, num_samples=5)), "list of 2")
    one_line_error(lambda: build("crd")(inputs(randn(3, 5, 2), f_t, indices=idx, num_samples=5)), "(3, 5, 2)")
    one_line_error(lambda: build("crd")(inputs(f_s, f_t[:2], indices=idx, num_samples=5)), "(3, 5)", "(2, 6)")
    one_line_error(lambda: build("crd")(inputs(f_s, f_t, indices=torch.tensor([0, 1, 5]), num_samples=5)),
                   "[0, 5)")
    one_line_error(lambda: build("crd")(inputs(f_s, f_t, indices=idx, num_samples=1)), "at least 2")
    loss = build("crd", nce_k=2)
    loss(inputs(f_s, f_t, indices=idx, num_samples=5))
    one_line_error(lambda: loss(inputs(f_s, f_t, indices=idx, num_samples=6)), "num_samples", "(5, 6, 5)")
    one_line_error(lambda: loss(inputs(randn(3, 4), f_t, indices=idx, num_samples=5)), "(4, 6, 5)")
    one_line_error(lambda: loss(inputs(f_s, f_t, indices=idx, num_samples=5), negatives=torch.zeros(3, 3)),
                   "(3, 3)")
    for options in ({"feat_dim": 0}, {"nce_k": 0}, {"nce_k": 2.5}, {"nce_t": 0}, {"nce_t": "warm"},
                    {"nce_mom": 1.0}, {"nce_mom": -0.1}, {"nce_mom": True}):
        one_line_error(lambda: build("crd", **options), "loss 'crd': option")


N_DDP, FEAT_DDP = 10, 4
RANK_INDICES = {0: [1, 4, 7], 1: [2, 5, 8, 9]}  # unequal batch sizes on purpose


def _ddp_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same initialisation on both ranks, as kdkit's seeded materialise
        loss = CRDLoss(feat_dim=FEAT_DDP, nce_k=3).eval()
        with torch.no_grad():
            loss(inputs(*_crd_batch(), indices=torch.tensor([0, 1, 2]), num_samples=N_DDP))
        loss.train()
        before = {k: v.clone() for k, v in loss.state_dict().items()}
        torch.manual_seed(100 + rank)  # negatives differ per rank
        idx = torch.tensor(RANK_INDICES[rank])
        f_s, f_t = _crd_batch(rows=len(idx), seed=10 * (rank + 1))
        loss(inputs(f_s, f_t, indices=idx, num_samples=N_DDP)).backward()
        with torch.no_grad():
            v_s, v_t = loss.embeddings(f_s, f_t)
        torch.save({"before": before, "after": dict(loss.state_dict()), "v_s": v_s, "v_t": v_t},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_crd_banks_stay_identical_on_two_gloo_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(r0["before"][key], r1["before"][key]), key
        assert torch.equal(r0["after"][key], r1["after"][key]), key
    assert float(r0["after"]["z_s"]) > 0
    updated = set()
    for rank, res in ((0, r0), (1, r1)):
        for b, row in enumerate(RANK_INDICES[rank]):
            updated.add(row)
            for bank, v in (("memory_s", res["v_s"]), ("memory_t", res["v_t"])):
                expected = F.normalize(0.5 * res["before"][bank][row] + 0.5 * v[b], dim=0)
                assert torch.allclose(r0["after"][bank][row], expected, atol=1e-6), (bank, row)
    for row in set(range(N_DDP)) - updated:
        assert torch.equal(r0["after"]["memory_s"][row], r0["before"]["memory_s"][row])
        assert torch.equal(r0["after"]["memory_t"][row], r0["before"]["memory_t"][row])


# ========================================================================================= ReviewKD

def _pool(x, level):
    """Adaptive average pooling to level x level by hand (sizes divisible by level)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, level, h // level, level, w // level).mean(dim=(3, 5))


def test_hcl_matches_a_loop_over_the_pyramid_levels():
    sizes = [8, 4, 2, 1]
    s = [randn(2, 3, k, k, seed=k) for k in sizes]
    t = [randn(2, 3, k, k, seed=10 + k) for k in sizes]

    def mse(a, b):
        return float(((a - b) ** 2).mean())

    expected = 0.0
    for si, ti, k in zip(s, t, sizes):
        terms, weights = [mse(si, ti)], [1.0]
        weight = 1.0
        for level in (4, 2, 1):
            if level < k:
                weight /= 2
                terms.append(mse(_pool(si, level), _pool(ti, level)))
                weights.append(weight)
        expected += sum(w * x for w, x in zip(weights, terms)) / sum(weights)
    # hand-derived weights for an 8 x 8 map: (1, 1/2, 1/4, 1/8) / 1.875; a 1 x 1 map: plain mse
    first = (mse(s[0], t[0]) + 0.5 * mse(_pool(s[0], 4), _pool(t[0], 4)) + 0.25 * mse(_pool(s[0], 2), _pool(t[0], 2))
             + 0.125 * mse(_pool(s[0], 1), _pool(t[0], 1))) / 1.875
    assert float(hcl_loss(s[:1], t[:1])) == pytest.approx(first, rel=1e-6)
    assert float(hcl_loss(s[3:], t[3:])) == pytest.approx(mse(s[3], t[3]), rel=1e-6)
    assert float(hcl_loss(s, t)) == pytest.approx(expected, rel=1e-6)


STUDENT_STAGES = [(4, 8), (8, 4), (8, 2)]  # (channels, size), shallow to deep
TEACHER_CHANNELS = [6, 12, 16]


def _stages(seed=0, grad=False):
    s = [randn(3, c, k, k, seed=seed + i, grad=grad) for i, (c, k) in enumerate(STUDENT_STAGES)]
    s.append(randn(3, 8, seed=seed + 7, grad=grad))  # a pooled B x C stage (the references' last one)
    t = [randn(3, c, k, k, seed=seed + 20 + i, grad=grad)
         for i, (c, (_, k)) in enumerate(zip(TEACHER_CHANNELS, STUDENT_STAGES))]
    t.append(randn(3, 16, seed=seed + 27, grad=grad))
    return s, t


def test_abf_output_shapes_and_fusion():
    loss = build("reviewkd")
    s, t = _stages()
    loss(inputs(s, t))
    assert [a.att_conv is not None for a in loss.abfs] == [True, True, True, False]  # the deepest does not fuse
    assert all(a.conv1[0].out_channels == 8 for a in loss.abfs)  # mid = min(512, deepest student channels)
    outs = loss.review([x if x.dim() == 4 else x[:, :, None, None] for x in s])
    assert [tuple(o.shape) for o in outs] == [(3, 6, 8, 8), (3, 12, 4, 4), (3, 16, 2, 2), (3, 16, 1, 1)]
    narrow = build("reviewkd", mid_channels=5).eval()
    narrow(inputs(s, t))
    assert [a.conv1[0].out_channels for a in narrow.abfs] == [5] * 4
    # one fusing ABF by hand: nearest upsampling, two sigmoid attention maps, conv2
    torch.manual_seed(0)
    abf = ABF(4, 5, 6, fuse=True).eval()
    x, res = randn(2, 4, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)
    out, fused = abf(x, res)
    x1 = abf.conv1(x)
    up = res.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    z = torch.sigmoid(F.conv2d(torch.cat([x1, up], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
    expected = x1 * z[:, :1] + up * z[:, 1:]
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(out, abf.conv2(expected), atol=1e-6)
    assert tuple(out.shape) == (2, 6, 4, 4)


def test_reviewkd_is_the_warmed_up_hcl_of_the_reviewed_student():
    s, t = _stages()
    loss = build("reviewkd").eval()
    loss(inputs(s, t))
    maps_s = [x if x.dim() == 4 else x[:, :, None, None] for x in s]
    maps_t = [x if x.dim() == 4 else x[:, :, None, None] for x in t]
    with torch.no_grad():
        base = float(hcl_loss(loss.review(maps_s), maps_t))
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        assert warmup_factor(epoch, 20) == pytest.approx(factor)
        assert float(loss(inputs(s, t, epoch=epoch))) == pytest.approx(factor * base, rel=1e-6)
    nowarm = build("reviewkd", warmup_epochs=0).eval()
    with torch.no_grad():
        nowarm(inputs(s, t))
    nowarm.load_state_dict(loss.state_dict())
    assert float(nowarm(inputs(s, t, epoch=0))) == pytest.approx(base, rel=1e-6)


def test_reviewkd_gradients_reach_the_student_and_the_abfs_only():
    s, t = _stages(grad=True)
    loss = build("reviewkd")
    loss(inputs(s, t)).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_reviewkd_state_round_trips():
    s1, t1 = _stages(seed=0)
    s2, t2 = _stages(seed=100)
    torch.manual_seed(0)
    a = build("reviewkd")
    a(inputs(s1, t1, epoch=3)).backward()  # BatchNorm statistics move
    sgd_step(a, 0.1)
    torch.manual_seed(1)
    b = build("reviewkd").eval()
    with torch.no_grad():
        b(inputs(s1, t1))
    b.train()
    b.load_state_dict(a.state_dict())
    for mode in ("train", "eval"):
        a.train(mode == "train"), b.train(mode == "train")
        assert float(a(inputs(s2, t2, epoch=5))) == float(b(inputs(s2, t2, epoch=5)))


def test_reviewkd_errors_are_one_line():
    s, t = _stages()
    one_line_error(lambda: build("reviewkd")(inputs(None, t)), "student")
    one_line_error(lambda: build("reviewkd")(inputs(s, None)), "teacher")
    one_line_error(lambda: build("reviewkd")(inputs(s[:3], t)), "3 student", "4 teacher")
    bad_t = list(t)
    bad_t[1] = randn(3, 12, 8, 8)
    one_line_error(lambda: build("reviewkd")(inputs(s, bad_t)), "(3, 8, 4, 4)", "(3, 12, 8, 8)", "stage 2 of 4")
    one_line_error(lambda: build("reviewkd")(inputs(s[::-1], t[::-1])), "shallow to deep")
    one_line_error(lambda: build("reviewkd")(inputs([randn(3, 4, 8)], [randn(3, 6, 8)])), "(3, 4, 8)")
    one_line_error(lambda: build("reviewkd")(inputs([s[0], "x"], t[:2])), "str")
    built = build("reviewkd")
    built(inputs(s, t))
    wider = [randn(3, 5, 8, 8)] + s[1:]
    one_line_error(lambda: built(inputs(wider, t)), "channels")
    for options in ({"mid_channels": 0}, {"mid_channels": "64"}, {"warmup_epochs": -1}, {"warmup_epochs": None},
                    {"warmup_epochs": True}):
        one_line_error(lambda: build("reviewkd", **options), "loss 'reviewkd': option")


def test_reviewkd_set_up_call_leaves_the_fusion_batchnorm_statistics_untouched():
    """The ABFs are built inside ``Distiller.materialize`` (eval mode, before the stage): built in the
    loss's own mode, their BatchNorm layers do not absorb that extra batch (as the references, which
    build them with the student, never show them a batch outside training)."""
    from kdkit.distill import Distiller, TeacherCombiner, TermSpec

    paths = ("a", "b")
    spec = TermSpec(loss="reviewkd", weight=1.0, name="reviewkd", student=paths, teacher=paths)
    loss = ReviewKDLoss()
    distiller = Distiller([spec], [loss], TeacherCombiner("avg_logits", 1), ce_weight=1.0, temperature=4.0)
    torch.manual_seed(0)
    student = {"a": torch.randn(4, 3, 4, 4), "b": torch.randn(4, 5, 2, 2)}
    teacher = {"a": torch.randn(4, 6, 4, 4), "b": torch.randn(4, 7, 2, 2)}
    distiller.materialize(torch.randn(4, 3), [torch.randn(4, 3)], torch.tensor([0, 1, 2, 0]),
                          student_features=student, teacher_features=[teacher])
    norms = [m for m in loss.abfs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4
    for bn in norms:
        assert int(bn.num_batches_tracked) == 0
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert loss.abfs.training  # back in training mode with the distiller
