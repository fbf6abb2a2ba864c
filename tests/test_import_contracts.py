"""The import contracts of pyproject.toml ``[tool.importlinter]`` (import-linter) hold, and fail when
broken: a plugin importing an internal module, the engine importing the distillation layer above
it, an import cycle inside a package.  The layer order is written down in docs/architecture.md.

The failing cases run ``lint-imports`` on a copy of the packages (kdkit and the built-in plugins,
first on ``PYTHONPATH``) with one import added.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("kdkit_methods", "kdkit_soda", "kdkit_wordnet_relax", "kdkit_tensorboard")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")


def _lint(cwd: Path, pythonpath: Path | None = None) -> tuple[int, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the Python sources of kdkit and the built-in plugins, with pyproject.toml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    shutil.copytree(ROOT / "kdkit", tmp_path / "kdkit", ignore=ignore)
    for name in PLUGINS:
        shutil.copytree(ROOT / "plugins" / name, tmp_path / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_contracts_hold():
    code, out = _lint(ROOT)
    assert code == 0, out
    assert "Contracts: 3 kept, 0 broken." in out


def test_a_plugin_importing_an_internal_module_breaks_the_public_api_contract(tree):
    (tree / "kdkit_soda" / "leak.py").write_text("from kdkit.engine.trainer import Trainer\n", encoding="utf-8")
    code, out = _lint(tree, tree)
    assert code == 1
    assert "Plugins import only kdkit's public API: kdkit, kdkit.distill, kdkit.ops BROKEN" in out
    assert "kdkit_soda.leak -> kdkit.engine.trainer" in out
    assert "Contracts: 2 kept, 1 broken." in out


def test_the_engine_importing_the_distill_layer_breaks_the_layers_and_makes_a_cycle(tree):
    _append(tree / "kdkit" / "engine" / "data.py", "from kdkit.distill.taps import FeatureTaps  # noqa")
    code, out = _lint(tree, tree)
    assert code == 1
    assert "kdkit's layers: each module imports only the layers below it BROKEN" in out
    assert "kdkit.engine is not allowed to import kdkit.distill" in out
    assert "kdkit.engine.data -> kdkit.distill.taps" in out
    assert "No import cycles among the modules of any kdkit package BROKEN" in out


def test_a_cycle_inside_a_package_breaks_the_acyclic_contract(tree):
    # kdkit.engine.trainer imports kdkit.engine.checkpoint; the reverse import closes a cycle inside
    # kdkit.engine, which the layers contract (between kdkit's top-level modules) does not see
    _append(tree / "kdkit" / "engine" / "checkpoint.py", "def _late():\n    from kdkit.engine import trainer  # noqa")
    code, out = _lint(tree, tree)
    assert code == 1
    assert "No import cycles among the modules of any kdkit package BROKEN" in out
    assert "No cycles are allowed in kdkit.engine" in out
    assert "Contracts: 2 kept, 1 broken." in out
