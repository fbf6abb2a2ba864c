"""The pipeline methods of kdkit_methods: dml, takd, born_again and byot.

Each runs end to end on the embedded ``shapes`` data and resumes exactly after a kill in its last stage
(metrics.jsonl, summary.json and the final weights identical to an uninterrupted run).  DML's and
BYOT's objectives are checked against independent re-derivations (float64 loops, hand-derived
gradients); TAKD's and born-again's chains with an oracle: the teacher logits each step's loss receives
are recomputed from the previous step's best checkpoint on the same training samples.
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import kdkit

try:
    import kdkit_methods
except ImportError:  # the editable install predates plugins/kdkit_methods
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))
    import kdkit_methods

from kdkit_methods.pipeline_nets import byot_loss, mutual_loss
from kdkit_methods.pipelines import METHODS

ROOT = Path(__file__).resolve().parents[3]
#: resnet8s at width 4 on 10 classes x 8 images of shapes (72 training samples: 5 steps an epoch)
DATA = ["data.name=shapes", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
        "train.epochs=2", "train.batch_size=16", "train.lr=0.01", "logging.progress=false"]
TINY = {
    "dml": [*DATA, "peers=[{name: resnet8, width: 4}, {name: resnet8, width: 4}]"],
    "takd": [*DATA, "teachers=[{name: resnet8, width: 4}]", "teacher_train.epochs=1", "teacher_train.batch_size=16",
             "student.width=4", "assistants=[{name: resnet8, width: 4}]"],
    "born_again": [*DATA, "student.width=4", "generations=2"],
    "byot": [*DATA, "student.width=4"],
}
LAST_STAGE = {"dml": "cohort", "takd": "student", "born_again": "generation.1", "byot": "student"}


class Interrupt(Exception):
    pass


class _Harness:
    """Test plugin: raises :class:`Interrupt` at the ``at``-th step of stage ``stage``'s second epoch
    (after its first checkpoint), and registers the loss ``record_teacher`` (value 0) that records,
    per stage, the sample indices and the teacher logits a student's objective receives."""

    at: int | None = None
    stage: str = ""
    seen = 0
    current = ""
    records: ClassVar[dict] = {}

    @kdkit.hookimpl
    def kdkit_before_epoch(self, trainer, epoch):
        self.current = trainer.stage.name

    @kdkit.hookimpl
    def kdkit_after_step(self, trainer, step, loss, logs):
        if self.at is not None and trainer.stage.name == self.stage and trainer.epoch == 1:
            self.seen += 1
            if self.seen == self.at:
                raise Interrupt

    @kdkit.hookimpl
    def kdkit_register_losses(self, register):
        harness = self

        def record_teacher():
            def loss(inputs):
                harness.records.setdefault(harness.current, []).append(
                    (inputs.indices.detach().cpu().clone(), inputs.all_teacher_logits[0].detach().float().cpu().clone()))
                return inputs.student_logits.sum() * 0.0

            return loss

        register("record_teacher", record_teacher, description="test: records the teacher logits (value 0)")


HARNESS = _Harness()


@pytest.fixture
def manager():
    from kdkit.plugins import plugin_manager_for_testing

    HARNESS.records = {}
    with plugin_manager_for_testing(kdkit_methods, HARNESS) as pm:
        yield pm


def _train(name, out, manager, extra=()):
    from kdkit.engine import train

    return train(name, sets=[*TINY[name], *extra], out=out, manager=manager)


def _weights(run: Path, stage: str) -> dict:
    return torch.load(run / "checkpoints" / stage / "last.pt", weights_only=True)


# ------------------------------------------------------------------------------------------- registry, docs
def test_the_pipeline_methods_are_registered_and_documented(manager):
    methods = manager.registry("methods")
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in METHODS:
        assert name in methods
        assert f"kdkit train --method {name}" in text, f"docs/methods.md does not show --method {name}"


