"""kdkit.distill: the terms of the objective, the Distiller that evaluates them, the built-in fitnet loss."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import kdkit
from kdkit.distill import Distiller, DistillInputs, TeacherCombiner, TermSpec, distill_terms
from kdkit.distill.distiller import build_term_loss
from kdkit.distill.step import build_distiller
from kdkit.errors import ConfigError
from kdkit.losses import hinton_kd

DEFAULTS = {"alpha": 0.5, "temperature": 4.0, "loss": "kl", "loss_options": {}, "combine": "avg_logits",
            "ema_momentum": 0.9, "terms": None}


def test_without_terms_the_classic_single_term():
    (term,) = distill_terms({**DEFAULTS, "alpha": 0.3, "loss": "mse"}, DEFAULTS)
    assert term == TermSpec(loss="mse", weight=0.7, name="kd", options={})


@pytest.mark.parametrize("terms, message", [
    ([], "empty, so nothing would be distilled"),
    ("kl", "expected a list of terms"),
    ([{"weight": 1.0}], r"distill.terms.0.loss: a registered loss name is required"),
    ([{"loss": "kl", "wieght": 1.0}], r"unknown config key distill.terms.0.'wieght'; valid keys of a term"),
    ([{"loss": "kl", "weight": "heavy"}], r"distill.terms.0.weight: expected a finite number"),
    # issue 22 rerun: an infinite weight passed the config, then the student "diverged" at its first step
    ([{"loss": "kl", "weight": float("inf")}], r"distill.terms.0.weight: expected a finite number, got inf"),
    ([{"loss": "kl", "weight": float("nan")}], r"distill.terms.0.weight: expected a finite number, got nan"),
    ([{"loss": "kl", "teacher_index": -1}], r"teacher_index: expected an integer >= 0"),
    # a logit term distils every teacher combined: its teacher_index was silently ignored
    ([{"loss": "kl", "teacher_index": 5}], r"\(kl\): teacher_index 5 on a logit term \(kl\), which distils every "
                                            r"teacher's logits combined by distill.combine"),
    ([{"loss": "kl"}, {"loss": "kl"}], "two terms are named 'kl'"),
    ([{"loss": "kl", "name": "ce"}], "the name 'ce' is the cross-entropy term's"),
    ([{"loss": "kl", "student": 3}], r"distill.terms.0.student: expected a module path"),
    ([{"loss": "kl", "teacher": []}], r"distill.terms.0.teacher: expected module paths such as \[layer1"),
    ([{"loss": "kl", "teacher": ["layer1", 2]}], r"distill.terms.0.teacher: expected module paths"),
])
def test_bad_terms_are_one_line_errors(terms, message):
    with pytest.raises(ConfigError, match=message) as err:
        distill_terms({**DEFAULTS, "terms": terms}, DEFAULTS)
    assert "\n" not in str(err.value)


def test_a_weight_in_exponent_notation_is_a_number():
    """YAML 1.1 reads `1e-3` as a string: every float key of the config takes it, a term's weight refused it."""
    (term,) = distill_terms({**DEFAULTS, "terms": [{"loss": "kl", "weight": "1e-3"}]}, DEFAULTS)
    assert term.weight == 0.001


def test_classic_keys_cannot_be_mixed_with_terms():
    with pytest.raises(ConfigError, match="distill.loss describes the single classic term"):
        distill_terms({**DEFAULTS, "loss": "mse", "terms": [{"loss": "kl"}]}, DEFAULTS)


def _batch(seed=0, teachers=2):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    ts = [torch.randn(6, 5, generator=g) * (k + 1) for k in range(teachers)]
    y = torch.randint(0, 5, (6,), generator=g)
    return s, ts, y


def test_default_objective_is_alpha_ce_plus_kd_bit_for_bit():
    s, ts, y = _batch()
    distiller = build_distiller(kdkit.get_registry("losses"), DEFAULTS, 2, DEFAULTS)
    loss, logs = distiller(s, ts, y)
    kd = hinton_kd(s, torch.stack([t.float() for t in ts]).mean(0), 4.0)
    expected = 0.5 * F.cross_entropy(s, y) + (1.0 - 0.5) * kd
    assert torch.equal(loss, expected) and set(logs) == {"ce", "kd"}


