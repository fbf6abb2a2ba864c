"""The method presets of the ``methods`` plugin: each is registered, documented, runs end to end on the
embedded data with its paper's terms (the terms' trainable state trained and checkpointed with the
stage), resumes exactly after an interruption in the student stage, and reports a wrong layer as a
one-line error before any teacher trains."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from kdkit_methods.presets import PRESETS
from methods_harness import INTERRUPT, TINY, Interrupt, methods_plugin_manager

import kdkit

ROOT = Path(__file__).resolve().parents[3]
NAMES = [p.name for p in PRESETS]
FEATURE_PRESETS = [p.name for p in PRESETS if any("student" in t for t in p.terms)]
@pytest.fixture
def methods_manager():
    with methods_plugin_manager() as pm:
        yield pm


def test_every_preset_is_a_registered_method_and_its_losses_are_registered(methods_manager):
    methods, losses = methods_manager.registry("methods"), methods_manager.registry("losses")
    assert len(NAMES) >= 12 and all(name in methods for name in NAMES)
    for preset in PRESETS:
        for term in preset.terms:
            assert term["loss"] in losses, (preset.name, term["loss"])


def test_every_preset_is_documented_in_docs_methods():
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in NAMES:
        assert f"--method {name}" in text, f"docs/methods.md does not show `kdkit train --method {name}`"


@pytest.mark.parametrize("name", NAMES)
def test_preset_runs_end_to_end_and_resumes_exactly(name, tmp_path, methods_manager):
    from kdkit.engine import train

    summary = train(name, sets=TINY, out=tmp_path / "ref", manager=methods_manager)
    assert summary["method"] == name
    terms = [t["name"] for t in summary["distill"]["terms"]]
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    student = [x for x in lines if x["stage"] == "student" and "train.loss" in x]
    assert len(student) == 2
    for term in terms:  # every paper term is evaluated, logged and finite
        assert all(math.isfinite(x[f"train.{term}"]) for x in student), (term, student)
    last = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "last.pt", weights_only=True)
    distill_state = last["extra_modules"]["distill"]
    best = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "best.pt", weights_only=True)
    assert not any(k.startswith("terms.") for k in best["model"])  # the student's weights alone

    INTERRUPT.at, INTERRUPT.seen = 2, 0
    try:
        with pytest.raises(Interrupt):
            train(name, sets=TINY, out=tmp_path / "run", manager=methods_manager)
    finally:
        INTERRUPT.at = None
    train(resume=tmp_path / "run", manager=methods_manager)
    assert (tmp_path / "run" / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "student" / "last.pt", weights_only=True)
    assert resumed["extra_modules"]["distill"].keys() == distill_state.keys()
    for key, value in distill_state.items():  # the terms' trainable state (regressors, banks) included
        assert torch.equal(resumed["extra_modules"]["distill"][key], value), key


@pytest.mark.parametrize("name", FEATURE_PRESETS)
def test_a_wrong_layer_is_a_one_line_error_before_any_teacher_trains(name, tmp_path, methods_manager):
    from kdkit.engine import train

    preset = next(p for p in PRESETS if p.name == name)
    paths = preset.terms[0]["student"]
    wrong = "[layer1, layer9, layer3]" if isinstance(paths, list) else "layer9"
    with pytest.raises(kdkit.ConfigError, match="layer9") as err:
        train(name, sets=[*TINY, f"distill.terms.0.student={wrong}"], out=tmp_path / "run", manager=methods_manager)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