def test_defaults_are_the_references(manager):
    from kdkit.config import resolve_method_config

    dml = resolve_method_config("dml", None, [], manager)
    assert len(dml["peers"]) == 2  # the paper's cohort of two (Zhang et al. 2018, Sec. 4)
    assert dml["dml"]["temperature"] == 1.0  # YingZhangDUT/Deep-Mutual-Learning train_models.py: plain softmax
    byot = resolve_method_config("byot", None, [], manager)
    # luanyunteng/pytorch-be-your-own-teacher train.py: --temperature 3, --alpha 0.1, --beta 1e-6
    assert byot["byot"] == {"temperature": 3.0, "alpha": 0.1, "beta": 1e-6}
    assert byot["exits"] == ["layer1", "layer2"] and byot["deepest"] == "layer3"
    ban = resolve_method_config("born_again", None, [], manager)
    # Furlanello et al. 2018: BAN learns from the teacher's output distribution alone (no label term, no T)
    assert ban["distill"]["alpha"] == 0.0 and ban["distill"]["temperature"] == 1.0 and ban["generations"] == 3
    takd, kd = resolve_method_config("takd", None, [], manager), resolve_method_config("kd", None, [], manager)
    assert takd["distill"] == kd["distill"]  # the reference tunes T and lambda per pair: kd's defaults
    assert [a["name"] for a in takd["assistants"]] == ["resnet8"] and takd["assistants"][0]["width"] == 16


@pytest.mark.parametrize("name, sets, match", [
    ("dml", ["peers=[{name: resnet8}]"], "at least two peers"),
    ("takd", ["assistants=[]"], "at least one assistant"),
    ("takd", ["teachers=[{name: resnet8}, {name: resnet8}]"], "one teacher"),
    ("byot", ["exits=[layer3]"], "deepest stage"),
    ("byot", ["exits=[layer1, layer9]"], "layer9"),
])
def test_bad_configs_are_one_line_errors_before_anything_trains(name, sets, match, tmp_path, manager):
    with pytest.raises(kdkit.ConfigError, match=match) as err:
        _train(name, tmp_path / "run", manager, sets)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------- end to end, resume
@pytest.mark.parametrize("name", list(METHODS))
def test_runs_end_to_end_and_resumes_exactly_after_a_kill_in_its_last_stage(name, tmp_path, manager):
    summary = _train(name, tmp_path / "ref", manager)
    assert summary["method"] == name
    stage = LAST_STAGE[name]
    HARNESS.at, HARNESS.stage, HARNESS.seen = 2, stage, 0
    try:
        with pytest.raises(Interrupt):
            _train(name, tmp_path / "run", manager)
    finally:
        HARNESS.at = None
    assert not (tmp_path / "run" / "summary.json").exists()
    from kdkit.engine import train

    train(resume=tmp_path / "run", manager=manager)
    for file in ("summary.json", "metrics.jsonl"):
        assert (tmp_path / "run" / file).read_text() == (tmp_path / "ref" / file).read_text(), file
    ref, resumed = _weights(tmp_path / "ref", stage), _weights(tmp_path / "run", stage)
    for part in ("model", "extra_modules"):
        flat_ref = {k: v for k, v in _flatten(ref[part])}
        flat_run = {k: v for k, v in _flatten(resumed[part])}
        assert flat_ref.keys() == flat_run.keys()
        for key, value in flat_ref.items():
            assert torch.equal(flat_run[key], value), (part, key)
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    trained = [x for x in lines if x["stage"] == stage and "train.loss" in x]
    assert len(trained) == 2 and all(math.isfinite(x["train.loss"]) for x in trained)
    # kdkit export rebuilds every stage of the method (its stage_model member) with the best weights
    stages = {"takd": ["assistant.0", "student"], "born_again": ["generation.0", "generation.1"]}.get(name, [stage])
    for exported in stages:
        assert _exported(tmp_path / "run", exported, tmp_path / f"{exported}.pt") == _best(tmp_path / "run", exported)