def test_every_term_is_weighted_and_logged_and_feature_terms_get_their_taps():
    seen = {}

    def probe(inputs):
        seen.update(student=inputs.student_feature, teacher=inputs.teacher_feature, index=inputs.teacher_index,
                    logits=inputs.teacher_logits, labels=inputs.labels, indices=inputs.indices,
                    epoch=inputs.epoch, step=inputs.step)
        return (inputs.student_feature - inputs.teacher_feature).pow(2).mean()

    s, ts, y = _batch()
    specs = [TermSpec("kl", 0.25, "kd"), TermSpec("probe", 3.0, "probe", student="a", teacher="b", teacher_index=1)]
    combiner = TeacherCombiner("mean_loss", 2)
    distiller = Distiller(specs, [build_term_loss(kdkit.get_registry("losses"), specs[0]), probe], combiner,
                          ce_weight=0.5, temperature=2.0)
    fs, fb = torch.randn(6, 3, requires_grad=True), [{}, {"b": torch.randn(6, 3)}]
    idx = torch.arange(6) + 10
    loss, logs = distiller(s, ts, y, idx, {"a": fs}, fb, epoch=3, step=41)
    kd = torch.stack([hinton_kd(s, t, 2.0) for t in ts]).mean()
    feature = (fs - fb[1]["b"]).pow(2).mean()
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(s, y) + 0.25 * kd + 3.0 * feature)
    torch.testing.assert_close(logs["probe"], feature.detach())
    assert seen["student"] is fs and seen["teacher"] is fb[1]["b"] and seen["index"] == 1
    assert seen["logits"] is ts[1] and seen["indices"] is idx and (seen["epoch"], seen["step"]) == (3, 41)
    loss.backward()
    assert fs.grad is not None and s.grad is not None


def test_a_term_naming_a_list_of_paths_gets_a_list_of_features_in_that_order():
    seen = {}

    def probe(inputs):
        seen.update(student=inputs.student_feature, teacher=inputs.teacher_feature, n=inputs.num_samples)
        return sum((a - b).pow(2).mean() for a, b in zip(inputs.student_feature, inputs.teacher_feature))

    (spec,) = distill_terms({**DEFAULTS, "terms": [{"loss": "probe", "student": ["b", "a"],
                                                    "teacher": ["y", "x"]}]}, DEFAULTS)
    assert spec.student == ("b", "a") and spec.teacher == ("y", "x")
    distiller = Distiller([spec, TermSpec("p2", 1.0, "p2", student="a", teacher="x")], [probe, lambda i: 0 * i.student_feature.sum()],
                          TeacherCombiner("avg_logits", 1), ce_weight=1.0, temperature=1.0)
    assert distiller.student_paths() == ["b", "a"] and distiller.teacher_paths(1) == [["y", "x"]]
    distiller.num_samples = 600
    s, ts, y = _batch()
    # the student's features require grad (the first training call checks that every term reaches the student)
    fs = {"a": torch.randn(6, 3, requires_grad=True), "b": torch.randn(6, 2, requires_grad=True)}
    ft = [{"x": torch.randn(6, 3), "y": torch.randn(6, 2)}]
    distiller(s, ts[:1], y, None, fs, ft)
    assert [f is g for f, g in zip(seen["student"], [fs["b"], fs["a"]])] == [True, True]
    assert [f is g for f, g in zip(seen["teacher"], [ft[0]["y"], ft[0]["x"]])] == [True, True]
    assert seen["n"] == 600


def test_ema_weights_update_once_per_batch_however_many_logit_terms():
    s, ts, y = _batch()
    specs = [TermSpec("kl", 0.5, "a"), TermSpec("mse", 0.5, "b")]
    reg = kdkit.get_registry("losses")
    distiller = Distiller(specs, [build_term_loss(reg, x) for x in specs], TeacherCombiner("ema_inv_loss", 2),
                          ce_weight=0.0, temperature=1.0).train()
    distiller(s, ts, y)
    assert int(distiller.combiner.ema_steps) == 1


def test_a_loss_with_the_old_signature_still_works_for_logits_with_a_warning():
    class Registry:
        def build(self, name, **options):
            return lambda student_logits, teacher_logits, temperature=1.0: F.mse_loss(student_logits, teacher_logits)

    with pytest.warns(DeprecationWarning, match="old signature"):
        fn = build_term_loss(Registry(), TermSpec("legacy", 1.0, "legacy"))
    s, ts, _ = _batch()
    torch.testing.assert_close(fn(DistillInputs(s, ts[0])), F.mse_loss(s, ts[0]))
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="cannot be a feature term"):
        warnings.simplefilter("ignore")
        build_term_loss(Registry(), TermSpec("legacy", 1.0, "legacy", student="x", teacher="y"))


