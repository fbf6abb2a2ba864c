"""The public API is defined once and enforced.

* Plugins (kdkit's own under plugins/, the example under examples/) import nothing of kdkit but
  ``kdkit``, ``kdkit.distill`` and ``kdkit.ops`` — statically, and through ``lazy_import``.
* Every public name resolves, and docs/writing-plugins.md documents it (after datasette's
  documentation-coverage test).
* The public API is the set below; the names that left it (public only for a second copy of the
  student stage, which ``kdkit.distill.StudentStage`` replaced) still resolve for one release, with
  one DeprecationWarning each.
"""
from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

import kdkit
import kdkit.distill

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"kdkit", "kdkit.distill", "kdkit.ops"}
DOCS = ROOT / "docs" / "writing-plugins.md"


def _kdkit_imports(path: Path):
    """``(line, module)`` of every kdkit module the file imports (``import``, ``from``, ``lazy_import``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "kdkit":  # "from kdkit import ops" names a submodule
                for alias in node.names:
                    if alias.name not in kdkit.__all__:
                        yield node.lineno, f"kdkit.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "lazy_import"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def _is_kdkit(module: str) -> bool:
    return module == "kdkit" or module.startswith("kdkit.")


PLUGIN_FILES = sorted(p for d in ("plugins", "examples") for p in (ROOT / d).rglob("*.py"))


def test_plugins_found():
    names = {p.relative_to(ROOT).as_posix() for p in PLUGIN_FILES}
    assert "plugins/kdkit_wordnet_relax/method.py" in names and "plugins/kdkit_soda/method.py" in names
    assert "examples/kdkit-example-plugin/kdkit_example/__init__.py" in names


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_plugins_use_only_the_public_api(path):
    private = [f"line {line}: {module}" for line, module in _kdkit_imports(path)
               if _is_kdkit(module) and module not in PUBLIC_MODULES]
    assert not private, f"{path.relative_to(ROOT)} imports kdkit internals: {'; '.join(private)}"


def test_the_boundary_check_catches_private_imports(tmp_path):
    sample = tmp_path / "plugin.py"
    sample.write_text("import kdkit\nfrom kdkit.engine import Stage\nfrom kdkit import config\n"
                      "x = kdkit.lazy_import('kdkit.engine.trainer')\nfrom kdkit_other import y\n")
    found = [m for _, m in _kdkit_imports(sample) if _is_kdkit(m) and m not in PUBLIC_MODULES]
    assert found == ["kdkit.engine", "kdkit.config", "kdkit.engine.trainer"]


@pytest.mark.parametrize("namespace, name", [("kdkit", n) for n in kdkit.__all__ if n != "__version__"]
                         + [("kdkit.distill", n) for n in kdkit.distill.__all__])
def test_every_public_name_resolves_and_is_documented(namespace, name):
    module = kdkit if namespace == "kdkit" else kdkit.distill
    assert getattr(module, name) is not None
    text = DOCS.read_text(encoding="utf-8")
    assert re.search(rf"`({re.escape(namespace)}\.)?{re.escape(name)}[`(]", text), (
        f"{namespace}.{name} is public but docs/writing-plugins.md does not document it")


#: the public API: what plugins may use besides kdkit.ops (an addition is argued in its commit)
PUBLIC = {
    "kdkit": {
        "__version__", "hookimpl", "KdkitError", "ConfigError", "DataError", "PluginError", "UnknownComponentError",
        "get_registry", "get_plugin_manager", "lazy_import",
        "ConfigKey", "base_config", "train_section", "Method", "RunContext", "Stage", "StageResult", "TrainingError",
        "freeze", "classification_eval", "to_device", "derive_seed", "seed_everything", "atomic_torch_save",
        "atomic_write_text", "cache_root", "load_weights", "all_gather_with_grad", "all_reduce_mean", "is_main_process",
        "mean_average_precision", "ClipEncoder", "build_clip",
    },
    "kdkit.distill": {
        "StudentStage", "LogitsTeacher", "KDMethod", "FeatureTaps", "module_paths", "TeacherCombiner",
        "COMBINE_RULES", "Distiller", "DistillInputs", "build_term_loss", "TermSpec", "distill_section",
        "distill_terms", "conv_regressor",
    },
}

#: names that left the public API -> the module that still defines them
DEPRECATED = {
    "kdkit": {"plain_defaults": "kdkit.config", "WithIndex": "kdkit.engine.data", "TeacherCache": "kdkit.distill.cache",
              "make_eval_loader": "kdkit.engine.data", "dataset_classes": "kdkit.engine.data"},
    "kdkit.distill": {"DistillStep": "kdkit.distill.step", "build_distiller": "kdkit.distill.step",
                      "check_taps": "kdkit.distill.step", "TeacherAgreement": "kdkit.distill.agreement",
                      "agreement_samples": "kdkit.distill.terms", "check_distill": "kdkit.distill.terms",
                      "check_teachers": "kdkit.distill.teachers", "train_teachers": "kdkit.distill.teachers"},
}


@pytest.mark.parametrize("namespace", sorted(PUBLIC))
def test_the_public_api_is_the_declared_set(namespace):
    module = importlib.import_module(namespace)
    assert set(module.__all__) == PUBLIC[namespace]
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("namespace, name", [(ns, n) for ns in sorted(DEPRECATED) for n in sorted(DEPRECATED[ns])])
def test_a_name_that_left_the_api_still_resolves_with_one_deprecation_warning(namespace, name, monkeypatch):
    import kdkit.lazy

    monkeypatch.setattr(kdkit.lazy, "_WARNED", set())
    module = importlib.import_module(namespace)
    assert name not in module.__all__ and name not in dir(module)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(namespace)}\.{name} is deprecated .*: .+"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(DEPRECATED[namespace][name]), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(module, name) is value  # once per process


def test_the_method_protocol_is_declared_once_and_every_builtin_method_follows_it():
    import typing

    from kdkit.methods.kd import KDMethod
    from kdkit_methods.presets import PRESETS
    from kdkit_soda.method import SodaMethod
    from kdkit_wordnet_relax.method import WordNetRelaxMethod

    assert kdkit.Method is importlib.import_module("kdkit.engine").Method
    members = {"default_config", "check_config", "run", "evaluate", "encode"}
    assert members <= set(vars(kdkit.Method)) and "component_sections" in typing.get_type_hints(kdkit.Method)
    for cls in (KDMethod, SodaMethod, WordNetRelaxMethod, *(p.method() for p in PRESETS)):
        assert issubclass(cls, kdkit.Method), cls
