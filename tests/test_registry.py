"""One declaration for every component: ``register(name, target, options={...})``.

The declaration is the one source of a component's options: the config, ``--help-config`` and the
registry's ``build`` all read it.  These tests hold kdkit's own components to it and check the
mechanism itself (lazy targets, checked and completed options, one-line errors).
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import kdkit
from kdkit.config import ConfigKey
from kdkit.errors import ConfigError, PluginError
from kdkit.registry import Component, load_target

BUILTIN_PLUGINS = ("kdkit.data.builtin", "kdkit.models.builtin", "kdkit.losses", "methods", "soda")


def _builtin_components():
    manager = kdkit.get_plugin_manager()
    for kind in ("teachers", "students", "losses", "datasets"):
        for component in manager.registry(kind):
            if component.plugin in BUILTIN_PLUGINS:
                yield component


def _signature_defaults(component) -> dict:
    def defaults(target) -> dict:
        params = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
        return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}

    if component.kind in ("teachers", "students"):  # build_model(name, ...) around the model's own builder
        from kdkit.models.zoo import MODELS, build_model

        return {**defaults(MODELS[component.name].build), **defaults(build_model)}
    return defaults(component.factory)


@pytest.mark.parametrize("component", list(_builtin_components()), ids=lambda c: f"{c.kind}:{c.name}")
def test_builtin_components_declare_every_option_with_help_and_type(component):
    """Each built-in option is declared (typed, one line of help), and the declaration agrees with the
    code it configures: same names as the target's keyword parameters, same defaults."""
    assert not component.accepts_any, f"{component.kind} {component.name!r} declares no options"
    defaults = _signature_defaults(component)
    for name, key in component.options.items():
        assert isinstance(key, ConfigKey) and key.help and key.type is not None, name
        assert name in defaults, f"{component.name}: declared option {name!r} is not a parameter of its target"
        assert key.default == defaults[name], f"{component.name}.{name}: declared {key.default!r}, code {defaults[name]!r}"
    code_only = {"split", "root", "transform", "num_classes", "val_fraction"}
    undeclared = set(defaults) - set(component.options) - code_only
    assert not undeclared, f"{component.name}: parameters without a declaration: {sorted(undeclared)}"


def test_registering_imports_no_target_module():
    """Listing every component imports neither torch nor any component module."""
    code = ("import sys, kdkit\n"
            "pm = kdkit.get_plugin_manager()\n"
            "n = sum(len(pm.registry(k)) for k in ('teachers', 'students', 'losses', 'datasets', 'methods',"
            " 'text_relaxers'))\n"
            "heavy = [m for m in ('torch', 'kdkit_methods.logit', 'kdkit_soda.data', 'kdkit_soda.method',"
            " 'kdkit_wordnet_relax.method', 'kdkit.data.shapes') if m in sys.modules]\n"
            "print(n, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, heavy = out.stdout.split(" ", 1)
    assert int(count) > 30 and heavy.strip() == "[]"


def test_build_checks_and_completes_declared_options():
    def make(size, *, scale=1.0, mode="a"):
        return size, scale, mode

    component = Component("losses", "toy", make, "test", declared_options={
        "scale": ConfigKey(1.0, "a scale", range="(0, inf)"), "mode": ConfigKey("a", "a mode", choices=("a", "b"))})
    assert component.build(3, scale=2) == (3, 2.0, "a")  # the int promoted, the default filled in
    with pytest.raises(ConfigError, match=r"^loss 'toy': option scale: expected float in \(0, inf\), got 0.0$"):
        component.build(3, scale=0)
    with pytest.raises(ConfigError, match=r"^loss 'toy': unknown option 'sclae'; valid options: mode, scale$"):
        component.build(3, sclae=2)
    with pytest.raises(ConfigError, match=r"^config key distill\.terms\.0\.options\.mode: expected one of a, b"):
        component.check_options({"mode": "c"}, "distill.terms.0.options")
    open_component = Component("losses", "open", make, "test")  # registered without options
    assert open_component.accepts_any and open_component.options == {}
    assert open_component.check_options({"anything": 2}) == {"anything": 2}


def test_lazy_target_is_imported_when_first_built():
    assert load_target("kdkit.registry:Component") is Component
    assert load_target("kdkit.config:ConfigKey.with_default") is ConfigKey.with_default


@pytest.mark.parametrize("target, message", [
    ("not callable", "is not an import path"),
    ("kdkit.registry", "is not an import path"),
    ("kdkit.registry:", "is not an import path"),
    (42, "is not callable"),
])
def test_a_bad_target_is_a_one_line_plugin_error(target, message):
    from kdkit.plugins import plugin_manager_for_testing

    class Plugin:
        @kdkit.hookimpl
        def kdkit_register_losses(self, register):
            register("bad", target)

    with plugin_manager_for_testing(Plugin(), defaults=False) as pm, pytest.raises(PluginError, match=message):
        pm.registry("losses")


def test_options_must_be_config_keys():
    from kdkit.plugins import plugin_manager_for_testing

    class Plugin:
        @kdkit.hookimpl
        def kdkit_register_losses(self, register):
            register("bad", "kdkit.losses:KLDivLoss", options={"scale_by_t2": True})

    with plugin_manager_for_testing(Plugin(), defaults=False) as pm, pytest.raises(PluginError, match="ConfigKey"):
        pm.registry("losses")


def test_contract_arguments_are_not_options():
    """``num_classes`` of a model and ``split`` / ``root`` of a dataset pass by name unchecked."""
    registry = kdkit.get_registry("students")
    model = registry.build("convnet", num_classes=3, width=4)
    assert model.kdkit_name == "convnet" and model(__import__("torch").zeros(1, 3, 8, 8)).shape == (1, 3)
    with pytest.raises(ConfigError, match="student 'convnet': unknown option 'depth'"):
        registry.build("convnet", num_classes=3, depth=4)
    dataset = kdkit.get_registry("datasets").build("shapes", split="test", root=None, test_per_class=1,
                                                    image_size=8)
    assert len(dataset) == 10