def _feature_error(student, teacher, *fragments, example=None) -> str:
    with pytest.raises(ConfigError) as err:
        DistillInputs(torch.zeros(2, 3), student_feature=student, teacher_feature=teacher).feature_pairs(
            "demo", example=example)
    message = str(err.value)
    assert "\n" not in message and message.startswith("loss demo")
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_feature_pairs_pairs_float32_features_with_the_teacher_detached():
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    (pair,) = DistillInputs(torch.zeros(2, 3), student_feature=s, teacher_feature=t).feature_pairs("demo")
    assert pair.where == "" and pair == (pair.student, pair.teacher, pair.where)
    assert pair.student.dtype == pair.teacher.dtype == torch.float32
    assert pair.student.requires_grad and not pair.teacher.requires_grad
    torch.testing.assert_close(pair.student, s.float())
    pair.student.sum().backward()
    assert s.grad is not None and t.grad is None
    # a list of paths: one pair per path, in order, each saying where it stands
    a, b = torch.randn(2, 4), torch.randn(2, 6, 2, 2)
    pairs = DistillInputs(torch.zeros(2, 3), student_feature=[a, b], teacher_feature=(b, a)).feature_pairs("demo")
    assert [p.where for p in pairs] == [" (pair 1 of 2)", " (pair 2 of 2)"]
    assert [(p.student.shape, p.teacher.shape) for p in pairs] == [(a.shape, b.shape), (b.shape, a.shape)]
    # under autocast too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (pair,) = DistillInputs(torch.zeros(2, 3), student_feature=s.bfloat16(),
                                teacher_feature=t).feature_pairs("demo")
    assert pair.student.dtype == pair.teacher.dtype == torch.float32


def test_feature_pairs_errors_are_one_line():
    f = torch.randn(4, 3)
    for missing in ("student", "teacher"):
        s, t = (None, f) if missing == "student" else (f, None)
        _feature_error(s, t, f"needs a {missing} feature", f"{missing}:", "{loss: demo, student: layer3")
    _feature_error(None, f, "(e.g. {loss: demo, student: [a, b], teacher: [a, b]})",
                   example="{loss: demo, student: [a, b], teacher: [a, b]}")
    _feature_error([f, f], f, "student feature is a list of 2 tensors", "teacher feature is one tensor")
    _feature_error(f, [f], "student feature is one tensor", "teacher feature is a list of 1 tensors")
    _feature_error([f, f], [f], "2 student features but 1 teacher features", "same number of module paths")
    _feature_error([], [], "lists are empty")
    _feature_error([f, None], [f, f], "student feature (pair 2 of 2) is missing")
    _feature_error(f, {"out": f}, "teacher feature is a dict, not a tensor")
    _feature_error(torch.randn(4), f, "student feature has shape (4,)")
    _feature_error(f, torch.randn(5, 3), "(4, 3)", "(5, 3)", "differ in batch size")
    _feature_error([f, f], [f, torch.randn(5, 3)], "(4, 3)", "(5, 3)", "(pair 2 of 2)", "batch size")


