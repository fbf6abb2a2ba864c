"""kdkit.distill.terms: a term whose loss reads features (registered ``inputs="features"``) must name
module paths, checked with the config, before a run directory exists; and every registered loss's
``inputs`` declaration matches what the loss does with a term that has no features."""
from __future__ import annotations

import sys

import kdkit_prestarted
import pytest
import torch

import kdkit
from kdkit.distill import DistillInputs
from kdkit.distill.terms import check_distill
from kdkit.errors import ConfigError, PluginError


def _distill(terms) -> dict:
    section = {k: key.default for k, key in kdkit.distill.distill_section().items()}
    return {**section, "terms": terms}


@pytest.mark.parametrize("term, missing", [
    ({"loss": "fitnet"}, "no student and teacher module path"),
    ({"loss": "fitnet", "student": "layer3"}, "no teacher module path"),
    ({"loss": "at", "teacher": ["layer1", "layer2"]}, "no student module path"),
])
def test_a_feature_loss_without_module_paths_is_refused_with_the_config(term, missing):
    with pytest.raises(ConfigError, match=missing) as err:
        check_distill(_distill([term]), registry=kdkit.get_registry, num_teachers=1)
    assert "\n" not in str(err.value) and "kdkit layers" in str(err.value)


def test_feature_and_logit_terms_with_their_inputs_pass():
    specs = check_distill(_distill([{"loss": "kl", "weight": 0.5},
                                    {"loss": "fitnet", "student": "layer2", "teacher": "layer3"}]),
                          registry=kdkit.get_registry, num_teachers=1)
    assert [s.loss for s in specs] == ["kl", "fitnet"]


def test_the_cli_refuses_it_before_the_run_directory_exists(tmp_path):
    out = tmp_path / "run"
    proc = kdkit_prestarted.run([sys.executable, "-m", "kdkit", "train", "--set", "data.name=shapes",
                                 "--set", "distill.terms=[{loss: fitnet, weight: 1}]", "--out", str(out)],
                                capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdkit: error:") and "'fitnet' distils features" in lines[0]
    assert not out.exists()


def _no_feature_inputs() -> DistillInputs:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=g, requires_grad=True)
    teacher = torch.randn(8, 5, generator=g)
    return DistillInputs(student_logits=student, teacher_logits=teacher, all_teacher_logits=[teacher],
                         labels=torch.arange(8) % 5, indices=torch.arange(8), temperature=4.0, num_samples=8)


def test_every_losses_inputs_declaration_matches_what_it_does_without_features():
    """A loss declared ``inputs="features"`` asks for a feature when given none; every other loss
    computes a value from the logits alone.  (So the check above neither misses a feature loss nor
    refuses a logit one.)"""
    losses = kdkit.get_registry("losses")
    feature = {c.name for c in losses if c.needs_features}
    assert {"fitnet", "at", "crd", "reviewkd", "simkd", "catkd"} <= feature  # built-in and kdkit_methods
    for component in losses:
        loss = losses.build(component.name)
        if component.needs_features:
            with pytest.raises(ConfigError, match="needs a (student|teacher) feature"):
                loss(_no_feature_inputs())
        else:
            value = loss(_no_feature_inputs())
            assert value.dim() == 0 and torch.isfinite(value), component.name


def test_a_plugin_declaring_unknown_inputs_is_named():
    from kdkit.plugins import PluginManager

    class Plugin:
        @kdkit.hookimpl
        def kdkit_register_losses(self, register):
            register("oddloss", lambda: None, inputs="pixels")

    pm = PluginManager()
    pm.register(Plugin(), name="odd")
    with pytest.raises(PluginError, match="oddloss.*inputs='pixels'.*'logits', 'features'"):
        pm.registries()