def _exported(run: Path, stage: str, out: Path) -> dict:
    from kdkit import cli

    assert cli.main(["export", "--run", str(run), "--stage", stage, "--out", str(out)]) == 0
    return {k: v.tolist() for k, v in torch.load(out, weights_only=True).items()}


def _best(run: Path, stage: str) -> dict:
    return {k: v.tolist() for k, v in torch.load(run / "checkpoints" / stage / "best.pt", weights_only=True)["model"].items()}


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, torch.Tensor):
        yield prefix[:-1], tree


# ------------------------------------------------------------------------------------------- DML
def _dml_reference(logits: list[np.ndarray], labels: np.ndarray, t: float):
    """Zhang et al. 2018 Eq. 10 in float64 loops: the value of sum_k L_k and, per peer, the gradient of
    L_k with respect to its own logits — the others' predictions held fixed:
    d CE / dz_k = (q_k - onehot) / B,  d T^2 KL(p_l || p_k) / dz_k = T * (softmax(z_k / T) - p_l) / B."""
    k_count, (b, c) = len(logits), logits[0].shape

    def softmax(row):
        e = [math.exp(v - max(row)) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    grads = []
    for k in range(k_count):
        g = np.zeros((b, c))
        for i in range(b):
            q = softmax(logits[k][i])
            total += -math.log(q[labels[i]]) / b
            for j in range(c):
                g[i, j] += (q[j] - (1.0 if j == labels[i] else 0.0)) / b
            qt = softmax([v / t for v in logits[k][i]])
            for l in range(k_count):
                if l == k:
                    continue
                p = softmax([v / t for v in logits[l][i]])
                total += t * t * sum(p[j] * (math.log(p[j]) - math.log(qt[j])) for j in range(c)) / b / (k_count - 1)
                for j in range(c):
                    g[i, j] += t * (qt[j] - p[j]) / b / (k_count - 1)
        grads.append(g)
    return total, grads


@pytest.mark.parametrize("k_count, b, c, t", [(2, 4, 5, 1.0), (3, 7, 10, 1.0), (2, 6, 3, 2.5)])
def test_mutual_loss_matches_a_re_derivation_each_peer_learning_from_the_others_detached(k_count, b, c, t):
    gen = torch.Generator().manual_seed(k_count * 100 + b)
    logits = [(torch.randn(b, c, generator=gen, dtype=torch.float64) * 3).float().requires_grad_(True)
              for _ in range(k_count)]
    labels = torch.randint(0, c, (b,), generator=gen)
    total, logs = mutual_loss(logits, labels, t)
    total.backward()
    value, grads = _dml_reference([z.detach().double().numpy() for z in logits], labels.numpy(), t)
    assert float(total.detach()) == pytest.approx(value, rel=1e-5, abs=1e-6)
    for z, g in zip(logits, grads):  # no gradient from the other peers' KL terms reaches peer k
        np.testing.assert_allclose(z.grad.double().numpy(), g, rtol=1e-4, atol=1e-6)
    assert sorted(logs) == sorted([f"ce.{k}" for k in range(k_count)] + [f"kl.{k}" for k in range(k_count)])


def test_mutual_loss_kl_is_zero_for_identical_peers_and_needs_two():
    z = torch.randn(5, 4)
    _, logs = mutual_loss([z, z.clone()], torch.zeros(5, dtype=torch.long))
    assert float(logs["kl.0"]) == pytest.approx(0.0, abs=1e-6) and float(logs["kl.1"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(kdkit.ConfigError, match="two peers"):
        mutual_loss([z], torch.zeros(5, dtype=torch.long))


def test_one_optimiser_over_the_cohort_equals_one_sgd_per_peer():
    """SGD with momentum and weight decay is per parameter, and each peer's gradient comes from its own L_k:
    three steps of one optimiser over the cohort give the weights of one optimiser per peer."""
    from kdkit_methods.pipeline_nets import Cohort

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)
    torch.manual_seed(0)
    together = Cohort([torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)])
    apart = [torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)]
    for peer, copy in zip(together.peers, apart):
        copy.load_state_dict(peer.state_dict())
    options = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    one = torch.optim.SGD(together.parameters(), **options)
    each = [torch.optim.SGD(p.parameters(), **options) for p in apart]
    for _ in range(3):
        one.zero_grad()
        mutual_loss(together(x), y)[0].backward()
        one.step()
        z = [p(x) for p in apart]
        for k, (peer, opt) in enumerate(zip(apart, each)):  # peer k's own loss, the other's prediction fixed
            other = z[1 - k].detach()
            loss_k = torch.nn.functional.cross_entropy(z[k], y) + torch.nn.functional.kl_div(
                torch.log_softmax(z[k], 1), torch.log_softmax(other, 1), reduction="batchmean", log_target=True)
            opt.zero_grad()
            loss_k.backward(retain_graph=True)
        for opt in each:
            opt.step()
    for peer, copy in zip(together.peers, apart):
        for a, b in zip(peer.parameters(), copy.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- TAKD, born-again
@functools.lru_cache(maxsize=4)
def _opened(run: str, manager):
    """A finished run read back (its context, training split and classes), once per run."""
    from kdkit.engine.context import open_run

    ctx, _ = open_run(run, manager, device="cpu")
    train, _, _, classes = ctx.classification_data()
    return ctx, train, classes


def _recomputed_logits(run: Path, stage: str, section: dict, indices: torch.Tensor, manager) -> torch.Tensor:
    """The logits of stage ``stage``'s best checkpoint (a model of ``section``) on the training samples
    ``indices`` of the run's split."""
    ctx, train, classes = _opened(str(run), manager)
    model = ctx.build_model("students", section, len(classes))
    ctx.load_best(stage, model)
    model.eval()
    x = torch.stack([train[int(i)][0] for i in indices])
    with torch.no_grad():
        return model(x)


def _received(stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = HARNESS.records[stage]
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


RECORD = ["distill.terms=[{loss: kl, weight: 0.5}, {loss: record_teacher, weight: 1.0}]"]


def test_takd_each_step_is_taught_by_the_trained_step_before_it(tmp_path, manager):
    run = tmp_path / "run"
    summary = _train("takd", run, manager, [*RECORD, "baseline.enabled=false",
                                            "assistants=[{name: resnet8, width: 4}, {name: resnet8, width: 6}]"])
    assert [a["teacher"] for a in summary["assistants"]] == ["teacher.resnet8", "assistant.0"]
    assert summary["student"]["teacher"] == "assistant.1"
    chain = [("assistant.0", "teacher.resnet8", {"name": "resnet8", "width": 4}),
             ("assistant.1", "assistant.0", {"name": "resnet8", "width": 4}),
             ("student", "assistant.1", {"name": "resnet8", "width": 6})]
    for stage, teacher_stage, teacher_section in chain:
        indices, logits = _received(stage)
        expected = _recomputed_logits(run, teacher_stage, teacher_section, indices, manager)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    # the student's teacher is the last assistant, not the teacher
    indices, logits = _received("student")
    teacher = _recomputed_logits(run, "teacher.resnet8", {"name": "resnet8", "width": 4}, indices, manager)
    assert not torch.allclose(logits, teacher, atol=1e-3)


def test_born_again_generation_k_is_taught_by_generation_k_minus_1(tmp_path, manager):
    run = tmp_path / "run"
    summary = _train("born_again", run, manager, [*RECORD, "generations=3"])
    assert [g["teacher"] for g in summary["generations"]] == [None, "generation.0", "generation.1"]
    assert summary["ensemble"]["members"] == ["generation.0", "generation.1", "generation.2"]
    assert "generation.0" not in HARNESS.records  # generation 0 learns from the labels alone
    section = {"name": "resnet8", "width": 4}
    for k in (1, 2):
        indices, logits = _received(f"generation.{k}")
        expected = _recomputed_logits(run, f"generation.{k - 1}", section, indices, manager)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        if k == 2:
            older = _recomputed_logits(run, "generation.0", section, indices, manager)
            assert not torch.allclose(logits, older, atol=1e-3)


def test_born_again_ensemble_is_the_mean_of_the_generations_softmax(tmp_path, manager):
    from kdkit.engine.context import open_run

    run = tmp_path / "run"
    summary = _train("born_again", run, manager, ["train.epochs=1"])
    ctx, _ = open_run(run, manager, device="cpu")
    test = ctx.build_dataset(None, "test")
    probs, labels = 0, torch.tensor([int(test[i][1]) for i in range(len(test))])
    x = torch.stack([test[i][0] for i in range(len(test))])
    for k in range(2):
        model = ctx.build_model("students", {"name": "resnet8", "width": 4}, 10)
        ctx.load_best(f"generation.{k}", model)
        with torch.no_grad():
            probs = probs + torch.softmax(model.eval()(x).double(), dim=1) / 2
    top1 = 100.0 * float((probs.argmax(1) == labels).double().mean())
    assert summary["ensemble"]["top1"] == pytest.approx(top1)
    assert summary["ensemble"]["loss"] == pytest.approx(float(-probs[torch.arange(len(labels)), labels].log().mean()),
                                                        rel=1e-4)


# ------------------------------------------------------------------------------------------- BYOT
def _byot_reference(z, exits, f, fs, y, t, alpha, beta):
    """pytorch-be-your-own-teacher train.py in float64 loops, with kdkit's KL for its soft cross-entropy:
    the value, and the gradients w.r.t. z, each exit's logits, f and each exit's feature (hand-derived;
    z and f are detached in the KL and feature terms)."""
    b, c = z.shape

    def softmax(row, temp=1.0):
        e = [math.exp(v / temp - max(row) / temp) for v in row]
        return [v / sum(e) for v in e]

    value = 0.0
    g_z = np.zeros_like(z)
    g_exits = [np.zeros_like(e) for e in exits]
    g_fs = [np.zeros_like(x) for x in fs]
    for i in range(b):
        q = softmax(z[i])
        value += (1 - alpha) * -math.log(q[y[i]]) / b
        for j in range(c):
            g_z[i, j] = (1 - alpha) * (q[j] - (j == y[i])) / b
        p_t = softmax(z[i], t)
        for e, g in zip(exits, g_exits):
            q_e = softmax(e[i])
            value += (1 - alpha) * -math.log(q_e[y[i]]) / b
            q_et = softmax(e[i], t)
            value += alpha * t * t * sum(p_t[j] * (math.log(p_t[j]) - math.log(q_et[j])) for j in range(c)) / b
            for j in range(c):
                g[i, j] = (1 - alpha) * (q_e[j] - (j == y[i])) / b + alpha * t * (q_et[j] - p_t[j]) / b
    for x, g in zip(fs, g_fs):
        for i in range(b):
            for j in range(x.shape[1]):
                if x[i, j] > 0 or f[i, j] > 0:
                    value += beta * (x[i, j] - f[i, j]) ** 2
                    g[i, j] = beta * 2 * (x[i, j] - f[i, j])
    return value, g_z, g_exits, g_fs


@pytest.mark.parametrize("b, c, d, n_exits, t, alpha, beta", [(4, 5, 6, 2, 3.0, 0.1, 1e-6), (6, 10, 8, 3, 2.0, 0.4, 0.05),
                                                              (3, 4, 3, 1, 1.0, 0.0, 1.0)])
def test_byot_loss_matches_the_reference_re_derived(b, c, d, n_exits, t, alpha, beta):
    gen = torch.Generator().manual_seed(b * 10 + c)

    def rand(*shape, scale=2.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).float().requires_grad_(True)

    z, f = rand(b, c), rand(b, d)  # negative feature entries: the reference's mask matters
    exits, fs = [rand(b, c) for _ in range(n_exits)], [rand(b, d) for _ in range(n_exits)]
    y = torch.randint(0, c, (b,), generator=gen)
    total, logs = byot_loss(z, exits, f, fs, y, t, alpha, beta)
    total.backward()
    n = lambda v: v.detach().double().numpy()
    value, g_z, g_exits, g_fs = _byot_reference(n(z), [n(e) for e in exits], n(f), [n(x) for x in fs], y.numpy(),
                                                t, alpha, beta)
    assert float(total.detach()) == pytest.approx(value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(n(z.grad), g_z, rtol=1e-4, atol=1e-6)  # no KL gradient reaches the deepest
    for e, g in zip(exits, g_exits):
        np.testing.assert_allclose(n(e.grad), g, rtol=1e-4, atol=1e-6)
    for x, g in zip(fs, g_fs):
        np.testing.assert_allclose(n(x.grad), g, rtol=1e-4, atol=1e-6)
    assert f.grad is None or float(f.grad.abs().max()) == 0.0  # the deepest feature is a detached target
    assert sorted(logs) == ["ce", "feature", "kd"]


def test_byot_kl_differs_from_the_reference_soft_cross_entropy_by_the_deepest_entropy():
    z, e = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.zeros(5, dtype=torch.long)
    t = 3.0
    _, logs = byot_loss(z, [e], torch.zeros(5, 2), [torch.zeros(5, 2)], y, t, 0.1, 0.0)
    p = torch.softmax(z / t, dim=1)
    soft_ce = -(p * torch.log_softmax(e / t, dim=1)).sum(1).mean() * t * t  # reference kd_loss_function * T^2
    entropy = -(p * p.log()).sum(1).mean() * t * t
    assert float(logs["kd"]) == pytest.approx(float(soft_ce - entropy), rel=1e-5)


def test_byot_trains_the_exits_and_deploys_the_unchanged_backbone(tmp_path, manager):
    from kdkit.engine.context import open_run

    run = tmp_path / "run"
    summary = _train("byot", run, manager, ["baseline.enabled=false"])
    assert [e["after"] for e in summary["exits"]] == ["layer1", "layer2"]
    assert all(e["top1"] is not None for e in summary["exits"])
    best = torch.load(run / "checkpoints" / "student" / "best.pt", weights_only=True)
    fresh = kdkit.get_registry("students").build("resnet8", 10, width=4).state_dict()
    assert best["model"].keys() == fresh.keys()  # the deployed model is the backbone, nothing added
    assert all(best["model"][k].shape == v.shape for k, v in fresh.items())
    # the exits are the stage's extra module, built as the run builds them and changed by training
    ctx, method = open_run(run, manager, device="cpu")
    train, _, _, _ = ctx.classification_data()
    net = method.build(ctx, 10, method._sample(train))
    initial = net.heads.state_dict()
    trained = best["extra_modules"]["exits"]
    assert trained.keys() == initial.keys() and any(k.startswith("0.") for k in trained)
    assert any(k.startswith("1.") for k in trained)
    weights = [k for k in initial if k.endswith("weight") and initial[k].dim() > 1]
    for i in ("0", "1"):  # every exit's head trained
        assert any(not torch.equal(initial[k], trained[k]) for k in weights if k.startswith(i + "."))
    # kdkit eval reports each exit as the run did
    evaluated = method.evaluate(ctx)
    for e in summary["exits"]:
        assert evaluated["student"][f"exit.{e['after']}.top1"] == pytest.approx(e["top1"])
    assert evaluated["student"]["top1"] == pytest.approx(summary["student"]["top1"])
