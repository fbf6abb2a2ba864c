"""A model whose parameters would not fit in memory is refused before it is allocated (issue 22,
item 9): kdkit.models.footprint, called by Component.build for every teacher and student."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings

import kdkit_prestarted
import numpy as np
import pytest
import torch

import kdkit
from kdkit.errors import ConfigError
from kdkit.models import footprint
from kdkit.registry import Component

pytestmark = pytest.mark.usefixtures("clean_plugin_manager")


@pytest.fixture(autouse=True)
def fresh_sizes(monkeypatch):
    """Each test probes anew (the sizes are cached per process)."""
    monkeypatch.setattr(footprint, "_SIZES", {})
    monkeypatch.delenv(footprint.ENV_LIMIT, raising=False)


def _bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def test_cli_refuses_a_student_too_large_for_memory_in_one_line(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, footprint.ENV_LIMIT: str(64 << 30), "KDKIT_BLOCK_PLUGINS": "soda,wordnet_relax"}
    proc = kdkit_prestarted.run([sys.executable, "-m", "kdkit", "train", "--set", "data.name=shapes",
                           "--set", "student.width=100000", "--out", str(out)],
                                capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    # the run's opening lines (method, data) come first; the error is one line, the last, no traceback
    errors = [line for line in proc.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert errors == proc.stderr.splitlines()[-1:], proc.stderr
    assert errors[0] == ("kdkit: error: student 'resnet8' (width=100000) needs 11101.4 GiB for its parameters and "
                         "buffers, more than the 64.0 GiB of memory set by KDKIT_MEMORY_LIMIT_BYTES; choose a smaller "
                         "model or smaller size options (width, depth, ...)")
    assert not out.exists()


def test_a_model_just_over_the_limit_is_refused_and_one_at_it_built(monkeypatch):
    students = kdkit.get_registry("students")
    need = _bytes(students.get("resnet8").factory(10))
    monkeypatch.setenv(footprint.ENV_LIMIT, str(need - 1))
    with pytest.raises(ConfigError, match=r"^student 'resnet8' needs 307\.5 KiB for its parameters and buffers, "
                                          r"more than the 307\.5 KiB of memory set by KDKIT_MEMORY_LIMIT_BYTES; "
                                          r"choose a smaller model or smaller size options"):
        students.build("resnet8", 10)
    monkeypatch.setenv(footprint.ENV_LIMIT, str(need))
    assert _bytes(students.build("resnet8", 10)) == need


def test_torchvision_model_is_checked_without_its_weights_file(monkeypatch, tmp_path):
    students = kdkit.get_registry("students")
    model = students.build("torchvision:resnet18", 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv(footprint.ENV_LIMIT, str(_bytes(model) - 1))
    with pytest.raises(ConfigError, match=r"^student 'torchvision:resnet18' needs 42\.\d MiB"):
        students.build("torchvision:resnet18", 10, pretrained=str(tmp_path / "w.pt"))


def test_the_probe_loads_no_weights_file(monkeypatch, tmp_path):
    from kdkit.models import weights

    students = kdkit.get_registry("students")
    model = students.build("resnet8", 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loads, load = [], weights.load_weights
    monkeypatch.setattr(weights, "load_weights", lambda m, path, **kw: loads.append(path) or load(m, path, **kw))
    students.build("resnet8", 10, pretrained=str(tmp_path / "w.pt"))  # its factory loads the file itself
    assert loads == [str(tmp_path / "w.pt")]
    monkeypatch.setenv(footprint.ENV_LIMIT, str(_bytes(model) - 1))
    with pytest.raises(ConfigError, match=r"^student 'resnet8' needs"):
        students.build("resnet8", 10, pretrained=str(tmp_path / "w.pt"))
    assert len(loads) == 1


def test_the_probe_skips_weight_init_on_meta_so_it_imports_no_dynamo():
    # normal_, clamp_, erfinv_ on meta tensors import torch._dynamo: 1.5-3 s more for the first build
    code = ("import sys, kdkit\n"
            "model = kdkit.get_registry('students').build('resnet8', 10)\n"
            "assert model.conv1.weight.std() > 0\n"  # the real build still initialises
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "[]\n", proc.stdout + proc.stderr


def test_a_bad_limit_is_one_line(monkeypatch):
    monkeypatch.setenv(footprint.ENV_LIMIT, "12GB")
    with pytest.raises(ConfigError, match=r"^KDKIT_MEMORY_LIMIT_BYTES='12GB': expected the available memory in "
                                          r"bytes, a positive integer; unset it"):
        kdkit.get_registry("teachers").build("convnet", 10)


def _noisy(num_classes, width: int = 4):
    """Draws from every RNG, prints, warns and logs while it builds."""
    print("building")
    warnings.warn("a factory warning")
    extra = int(random.random() * 3) + int(np.random.rand() * 3)
    model = torch.nn.Sequential(torch.nn.Linear(8, width + extra), torch.nn.Linear(width + extra, num_classes))
    model.register_buffer("noise", torch.randn(4, device="cpu"))
    return model


def test_the_probe_leaves_the_rng_and_the_initial_weights_as_they_were(monkeypatch, capsys):
    guard = footprint.check_fits

    def built(seed, component, *args, guarded, **options):
        monkeypatch.setattr(footprint, "check_fits", guard if guarded else lambda *a, **k: None)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        state = component.build(*args, **options).state_dict()
        return state, (random.random(), np.random.rand(), torch.rand(1).item())

    noisy = Component(kind="students", name="noisy", target=_noisy, plugin="test")
    students = kdkit.get_registry("students")
    for component, args, options in ((noisy, (3,), {"width": 5}), (students.get("resnet8"), (10,), {}),
                                     (students.get("torchvision:resnet18"), (10,), {})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weights, after = built(0, component, *args, guarded=True, **options)
            plain, plain_after = built(0, component, *args, guarded=False, **options)
        assert after == plain_after
        assert weights.keys() == plain.keys() and all(torch.equal(weights[k], plain[k]) for k in plain)
        if component is noisy:  # the probe's own output and warning are dropped: once per build
            assert capsys.readouterr().out == "building\nbuilding\n" and len(caught) == 2


def test_a_factory_that_fails_on_the_meta_device_still_builds(monkeypatch):
    calls = []

    def reads_its_weights(num_classes):
        calls.append(torch.get_default_device().type)
        model = torch.nn.Linear(4, num_classes)
        assert model.weight.sum().item() == model.weight.sum().item()  # .item() raises on meta
        return model

    monkeypatch.setenv(footprint.ENV_LIMIT, "1")
    model = Component(kind="teachers", name="reads", target=reads_its_weights, plugin="test").build(2)
    assert calls == ["meta", "cpu"] and model.weight.device.type == "cpu"


def test_a_lazy_module_counts_what_is_initialised(monkeypatch):
    lazy = Component(kind="students", name="lazy", target=lambda n: torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.LazyLinear(n)), plugin="test")
    monkeypatch.setenv(footprint.ENV_LIMIT, "36")  # the Linear: 9 floats
    assert lazy.build(2)(torch.zeros(1, 2)).shape == (1, 2)
    monkeypatch.setenv(footprint.ENV_LIMIT, "35")
    with pytest.raises(ConfigError, match=r"^student 'lazy' needs 36 bytes"):
        lazy.build(2)


def test_the_size_is_probed_once_per_component_and_options(monkeypatch):
    calls = []

    def net(num_classes, width=2):
        calls.append(width)
        return torch.nn.Linear(width, num_classes)

    component = Component(kind="students", name="net", target=net, plugin="test")
    for width in (2, 2, 3):
        component.build(2, width=width)
    assert calls == [2, 2, 2, 3, 3]  # probe, build, build, probe, build


def test_an_hf_directory_is_not_probed(monkeypatch):
    calls = []
    hf = Component(kind="students", name="hf:DIR", target=lambda n, **o: calls.append(o) or torch.nn.Linear(1, n),
                   plugin="builtin", declared_options={}, metadata={"source": "hf:"}, accepts_more=True)
    monkeypatch.setenv(footprint.ENV_LIMIT, "1")
    hf.build(2)
    assert len(calls) == 1
