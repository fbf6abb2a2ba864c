"""The method classes with an initialisation stage (kdkit_methods.init_stage): ab, fsp and ft.

Each is registered and documented, runs end to end on the embedded data, resumes exactly after an
interruption in its initialisation stage or in the student's main stage, and its initialisation
stage really trains what the main stage then starts from: AB's and FSP's ``student.init`` changes
the student, whose weights the ``student`` stage starts with; FT's ``paraphraser`` stage trains the
paraphraser that the ``ft`` term then uses, frozen.  (test_presets.py covers the presets only.)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import kdkit_methods
import pytest
import torch
from kdkit_methods.init_stage import INIT_METHODS

import kdkit

ROOT = Path(__file__).resolve().parents[3]
#: CIFAR ResNet-8s at width 4, 10 classes x 8 images, two epochs in every stage
TINY = ["data.name=shapes", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
        "teachers=[{name: resnet8, width: 4}]", "student.name=resnet8", "student.width=4",
        "teacher_train.epochs=1", "train.epochs=2", "init.epochs=2", "train.batch_size=16",
        "teacher_train.batch_size=16", "train.lr=0.01", "logging.progress=false"]
INIT_STAGE = {"ab": "student.init", "fsp": "student.init", "ft": "paraphraser"}
#: per method: AB's student at width 8 against the width-4 teacher, so its connectors (conv + BN) exist
SETS = {"ab": [*TINY, "student.width=8"], "fsp": TINY, "ft": TINY}


class Interrupt(Exception):
    pass


class _Plugin:
    """Raises :class:`Interrupt` after the ``at``-th step of stage ``stage``'s second epoch (after the first
    epoch's checkpoint); records every stage's model weights at the start of each epoch."""

    stage: str | None = None
    at: int | None = None
    seen = 0
    states: ClassVar[dict] = {}

    @kdkit.hookimpl
    def kdkit_before_epoch(self, trainer, epoch):
        self.states[(trainer.stage.name, epoch)] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    @kdkit.hookimpl
    def kdkit_after_step(self, trainer, step, loss, logs):
        if self.at is not None and trainer.stage.name == self.stage and trainer.epoch == 1:
            self.seen += 1
            if self.seen == self.at:
                raise Interrupt


PLUGIN = _Plugin()


@pytest.fixture
def methods_manager():
    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_methods, PLUGIN) as pm:
        yield pm


_REFERENCE: dict = {}


def reference_run(name, root: Path, manager):
    """The uninterrupted run of method ``name`` (once per test session) and the weights recorded in it."""
    if name not in _REFERENCE:
        from kdkit.engine import train

        PLUGIN.states = {}
        out = root / f"ref-{name}"
        summary = train(name, sets=SETS[name], out=out, manager=manager)
        _REFERENCE[name] = (out, summary, dict(PLUGIN.states))
    return _REFERENCE[name]


def _load(path):
    return torch.load(path, weights_only=True)


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_the_methods_are_registered_and_documented(methods_manager):
    methods = methods_manager.registry("methods")
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in INIT_METHODS:
        assert name in methods
        assert f"--method {name}" in text, f"docs/methods.md does not show `kdkit train --method {name}`"


@pytest.mark.parametrize("name, killed", [("ab", "student.init"), ("ab", "student"), ("fsp", "student"),
                                          ("ft", "paraphraser"), ("ft", "student")])
def test_method_runs_end_to_end_and_resumes_exactly(name, killed, tmp_path_factory, methods_manager):
    from kdkit.engine import train

    root = tmp_path_factory.getbasetemp()
    ref, summary, _ = reference_run(name, root, methods_manager)
    assert summary["method"] == name and summary["init"]["stage"] == INIT_STAGE[name]
    lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    init_lines = [x for x in lines if x["stage"] == INIT_STAGE[name] and "train.loss" in x]
    student = [x for x in lines if x["stage"] == "student" and "train.loss" in x]
    assert len(init_lines) == 2 and len(student) == 2
    assert all(math.isfinite(x["train.loss"]) for x in init_lines + student)
    best = _load(ref / "checkpoints" / "student" / "best.pt")
    assert not any(k.startswith("terms.") for k in best["model"])  # the student's weights alone

    out = tmp_path_factory.mktemp(f"run-{name}-{killed}")
    PLUGIN.stage, PLUGIN.at, PLUGIN.seen = killed, 2, 0
    try:
        with pytest.raises(Interrupt):
            train(name, sets=SETS[name], out=out, manager=methods_manager)
    finally:
        PLUGIN.at = None
    train(resume=out, manager=methods_manager)
    assert (out / "summary.json").read_text() == (ref / "summary.json").read_text()
    for stage in (INIT_STAGE[name], "student"):
        want, got = _load(ref / "checkpoints" / stage / "last.pt"), _load(out / "checkpoints" / stage / "last.pt")
        _equal_states(got["model"], want["model"])
        for module in want["extra_modules"]:  # the terms' trainable state (connectors, translator, paraphraser)
            _equal_states(got["extra_modules"][module], want["extra_modules"][module])


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_the_init_stage_trains_the_student_the_main_stage_starts_from(name, tmp_path_factory, methods_manager):
    ref, _, states = reference_run(name, tmp_path_factory.getbasetemp(), methods_manager)
    fresh = states[("student.init", 0)]
    init_end = _load(ref / "checkpoints" / "student.init" / "last.pt")["model"]  # no evaluation: last = best
    main_start = states[("student", 0)]
    _equal_states(main_start, init_end)
    changed = [k for k in fresh if fresh[k].is_floating_point() and not torch.equal(fresh[k], init_end[k])]
    assert any(k.startswith("layer3.") for k in changed) and any(k.startswith("layer1.") for k in changed)
    # the init objective has no cross-entropy: the classifier gets no gradient, weight decay alone moves it
    assert not any(k.startswith("conv1") for k in fresh if k not in changed and fresh[k].is_floating_point())
    if name == "ab":  # the connectors (student width 8 -> teacher width 4: conv + BN) trained in student.init
        connectors = {k: v for k, v in _load(ref / "checkpoints" / "student.init" / "last.pt")["extra_modules"]
                      ["distill"].items() if k.startswith("terms.ab.connectors.")}
        assert any(k.endswith("running_mean") for k in connectors)
        assert all(int(v) > 0 for k, v in connectors.items() if k.endswith("num_batches_tracked"))


def test_ft_trains_the_paraphraser_first_and_keeps_it_frozen(tmp_path_factory, methods_manager):
    ref, summary, states = reference_run("ft", tmp_path_factory.getbasetemp(), methods_manager)
    fresh = states[("paraphraser", 0)]
    trained = _load(ref / "checkpoints" / "paraphraser" / "last.pt")["model"]
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    assert summary["init"]["channels"] == 16 and summary["init"]["factor_channels"] == 8  # k = 0.5
    for checkpoint in ("last.pt", "best.pt"):  # the ft term's paraphraser is the trained one, unchanged
        distill = _load(ref / "checkpoints" / "student" / checkpoint)["extra_modules"]["distill"]
        used = {k[len("terms.ft.paraphraser."):]: v for k, v in distill.items() if k.startswith("terms.ft.paraphraser.")}
        _equal_states(used, trained)
        assert any(k.startswith("terms.ft.translator.") for k in distill)
    # the main stage started from a fresh student (FT's init stage does not train it)
    assert ("student.init", 0) not in states


def test_ft_without_an_ft_term_is_a_one_line_error(tmp_path, methods_manager):
    from kdkit.engine import train

    with pytest.raises(kdkit.ConfigError, match="ft term") as err:
        train("ft", sets=[*TINY, "distill.terms=[{loss: kl, weight: 0.5}]"], out=tmp_path / "run",
              manager=methods_manager)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_wrong_init_layer_is_a_one_line_error_before_any_teacher_trains(tmp_path, methods_manager):
    from kdkit.engine import train

    with pytest.raises(kdkit.ConfigError, match="layer9") as err:
        train("fsp", sets=[*TINY, "init.distill.terms.0.student=[layer1.0.shortcut, layer1, layer9, layer3]"],
              out=tmp_path / "run", manager=methods_manager)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
