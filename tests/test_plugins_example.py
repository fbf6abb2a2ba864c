"""The example third-party plugin (examples/kdkit-example-plugin): installed, listed, trained with.

The package is installed with pip (offline, no build isolation) into a temporary target
directory, which subprocesses get on PYTHONPATH — exactly how an installed distribution is
found through importlib.metadata and the entry-point group ``kdkit``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kdkit_prestarted
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kdkit-example-plugin"


def _env(target: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install the example plugin into a fresh target directory (no network, no deps)."""
    work = tmp_path_factory.mktemp("example_plugin")
    source = work / "src"
    # build from a copy so the repository's examples/ directory gets no build/ or egg-info
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{proc.stdout}\n{proc.stderr}")
    assert (target / "kdkit_example" / "__init__.py").exists()
    return target


def _kdkit(target: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    # forked from the prestarted process (torch imported); the plugin is found on PYTHONPATH as installed
    return kdkit_prestarted.run([sys.executable, "-m", "kdkit", *args], capture_output=True, text=True,
                                timeout=timeout, env=_env(target, **env), cwd=str(target.parent))


def test_installed_example_appears_in_kdkit_plugins(installed_example):
    proc = _kdkit(installed_example, "plugins", "--json", KDKIT_STRICT_PLUGINS="0")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)}
    example = plugins["example"]
    assert example["distribution"] == "kdkit-example-plugin"
    assert example["version"] == "0.1.0"
    assert example["source"] == "entry point"
    assert sorted(example["hooks"]) == ["kdkit_register_losses", "kdkit_register_teachers"]
    assert example["components"] == {"teachers": ["example_tinynet"], "losses": ["mse_logits", "pooled_cosine"]}
    assert not [line for line in proc.stderr.splitlines() if "'example'" in line]

    blocked = _kdkit(installed_example, "plugins", "--json", KDKIT_BLOCK_PLUGINS="example")
    assert "example" not in {p["name"] for p in json.loads(blocked.stdout)}
    off = _kdkit(installed_example, "plugins", "--json", KDKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert json.loads(off.stdout) == []


def test_example_components_work(monkeypatch, installed_example):
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(installed_example))
    import kdkit_example
    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_example, defaults=False) as manager:
        loss = manager.registry("losses").build("mse_logits")
        teacher = manager.registry("teachers").build("example_tinynet", num_classes=5, width=4)
        assert manager.registry("teachers").get("example_tinynet").plugin == "kdkit_example"
    torch.manual_seed(0)
    logits = teacher(torch.randn(2, 3, 20, 20))
    assert logits.shape == (2, 5)
    from kdkit.distill import DistillInputs

    def inputs(s, t, T):
        return DistillInputs(student_logits=s, teacher_logits=t, temperature=T)

    s = torch.randn(4, 7, requires_grad=True)
    t = torch.randn(4, 7)
    value = loss(inputs(s, t, 4.0))
    assert value.ndim == 0 and value.item() >= 0
    value.backward()
    assert s.grad is not None
    assert loss(inputs(t + 3.0, t, 4.0)).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    # high-temperature limit of T^2 * KL(teacher || student) with centred logits
    s0 = (s.detach() - s.detach().mean(1, keepdim=True)).double()
    t0 = (t - t.mean(1, keepdim=True)).double()
    T = 1000.0
    kl = torch.nn.functional.kl_div(torch.log_softmax(s0 / T, 1), torch.log_softmax(t0 / T, 1),
                                    log_target=True, reduction="batchmean") * T * T
    assert loss(inputs(s0, t0, T)).item() == pytest.approx(kl.item(), rel=1e-2)