def test_fitnet_builds_its_regressor_on_the_first_batch_and_learns():
    """``regressor: conv`` (a bare 1x1 convolution) reaches the least-squares fit."""
    torch.manual_seed(0)
    fitnet = kdkit.get_registry("losses").build("fitnet", regressor="conv")
    teacher_map = torch.randn(4, 6, 5, 5)
    student_map = torch.randn(4, 3, 5, 5)
    inputs = DistillInputs(torch.zeros(4, 2), student_feature=student_map, teacher_feature=teacher_map)
    first = fitnet(inputs)
    assert tuple(fitnet.regressor.weight.shape) == (6, 3, 1, 1)
    optimizer = torch.optim.SGD(fitnet.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        fitnet(inputs).backward()
        optimizer.step()
    # the optimum of a 1x1 regression: the least-squares fit of teacher channels on student channels
    xs, xt = student_map.permute(0, 2, 3, 1).reshape(-1, 3), teacher_map.permute(0, 2, 3, 1).reshape(-1, 6)
    w = torch.linalg.lstsq(xs, xt).solution
    final = fitnet(inputs).item()
    assert final == pytest.approx(F.mse_loss(xs @ w, xt).item(), rel=1e-3) and final < first.item()
    with pytest.raises(ConfigError, match="differ in spatial size"):
        kdkit.get_registry("losses").build("fitnet", regressor="conv")(
            DistillInputs(torch.zeros(4, 2), student_feature=torch.randn(4, 3, 4, 4), teacher_feature=teacher_map))
    with pytest.raises(ConfigError, match="is smaller than teacher feature"):
        kdkit.get_registry("losses").build("fitnet")(
            DistillInputs(torch.zeros(4, 2), student_feature=torch.randn(4, 3, 4, 4), teacher_feature=teacher_map))
    with pytest.raises(ConfigError, match="needs a student feature"):
        kdkit.get_registry("losses").build("fitnet")(DistillInputs(torch.zeros(4, 2)))
    with pytest.raises(ConfigError, match="pairs 2 student and teacher features; a hint pairs one"):
        kdkit.get_registry("losses").build("fitnet")(DistillInputs(
            torch.zeros(4, 2), student_feature=[student_map, student_map], teacher_feature=[teacher_map, teacher_map]))


def test_fitnet_regressor_is_the_references_conv_bias_batchnorm_relu():
    """The default regressor is RepDistiller's / mdistiller's ConvReg: a convolution with bias, then
    BatchNorm, then ReLU (not a bare convolution, whose outputs start half negative against a post-ReLU
    target); its value and gradient are those of that module, rebuilt here from torch.nn pieces."""
    torch.manual_seed(0)
    student_map, teacher_map = torch.randn(5, 3, 4, 4), torch.randn(5, 6, 4, 4).relu()
    fitnet = kdkit.get_registry("losses").build("fitnet")
    student = student_map.clone().requires_grad_(True)
    value = fitnet(DistillInputs(torch.zeros(5, 2), student_feature=student, teacher_feature=teacher_map))
    conv, bn, relu = fitnet.regressor
    assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None and conv.kernel_size == (1, 1)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.ReLU())
    reference.load_state_dict({k: v.clone() for k, v in fitnet.regressor.state_dict().items()})
    # a fresh copy of the state before the call above moved the running statistics: only the weights matter
    # in training mode (batch statistics)
    ref_student = student_map.clone().requires_grad_(True)
    expected = ((reference(ref_student) - teacher_map) ** 2).mean()
    torch.testing.assert_close(value, expected)
    (g,) = torch.autograd.grad(value, student)
    (g_ref,) = torch.autograd.grad(expected, ref_student)
    torch.testing.assert_close(g, g_ref)
    assert (fitnet.regressor(student_map) >= 0).all()  # a hint for a post-ReLU target is non-negative
    # spatial sizes as the references' ConvReg: twice the teacher's -> stride 2; half -> transposed conv
    for s_size, t_size, kind in ((8, 4, torch.nn.Conv2d), (2, 4, torch.nn.ConvTranspose2d), (5, 4, torch.nn.Conv2d)):
        loss = kdkit.get_registry("losses").build("fitnet")
        loss(DistillInputs(torch.zeros(2, 2), student_feature=torch.randn(2, 3, s_size, s_size),
                           teacher_feature=torch.randn(2, 6, t_size, t_size)))
        assert isinstance(loss.regressor[0], kind)


def test_fitnet_set_up_call_leaves_the_regressor_batchnorm_statistics_untouched():
    """The regressor is built inside ``Distiller.materialize`` (eval mode): it must be built in eval mode
    too, so that its BatchNorm does not absorb the set-up batch."""
    from kdkit.distill import Distiller, TeacherCombiner, TermSpec

    spec = TermSpec(loss="fitnet", weight=1.0, name="fitnet", student="a", teacher="a")
    fitnet = kdkit.get_registry("losses").build("fitnet")
    distiller = Distiller([spec], [fitnet], TeacherCombiner("avg_logits", 1), ce_weight=1.0, temperature=4.0)
    distiller.materialize(torch.randn(4, 3), [torch.randn(4, 3)], torch.tensor([0, 1, 2, 0]),
                          student_features={"a": torch.randn(4, 3, 2, 2)},
                          teacher_features=[{"a": torch.randn(4, 5, 2, 2) + 3.0}])
    bn = fitnet.regressor[1]
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(5))
    assert fitnet.regressor.training and distiller.training  # back in training mode for the stage