def test_pooled_cosine_feature_loss(monkeypatch, installed_example):
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(installed_example))
    import kdkit_example
    from kdkit.distill import DistillInputs
    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_example, defaults=False) as manager:
        loss = manager.registry("losses").build("pooled_cosine")
    logits = torch.zeros(2, 3)
    f = torch.randn(2, 6, 4, 4)

    def value(s, t):
        return loss(DistillInputs(student_logits=logits, student_feature=s, teacher_feature=t)).item()

    assert value(f, 2.0 * f) == pytest.approx(0.0, abs=1e-6)  # same direction
    e = torch.eye(6)[:2]
    assert value(e[:, :, None, None].expand(2, 6, 3, 3), e.flip(0)[:, :, None, None]) == pytest.approx(1.0)
    assert loss.project is None
    from kdkit import ConfigError

    with pytest.raises(ConfigError, match="student: and teacher: module paths"):
        value(None, f)
    mixed = manager.registry("losses").build("pooled_cosine")
    out = mixed(DistillInputs(student_logits=logits, student_feature=torch.randn(2, 4, 5, 5), teacher_feature=f))
    assert mixed.project.weight.shape == (6, 4) and 0.0 <= out.item() <= 2.0


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(_missing("kdkit.methods.kd") or _missing("kdkit.commands.train"),
                    reason="the built-in kd method / kdkit train (engine) is not written yet")
def test_train_with_example_plugin_through_cli(installed_example, tmp_path):
    """`kdkit train --method kd` with the plugin's teacher (trained 1 epoch) and loss, tiny data."""
    out = tmp_path / "run"
    proc = _kdkit(
        installed_example, "train", "--method", "kd", "--out", str(out),
        "--set", "teachers=[{name: example_tinynet, width: 4}]",
        "--set", "distill.loss=mse_logits",
        "--set", "teacher_train.epochs=1",
        "--set", "train.epochs=1",
        "--set", "data.name=shapes", "--set", "student.name=convnet", "--set", "student.width=8",
        "--set", "data.train_per_class=10",
        "--set", "data.test_per_class=5",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "kd"
    assert summary["distill"]["loss"] == "mse_logits"
    assert "teacher.example_tinynet" in summary["teachers"]
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    config = (out / "config.yaml").read_text()
    assert "example_tinynet" in config and "mse_logits" in config
    assert (out / "checkpoints" / "teacher.example_tinynet").is_dir()


@pytest.mark.slow
def test_feature_term_from_the_installed_plugin_trains_end_to_end(installed_example, tmp_path):
    """A third-party feature loss (with a trainable projection) as a distill term: it trains with the
    student, is checkpointed with the stage, stays out of the student's weights, and a run killed in
    the student stage resumes to the uninterrupted run's figures."""
    import torch

    sets = ["teachers=[{name: example_tinynet, width: 4}]", "teacher_train.epochs=1", "train.epochs=2",
            "data.name=shapes", "student.name=convnet", "student.width=8", "data.train_per_class=10", "data.test_per_class=5",
            'distill.terms=[{loss: mse_logits, weight: 0.5}, {loss: pooled_cosine, weight: 2.0, '
            'student: features.10, teacher: "8"}]']
    args = [a for s in sets for a in ("--set", s)]
    ref = _kdkit(installed_example, "train", "--method", "kd", "--out", str(tmp_path / "ref"), *args, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert [t["loss"] for t in summary["distill"]["terms"]] == ["mse_logits", "pooled_cosine"]
    assert summary["distill"]["teacher_cache"] is True  # un-augmented data: logits and tapped features cached
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    student = [x for x in lines if x["stage"] == "student" and "train.pooled_cosine" in x]
    assert len(student) == 2 and student[-1]["train.pooled_cosine"] < student[0]["train.pooled_cosine"] + 1.0
    last = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "ref" / "checkpoints" / "student" / "best.pt", weights_only=True)
    projection = last["extra_modules"]["distill"]["terms.pooled_cosine.project.weight"]
    assert tuple(projection.shape) == (16, 32)  # student features.10: 32 channels; teacher "8": 4 * width
    assert not any("project" in k for k in best["model"])  # the student's exported weights

    killed = _kdkit(installed_example, "train", "--method", "kd", "--out", str(tmp_path / "run"), *args,
                    timeout=300, KDTEST_KILL="after_step:student:1:2", KDKIT_PLUGINS="kdkit_engine_testplugin",
                    PYTHONPATH=os.pathsep.join([str(installed_example), str(Path(__file__).parent / "engine")]))
    assert killed.returncode < 0, killed.stderr[-2000:]
    # the run recorded the fault-injecting module; --resume loads it again by itself (KDTEST_KILL unset)
    resumed = _kdkit(installed_example, "train", "--resume", str(tmp_path / "run"), timeout=300,
                     PYTHONPATH=os.pathsep.join([str(installed_example), str(Path(__file__).parent / "engine")]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()