def test_fitnet_term_in_a_kd_run(tmp_path, manager):
    """The regressor is built before the stage (so the optimiser has it), trains, is checkpointed with
    the stage and is not part of the student's weights.  (Exact resume of such a term after SIGKILL:
    tests/test_plugins_example.py, with a third-party feature loss.)"""
    import json

    from kdkit_engine_testutil import TINY

    from kdkit.engine import train

    sets = TINY + ["distill.terms=[{loss: kl, weight: 0.5}, "
                   "{loss: fitnet, weight: 5.0, student: features.7, teacher: features.7}]"]
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=manager)
    # un-augmented data: the cache holds the teacher's logits and features.7 (tests/methods/test_kd_feature_cache.py)
    assert summary["distill"]["teacher_cache"] is True and len(summary["distill"]["terms"]) == 2
    last = torch.load(tmp_path / "run" / "checkpoints" / "student" / "last.pt", weights_only=True)
    regressor = last["extra_modules"]["distill"]["terms.fitnet.regressor.0.weight"]
    assert tuple(regressor.shape) == (8, 8, 1, 1)  # convnet width 4: 8 channels at features.7, both sides
    assert "terms.fitnet.regressor.1.running_mean" in last["extra_modules"]["distill"]  # conv, BN, ReLU
    assert not any("regressor" in k for k in last["model"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fit = [x["train.fitnet"] for x in lines if x["stage"] == "student" and "train.fitnet" in x]
    assert len(fit) == 2 and fit[1] < fit[0]


def test_wrong_tap_paths_fail_before_any_teacher_trains(tmp_path, manager):
    from kdkit_engine_testutil import TINY

    from kdkit.engine import train

    with pytest.raises(kdkit.UnknownComponentError, match="unknown loss 'nosuchloss'"):
        train("kd", sets=TINY + ["distill.terms=[{loss: nosuchloss}]"], out=tmp_path / "a", manager=manager)
    assert not (tmp_path / "a" / "checkpoints").exists()
    # the hint: the student's maps, those the size of the teacher's paired features.7 first, then the nearest names
    with pytest.raises(ConfigError, match=r"student \(ConvNet\) has no module 'features.77'; feature maps it can tap, "
                                         r"one per resolution: features \(16x8x8\), features.2 \(4x32x32\), .* "
                                         r"teacher 0's features.7 is 8x8x8\); nearest valid paths: features.7"):
        train("kd", sets=TINY + ["distill.terms=[{loss: fitnet, student: features.77, teacher: features.7}]"],
              out=tmp_path / "b", manager=manager)
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_unknown_loss_options_fail_when_the_config_is_checked():
    from kdkit.distill.terms import check_distill

    registry = kdkit.get_registry
    with pytest.raises(ConfigError, match=r"loss 'kl' has no option 'scale'; valid options: scale_by_t2") as err:
        check_distill({**DEFAULTS, "terms": [{"loss": "kl", "options": {"scale": 2}}]}, DEFAULTS, registry)
    assert "\n" not in str(err.value)
    check_distill({**DEFAULTS, "terms": [{"loss": "kl", "options": {"scale_by_t2": False}}]}, DEFAULTS, registry)


# --- terms that read a model's modules (DistillInputs.student_module / teacher_module) -------------

class _Net(torch.nn.Module):
    """A feature extractor ``body`` and a classifier ``head.fc`` (what SRRL / SimKD / CAT-KD reach for)."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.body = torch.nn.Linear(5, width)
        self.head = torch.nn.Sequential()
        self.head.add_module("fc", torch.nn.Linear(width, classes))

    def forward(self, x):
        return self.head(self.body(x))


def _frozen(model):
    from kdkit.engine import freeze

    return freeze(model)


def test_a_term_reads_the_teachers_and_the_students_modules_by_path():
    student, teacher = _Net(), _frozen(_Net())
    inputs = DistillInputs(torch.zeros(2, 3), teacher_index=0, student_model=student, teacher_models=(teacher,))
    assert inputs.student_module("head.fc") is student.head.fc
    assert inputs.teacher_module("head.fc") is teacher.head.fc
    assert inputs.teacher_module("") is teacher and inputs.student_module("") is student
    # a DataParallel wrapper is looked through and its module. prefix accepted
    wrapped = DistillInputs(torch.zeros(2, 3), student_model=torch.nn.DataParallel(student), teacher_models=(teacher,))
    assert wrapped.student_module("module.head.fc") is student.head.fc
    # the mean of one teacher is that teacher; an explicit index wins
    assert wrapped.teacher_module("body") is teacher.body
    two = DistillInputs(torch.zeros(2, 3), teacher_index=0, teacher_models=(teacher, _frozen(_Net())))
    assert two.teacher_module("body", index=1) is two.teacher_models[1].body


@pytest.mark.parametrize("call, message", [
    (lambda i: i.teacher_module("head.fcc", loss="srrl"),
     r"^loss srrl: teacher 0 \(_Net\) has no module 'head.fcc'; nearest valid paths: head.fc, head"),
    (lambda i: i.student_module("classifier"),
     r"^a distill term: student \(_Net\) has no module 'classifier'; nearest valid paths: body, head, head.fc"),
    (lambda i: i.teacher_module("fc", index=1, loss="srrl"),
     r"loss srrl needs module 'fc' of teacher 1, but that teacher is not a network \(a LogitsTeacher"),
    (lambda i: i.teacher_module("fc", index=2), r"teacher_index 2, but there are 2 teachers"),
    (lambda i: DistillInputs(torch.zeros(1, 1)).teacher_module("fc", loss="catkd"),
     r"loss catkd needs a teacher's module 'fc', but no teacher models were handed to the term"),
    (lambda i: DistillInputs(torch.zeros(1, 1)).student_module("fc", loss="catkd"),
     r"loss catkd needs the student's module 'fc', but no student model was handed to the term"),
    (lambda i: DistillInputs(torch.zeros(1, 1), teacher_models=(None, None)).teacher_module("fc"),
     r"sees the mean of 2 teachers; set distill.combine=mean_loss"),
])
def test_module_lookups_that_fail_are_one_line_errors(call, message):
    inputs = DistillInputs(torch.zeros(2, 3), teacher_index=0, student_model=_Net(),
                           teacher_models=(_frozen(_Net()), None))
    with pytest.raises(ConfigError, match=message) as err:
        call(inputs)
    assert "\n" not in str(err.value)


def test_the_teachers_classifier_on_student_features_trains_the_student_not_the_teacher():
    """Through Distiller.forward: the term applies the frozen teacher's classifier to a student
    feature; the gradient reaches the feature (and the student), the teacher gets none and is unchanged."""
    student, teacher = _Net(), _frozen(_Net())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = {}

    def srrl_like(inputs):
        seen["student"] = inputs.student_model
        head = inputs.teacher_module("head.fc", loss="probe")
        return F.mse_loss(head(inputs.student_feature), inputs.teacher_logits)

    spec = TermSpec("probe", 2.0, "probe", student="body", teacher="body")
    distiller = Distiller([spec], [srrl_like], TeacherCombiner("avg_logits", 1), ce_weight=0.0, temperature=1.0)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    feature = student.body(x)
    feature.retain_grad()
    with torch.no_grad():
        t_logits = teacher(x)
    loss, _ = distiller(student.head(feature), [t_logits], y, None, {"body": feature},
                        [{"body": teacher.body(x)}], student_model=student, teacher_models=[teacher])
    loss.backward()
    expected = 2.0 * F.mse_loss(feature @ teacher.head.fc.weight.T + teacher.head.fc.bias, t_logits)
    torch.testing.assert_close(loss, expected)
    assert seen["student"] is student and feature.grad is not None and student.body.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    torch.optim.SGD(student.parameters(), lr=0.5).step()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_existing_terms_and_calls_without_models_are_unchanged():
    """Distiller.forward without the model arguments (the earlier signature) and a term that ignores
    them: the same value as before, the fields empty."""
    seen = {}

    def probe(inputs):
        seen.update(student=inputs.student_model, teachers=inputs.teacher_models)
        return inputs.student_logits.sum() * 0

    s, ts, y = _batch()
    distiller = Distiller([TermSpec("probe", 1.0, "probe")], [probe], TeacherCombiner("avg_logits", 2), 1.0, 1.0)
    loss, _ = distiller(s, ts, y)
    torch.testing.assert_close(loss, F.cross_entropy(s, y))
    assert seen == {"student": None, "teachers": ()}


def test_distill_step_hands_the_terms_the_student_and_each_teachers_module_cached_or_online():
    from kdkit.distill.cache import TeacherCache
    from kdkit.distill.step import DistillStep

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.full((5,), float(i)), i % 3

    seen = []

    def probe(inputs):
        seen.append((inputs.student_model, inputs.teacher_module("head.fc", index=0),
                     inputs.teacher_module("head.fc", index=1)))
        return inputs.student_logits.sum() * 0

    online, cached_teacher, student = _frozen(_Net()), _frozen(_Net()), _Net()
    cache = TeacherCache(cached_teacher, Data(), torch.device("cpu"), batch_size=3)
    cache.build()
    distiller = Distiller([TermSpec("probe", 1.0, "probe")], [probe], TeacherCombiner("avg_logits", 2), 1.0, 1.0)
    step = DistillStep(distiller, student, lambda x, y, idx: [online(x), cache[idx]], [online, cache])
    batch = (torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    step(torch.nn.DataParallel(student), batch)
    assert seen == [(student, online.head.fc, cached_teacher.head.fc)]
    # a teacher without a network (a LogitsTeacher's source is None) has no module: one line
    step = DistillStep(distiller, student, lambda x, y, idx: [online(x), online(x)], [online, None])
    with pytest.raises(ConfigError, match="teacher 1, but that teacher is not a network"):
        step(student, batch)


# --- a weighted term must reach the student: checked at the first training step (issue 22, item 13) ----------

class _OwnHead(torch.nn.Module):
    """A loss with its own trainable part applied to the teacher only: its value requires grad, but no
    gradient reaches the student."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(5, 5)

    def __call__(self, inputs):
        return self.head(inputs.teacher_logits).pow(2).mean()


def _student_batch(seed=0):
    torch.manual_seed(seed)
    student = torch.nn.Linear(4, 5)
    x, y = torch.randn(6, 4), torch.randint(0, 5, (6,))
    return student, student(x), [torch.randn(6, 5)], y


@pytest.mark.parametrize("loss, why", [
    (lambda inputs: inputs.teacher_logits.detach().pow(2).mean(), "does not require grad"),
    (lambda inputs: torch.tensor(0.5), "does not require grad"),
    (_OwnHead(), "reaches none of the student's trainable parameters"),
])
def test_a_term_that_cannot_reach_the_student_is_a_one_line_error_at_the_first_step(loss, why):
    student, s, ts, y = _student_batch()
    distiller = Distiller([TermSpec("kl", 0.5, "kd"), TermSpec("teacher_only", 2.0, "tonly")],
                          [build_term_loss(kdkit.get_registry("losses"), TermSpec("kl", 0.5, "kd")), loss],
                          TeacherCombiner("avg_logits", 1), 0.0, 4.0)
    with torch.no_grad():  # materialize and validation: not checked
        distiller(student(torch.randn(6, 4)), ts, y, student_model=student)
    with pytest.raises(ConfigError, match=rf"^config key distill.terms \(tonly, loss teacher_only\): .*{why}") as err:
        distiller(s, ts, y, student_model=student)
    message = str(err.value)
    assert "\n" not in message and "inputs.student_logits" in message and "weight: 0" in message


def test_the_first_step_checks_weighted_terms_only_and_once():
    student, s, ts, y = _student_batch()
    def const(inputs):
        return torch.tensor(0.5)

    kl = build_term_loss(kdkit.get_registry("losses"), TermSpec("kl", 1.0, "kd"))
    # kl reaches the student; a weight-0 constant term (AB / FSP's main stage) is not checked
    distiller = Distiller([TermSpec("kl", 1.0, "kd"), TermSpec("const", 0.0, "off")], [kl, const],
                          TeacherCombiner("avg_logits", 1), 0.5, 4.0)
    loss, logs = distiller(s, ts, y, student_model=student)
    loss.backward()  # the check ran no backward: the step's own one still can
    assert student.weight.grad is not None and float(logs["off"]) == 0.5
    # a constant fails on requires_grad, with the student module or without it
    for model in (student, None):
        distiller = Distiller([TermSpec("const", 1.0, "c")], [const], TeacherCombiner("avg_logits", 1), 0.5, 4.0)
        with pytest.raises(ConfigError, match="does not require grad"):
            distiller(student(torch.randn(6, 4)), ts, y, student_model=model)
    # checked at the first step only (its cost: one walk of the autograd graph per term, once)
    ok = Distiller([TermSpec("kl", 1.0, "kd")], [kl], TeacherCombiner("avg_logits", 1), 0.5, 4.0)
    ok(student(torch.randn(6, 4)), ts, y, student_model=student)
    ok.losses[0] = const
    ok(student(torch.randn(6, 4)), ts, y, student_model=student)



@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_a_term_returning_no_tensor_is_a_one_line_error_whatever_its_weight(weight):
    student, s, ts, y = _student_batch()
    distiller = Distiller([TermSpec("plain", weight, "p")], [lambda inputs: 0.5], TeacherCombiner("avg_logits", 1),
                          0.5, 4.0)
    # at weight 0 it used to pass the first-step check and crash logging the value (float has no detach)
    with pytest.raises(ConfigError, match=r"^config key distill.terms \(p, loss plain\): the loss returned a float, "
                                          r"not a tensor;"):
        distiller(s, ts, y, student_model=student)

CONSTANT_LOSS_PLUGIN = '''
import kdkit


def constant():
    import torch

    def loss(inputs):
        return torch.tensor(0.25)  # computed from nothing the student outputs: it trains nothing

    return loss


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("constant", constant, description="a constant loss (test)")
'''


def test_a_constant_loss_with_alpha_0_stops_the_run_in_one_line_and_keeps_its_checkpoints(
        tmp_path, monkeypatch, capsys, lean_plugin_manager):
    """It used to train on nothing and exit 0."""
    from kdkit_engine_testutil import TINY

    from kdkit.cli import main

    (tmp_path / "kdkit_constant_loss_testplugin.py").write_text(CONSTANT_LOSS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    args = ["--plugins-module", "kdkit_constant_loss_testplugin", "train", "--method", "kd", "--out", str(run)]
    for s in TINY + ["distill.alpha=0", "distill.loss=constant"]:
        args += ["--set", s]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("kdkit: error")]
    expected = ("kdkit: error: config key distill.terms (kd, loss constant): the loss does not depend on the "
                "student's outputs or features (its value does not require grad: a constant or a detached tensor), "
                "so the term would train nothing; compute it from inputs.student_logits or the student's features "
                "(inputs.feature_pairs), or give the term weight: 0 or remove it")
    assert code == 2 and errors == [expected], err
    # stopped at the student's first step: the teacher's checkpoints are whole, the student has none
    assert not list(run.glob("checkpoints/student/*")) and not list(run.rglob("*.tmp"))
    teacher = list(run.glob("checkpoints/teacher*/last.pt"))
    assert teacher and all("model" in torch.load(p, weights_only=True) for p in teacher)


def test_the_check_leaves_a_kd_runs_numbers_unchanged(tmp_path, monkeypatch, manager):
    """The first step's check draws no random numbers and changes no loss: metrics.jsonl is the
    same byte for byte with the check and without it (a logit and a feature term with its own module;
    augmented batches, whose random crops and flips a random number drawn by the check would shift)."""
    from kdkit_engine_testutil import TINY

    from kdkit.engine import train

    sets = [s for s in TINY if s != "data.augment=none"] + [
        "data.augment=weak", "distill.terms=[{loss: kl, weight: 0.5}, "
        "{loss: fitnet, weight: 5.0, student: features.7, teacher: features.7}]"]
    calls = []
    check = Distiller._check_reaches_student
    monkeypatch.setattr(Distiller, "_check_reaches_student",
                        lambda *a: calls.append(a[1].name) or check(*a))
    train("kd", sets=sets, out=tmp_path / "checked", manager=manager)
    assert calls == ["kl", "fitnet"]  # once each, at the student stage's first step
    monkeypatch.setattr(Distiller, "_check_reaches_student", lambda *a: None)
    train("kd", sets=sets, out=tmp_path / "unchecked", manager=manager)
    assert (tmp_path / "checked" / "metrics.jsonl").read_text() == \
        (tmp_path / "unchecked" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_under_torchrun_every_rank_refuses_a_constant_loss_in_one_line(tmp_path, monkeypatch):
    """Both DDP ranks stop at the same first step.  (That the check leaves DDP's gradients as they were:
    tests/engine/test_distributed.py, whose kl and fitnet terms it checks; a torch.compile'd student:
    tests/engine/test_resume.py's compile option.)"""
    from kdkit_engine_testutil import TINY, kdkit_cli

    (tmp_path / "kdkit_constant_loss_testplugin.py").write_text(CONSTANT_LOSS_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    run = tmp_path / "run"
    args = ["--plugins-module", "kdkit_constant_loss_testplugin", "train", "--method", "kd", "--out", str(run)]
    for s in TINY + ["distill.alpha=0", "distill.loss=constant"]:
        args += ["--set", s]
    r = kdkit_cli(args, nproc=2, timeout=180)
    assert r.returncode != 0 and "2 processes" in r.stderr, r.stderr[-3000:]
    line = "kdkit: error: config key distill.terms (kd, loss constant): the loss does not depend on the student's"
    assert r.stderr.count(line) == 2, r.stderr[-3000:]
    assert not list(run.glob("checkpoints/student/*")) and not list(run.rglob("*.tmp"))
