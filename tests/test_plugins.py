"""Plugin discovery, switches, registries and `kdkit plugins` (kdkit/plugins.py)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

import kdkit
from kdkit import plugins as kp
from kdkit.cli import main
from kdkit.errors import PluginError, UnknownComponentError

ENV_VARS = (kp.ENV_DISABLE_AUTOLOAD, kp.ENV_BLOCK, kp.ENV_STRICT, kp.ENV_MODULES)

LOSS_PLUGIN = """
import kdkit

@kdkit.hookimpl
def kdkit_register_losses(register):
    register("{loss}", lambda **options: (lambda s, t, temperature: 0.0), description="test loss")
"""

BROKEN_PLUGIN = """
raise RuntimeError("boom at import")
"""


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch):
    """A fresh process-wide manager, no KDKIT_* switches, no internal modules (fast, isolated)."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kp, "DEFAULT_PLUGINS", ())
    kp.reset_plugin_manager()
    yield
    kp.reset_plugin_manager()


def _purge(names):
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fake site directory on sys.path where tests create modules and distributions."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created: list[str] = []

    class Site:
        path = root

        def module(self, name: str, source: str) -> str:
            (root / f"{name}.py").write_text(textwrap.dedent(source))
            created.append(name)
            _purge([name])
            importlib.invalidate_caches()
            return name

        def dist(self, name: str, version: str, entry_points: dict[str, str]) -> Path:
            """A minimal installed distribution: METADATA + entry_points.txt in group kdkit."""
            info = root / f"{name.replace('-', '_')}-{version}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
            lines = ["[kdkit]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
            (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
            return info

    yield Site()
    _purge(created)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kdkit: warning:")]


def _errors(err: str) -> list[str]:
    """stderr without warnings about kdkit's own plugins (absent in a bare checkout)."""
    return [line for line in err.splitlines() if not line.startswith("kdkit: warning:")]


# --- discovery through entry points ---------------------------------------------------------

def test_entry_point_plugin_is_discovered_with_its_distribution(site):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})

    manager = kdkit.get_plugin_manager()
    component = manager.registry("losses").get("fake_loss")
    assert component.plugin == "fakegood"
    assert component.description == "test loss"
    info = {i.name: i for i in manager.plugin_info()}["fakegood"]
    assert (info.version, info.distribution, info.source) == ("1.2", "kdkit-fake", "entry point")
    assert info.hooks == ["kdkit_register_losses"]
    assert info.components == {"losses": ["fake_loss"]}
    assert kdkit.get_registry("losses").get("fake_loss") is component


def test_broken_plugin_is_one_warning_naming_plugin_and_distribution(site, capsys):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.module("fake_broken", BROKEN_PLUGIN)
    site.dist("kdkit-fake", "1.2", {"fakebroken": "fake_broken", "fakegood": "fake_good"})

    manager = kdkit.get_plugin_manager()
    assert "fake_loss" in manager.registry("losses")  # the good one still loads
    lines = [line for line in _warnings(capsys.readouterr().err) if "fakebroken" in line]
    assert len(lines) == 1
    assert "'fakebroken'" in lines[0] and "kdkit-fake 1.2" in lines[0] and "boom at import" in lines[0]
    assert [f.name for f in manager.failures if f.distribution == "kdkit-fake"] == ["fakebroken"]
    assert not manager.has_plugin("fakebroken")


def test_strict_switch_reraises_broken_plugin(site, monkeypatch):
    site.module("fake_broken", BROKEN_PLUGIN)
    site.dist("kdkit-fake", "1.2", {"fakebroken": "fake_broken"})
    monkeypatch.setenv("KDKIT_STRICT_PLUGINS", "1")
    monkeypatch.setenv("KDKIT_BLOCK_PLUGINS", "soda,wordnet_relax,tensorboard")  # kdkit's own
    with pytest.raises(RuntimeError, match="boom at import"):
        kdkit.get_plugin_manager()


def test_block_switch_skips_named_plugins(site, capsys, monkeypatch):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.module("fake_broken", BROKEN_PLUGIN)
    site.dist("kdkit-fake", "1.2", {"fakebroken": "fake_broken", "fakegood": "fake_good"})
    monkeypatch.setenv("KDKIT_BLOCK_PLUGINS", " fakebroken , fakegood")

    manager = kdkit.get_plugin_manager()
    assert "fake_loss" not in manager.registry("losses")
    assert "fake_broken" not in sys.modules  # blocked means never imported
    assert not [line for line in _warnings(capsys.readouterr().err) if "fake" in line]


def test_disable_autoload_skips_entry_points(site, monkeypatch):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})
    monkeypatch.setenv("KDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")

    manager = kdkit.get_plugin_manager()
    assert "fake_loss" not in manager.registry("losses")
    assert not manager.has_plugin("fakegood")


def test_misspelt_hook_in_entry_point_is_a_broken_plugin(site, capsys):
    site.module("fake_typo", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_loses(register):
            register("never", lambda **o: None)
    """)
    site.dist("kdkit-fake", "1.2", {"faketypo": "fake_typo"})
    manager = kdkit.get_plugin_manager()
    assert not manager.has_plugin("faketypo")
    (line,) = [line for line in _warnings(capsys.readouterr().err) if "faketypo" in line]
    assert "kdkit_register_loses" in line


def test_register_hook_raising_in_entry_point_is_a_broken_plugin(site, capsys):
    site.module("fake_raises", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_teachers(register):
            raise ValueError("no teacher today")
    """)
    site.dist("kdkit-fake", "1.2", {"fakeraises": "fake_raises"})
    manager = kdkit.get_plugin_manager()
    assert len(manager.registry("teachers")) == 0
    (line,) = [line for line in _warnings(capsys.readouterr().err) if "fakeraises" in line]
    assert "kdkit_register_teachers" in line and "no teacher today" in line



EXITING_PLUGIN = """
import sys

sys.exit(0)
"""


def test_an_entry_point_calling_sys_exit_at_import_is_a_broken_plugin(site, capsys):
    """sys.exit(0) in a plugin made `kdkit train` exit 0 with no output and no run (issue 22)."""
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.module("fake_exits", EXITING_PLUGIN)
    site.dist("kdkit-fake", "1.2", {"fakeexits": "fake_exits", "fakegood": "fake_good"})
    manager = kdkit.get_plugin_manager()
    assert "fake_loss" in manager.registry("losses")  # kdkit goes on without it
    (line,) = [line for line in _warnings(capsys.readouterr().err) if "fakeexits" in line]
    assert "kdkit-fake 1.2" in line and "called sys.exit(0)" in line


def test_strict_entry_point_calling_sys_exit_is_a_plugin_error(site, monkeypatch):
    site.module("fake_exits", EXITING_PLUGIN)
    site.dist("kdkit-fake", "1.2", {"fakeexits": "fake_exits"})
    monkeypatch.setenv("KDKIT_STRICT_PLUGINS", "1")
    monkeypatch.setenv("KDKIT_BLOCK_PLUGINS", "soda,wordnet_relax,tensorboard")  # kdkit's own
    with pytest.raises(PluginError, match=r"'fakeexits'.*called sys\.exit\(0\)"):
        kdkit.get_plugin_manager()


def test_an_entry_point_register_hook_calling_sys_exit_is_a_broken_plugin(site, capsys):
    site.module("fake_exits_late", """
        import sys

        import kdkit

        @kdkit.hookimpl
        def kdkit_register_losses(register):
            sys.exit(3)
    """)
    site.dist("kdkit-fake", "1.2", {"fakeexitslate": "fake_exits_late"})
    assert len([c for c in kdkit.get_plugin_manager().registry("losses") if c.plugin == "fakeexitslate"]) == 0
    (line,) = [line for line in _warnings(capsys.readouterr().err) if "fakeexitslate" in line]
    assert "kdkit_register_losses raised" in line and "called sys.exit(3)" in line


# --- dotted-path modules ------------------------------------------------------------------------

def test_plugins_module_flag_loads_module(site, capsys):
    site.module("my_local_plugin", LOSS_PLUGIN.format(loss="local_loss"))
    assert main(["--plugins-module", "my_local_plugin", "plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    entry = listed["my_local_plugin"]
    assert entry["version"] == "module" and entry["distribution"] is None
    assert entry["components"] == {"losses": ["local_loss"]}
    assert entry["hooks"] == ["kdkit_register_losses"]


def test_plugins_module_flag_after_subcommand(site, capsys):
    site.module("my_local_plugin", LOSS_PLUGIN.format(loss="local_loss"))
    assert main(["plugins", "--plugins-module", "my_local_plugin"]) == 0
    out = capsys.readouterr().out
    assert "my_local_plugin module" in out and "losses: local_loss" in out


def test_plugins_env_var_loads_modules(site, monkeypatch):
    site.module("env_plugin_a", LOSS_PLUGIN.format(loss="loss_a"))
    site.module("env_plugin_b", LOSS_PLUGIN.format(loss="loss_b"))
    monkeypatch.setenv("KDKIT_PLUGINS", "env_plugin_a, env_plugin_b")
    registry = kdkit.get_registry("losses")
    assert registry.get("loss_a").plugin == "env_plugin_a"
    assert registry.get("loss_b").plugin == "env_plugin_b"


def test_unimportable_plugins_module_is_a_user_error(capsys):
    assert main(["--plugins-module", "no_such_pkg.plugin", "plugins"]) == 2
    err = _errors(capsys.readouterr().err)
    assert err == [
        "kdkit: error: cannot import plugin module 'no_such_pkg.plugin' (from --plugins-module): "
        "ModuleNotFoundError: No module named 'no_such_pkg'"
    ]


def test_unimportable_env_module_names_the_variable(monkeypatch):
    monkeypatch.setenv("KDKIT_PLUGINS", "no_such_env_plugin")
    with pytest.raises(PluginError, match=r"'no_such_env_plugin' \(from KDKIT_PLUGINS\)"):
        kdkit.get_plugin_manager()



def test_a_plugins_module_calling_sys_exit_at_import_is_a_user_error(site, capsys):
    site.module("exiting_plugin", EXITING_PLUGIN)
    assert main(["--plugins-module", "exiting_plugin", "plugins"]) == 2
    assert _errors(capsys.readouterr().err) == [
        "kdkit: error: cannot import plugin module 'exiting_plugin' (from --plugins-module): "
        "SystemExit: the plugin called sys.exit(0)"
    ]


@pytest.mark.parametrize("body", ["sys.exit('bye')", "raise ValueError('no loss today')"])
def test_a_plugins_module_whose_register_hook_fails_is_a_user_error(site, capsys, body):
    site.module("failing_hook_plugin", f"""
        import sys

        import kdkit

        @kdkit.hookimpl
        def kdkit_register_losses(register):
            {body}
    """)
    assert main(["--plugins-module", "failing_hook_plugin", "plugins"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("kdkit: error: plugin module 'failing_hook_plugin': kdkit_register_losses raised "), line
    assert ("called sys.exit('bye')" if "exit" in body else "ValueError: no loss today") in line, line


def test_misspelt_hook_in_module_fails_loudly(site):
    site.module("typo_plugin", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_student(register):
            pass
    """)
    with pytest.raises(PluginError, match="typo_plugin.*kdkit_register_student"):
        kp.add_plugin_modules(["typo_plugin"]) or kdkit.get_plugin_manager()


def test_unmarked_kdkit_function_counts_as_hook(site):
    site.module("unmarked_plugin", """
        def kdkit_register_datasets(register):
            register("unmarked_ds", lambda split, root=None, **o: [])
    """)
    kp.add_plugin_modules(["unmarked_plugin"])
    assert kdkit.get_registry("datasets").get("unmarked_ds").plugin == "unmarked_plugin"


def test_late_add_plugin_modules_rebuilds_registries(site):
    site.module("late_plugin", LOSS_PLUGIN.format(loss="late_loss"))
    manager = kdkit.get_plugin_manager()
    assert "late_loss" not in manager.registry("losses")
    kp.add_plugin_modules(["late_plugin"])
    assert "late_loss" in manager.registry("losses")


# --- registries ---------------------------------------------------------------------------------

def test_duplicate_component_names_both_plugins(site, capsys):
    site.module("dup_one", LOSS_PLUGIN.format(loss="same_name"))
    site.module("dup_two", LOSS_PLUGIN.format(loss="same_name"))
    kp.add_plugin_modules(["dup_one", "dup_two"])
    with pytest.raises(PluginError) as excinfo:
        kdkit.get_registry("losses")
    message = str(excinfo.value)
    assert "'same_name'" in message and "'dup_one'" in message and "'dup_two'" in message

    kp.reset_plugin_manager()
    assert main(["--plugins-module", "dup_one", "--plugins-module", "dup_two", "plugins"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("kdkit: error: loss 'same_name' is registered twice") and "dup_two" in line


def test_duplicate_with_entry_point_plugin(site):
    site.module("fake_good", LOSS_PLUGIN.format(loss="shared"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})
    site.module("local_dup", LOSS_PLUGIN.format(loss="shared"))
    kp.add_plugin_modules(["local_dup"])
    with pytest.raises(PluginError, match="by plugin 'fakegood' and by plugin 'local_dup'"):
        kdkit.get_registry("losses")


def test_unknown_component_lists_choices(site, monkeypatch):
    monkeypatch.setenv(kp.ENV_DISABLE_AUTOLOAD, "1")  # only this module's components, not installed plugins
    site.module("choices_plugin", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_methods(register):
            register("alpha", object)
            register("beta", object)
    """)
    kp.add_plugin_modules(["choices_plugin"])
    with pytest.raises(UnknownComponentError) as excinfo:
        kdkit.get_registry("methods").get("gamma")
    assert str(excinfo.value) == "unknown method 'gamma'; valid choices: alpha, beta"
    assert isinstance(excinfo.value, kdkit.KdkitError)


def test_unknown_kind_is_an_error():
    with pytest.raises(PluginError, match="valid kinds: teachers, students"):
        kdkit.get_plugin_manager().registry("optimizers")


def test_invalid_register_calls_name_the_plugin(site):
    site.module("bad_register", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_text_relaxers(register):
            register("relaxer", "not callable")
    """)
    kp.add_plugin_modules(["bad_register"])
    with pytest.raises(PluginError, match="'bad_register'.*'relaxer'.*not callable"):
        kdkit.get_registry("text_relaxers")


def test_every_registration_hook_fills_its_registry():
    class AllKinds:
        @kdkit.hookimpl
        def kdkit_register_teachers(self, register):
            register("t", object, description="a teacher", pretrained_ok=True)

        @kdkit.hookimpl
        def kdkit_register_students(self, register):
            register("s", object)

        @kdkit.hookimpl
        def kdkit_register_text_relaxers(self, register):
            register("r", object)

        @kdkit.hookimpl
        def kdkit_register_losses(self, register):
            register("l", object)

        @kdkit.hookimpl
        def kdkit_register_datasets(self, register):
            register("d", object)

        @kdkit.hookimpl
        def kdkit_register_methods(self, register):
            register("m", object)

    with kp.plugin_manager_for_testing(AllKinds(), defaults=False) as manager:
        assert kdkit.get_plugin_manager() is manager
        names = {kind: manager.registry(kind).names() for kind in kdkit.registry.KINDS}
        assert names == {"teachers": ["t"], "students": ["s"], "text_relaxers": ["r"],
                         "losses": ["l"], "datasets": ["d"], "methods": ["m"]}
        teacher = manager.registry("teachers").get("t")
        assert teacher.metadata == {"pretrained_ok": True} and teacher.description == "a teacher"
    assert kdkit.get_plugin_manager() is not manager


def test_hook_relay_dispatches_every_spec():
    """`manager.hook.<name>(...)` reaches plugins for every hook in kdkit.hookspecs."""
    from kdkit.commands.plugins import hook_specs

    calls = []

    class Recorder:
        pass

    for name, args, _ in hook_specs():
        # pluggy needs the real argument names: build a function with the spec's signature
        namespace: dict = {}
        exec(f"def {name}(self, {', '.join(args)}): record({name!r})", {"record": calls.append}, namespace)
        setattr(Recorder, name, kdkit.hookimpl(namespace[name]))

    with kp.plugin_manager_for_testing(Recorder(), defaults=False) as manager:
        for name, args, _ in hook_specs():
            if name.startswith("kdkit_register_"):
                continue
            getattr(manager.hook, name)(**{arg: None for arg in args})
    assert sorted(calls) == sorted(n for n, _, _ in hook_specs() if not n.startswith("kdkit_register_"))


def test_internal_default_modules_register_first_and_are_hidden(site, monkeypatch, capsys):
    site.module("fake_internal", LOSS_PLUGIN.format(loss="internal_loss"))
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})
    monkeypatch.setattr(kp, "DEFAULT_PLUGINS", ("fake_internal", "kdkit_no_such_internal_module"))
    manager = kdkit.get_plugin_manager()
    assert manager.registry("losses").get("internal_loss").plugin == "fake_internal"
    assert list(manager._info)[0] == "fake_internal"  # registered before entry points

    assert main(["plugins", "--json"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert "fakegood" in names and "fake_internal" not in names
    assert main(["plugins", "--json", "--all"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["fake_internal"]["version"] == "builtin"
    assert listed["fake_internal"]["source"] == "internal"


def test_plugins_command_human_output(site, capsys):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fakegood 1.2 (kdkit-fake)\n  hooks: kdkit_register_losses\n  losses: fake_loss\n" in out


def test_plugins_json_schema(site, capsys):
    site.module("fake_good", LOSS_PLUGIN.format(loss="fake_loss"))
    site.dist("kdkit-fake", "1.2", {"fakegood": "fake_good"})
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list)
    for entry in data:
        assert {"name", "version", "distribution", "hooks", "components"} <= set(entry)
        assert isinstance(entry["hooks"], list) and isinstance(entry["components"], dict)
    (fake,) = [e for e in data if e["name"] == "fakegood"]
    assert fake["components"] == {"losses": ["fake_loss"]}
    assert fake["distribution"] == "kdkit-fake" and fake["version"] == "1.2"


def test_plugins_are_pluggy_validated_against_spec_arguments(site):
    site.module("wrong_args", """
        import kdkit

        @kdkit.hookimpl
        def kdkit_register_losses(register, extra):
            pass
    """)
    with pytest.raises(PluginError, match="wrong_args"):
        kp.add_plugin_modules(["wrong_args"]) or kdkit.get_plugin_manager()


def test_manager_is_a_pluggy_manager_with_kdkit_project():
    manager = kdkit.get_plugin_manager()
    assert isinstance(manager, pluggy.PluginManager)
    assert manager.project_name == "kdkit"
    assert manager is kdkit.get_plugin_manager()


def test_every_registry_with_the_built_in_plugins_loads_no_heavy_module():
    """Listing plugins and resolving component names must stay cheap: no torch, open_clip or nltk
    until a component is built."""
    code = (
        "import sys, kdkit\n"
        "pm = kdkit.get_plugin_manager()\n"
        "from kdkit.registry import KINDS\n"
        "names = {kind: pm.registry(kind).names() for kind in KINDS}\n"
        "assert {'wordnet_relax', 'soda', 'kd'} <= set(names['methods']), names['methods']\n"
        "heavy = [m for m in ('torch', 'open_clip', 'nltk') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "KDKIT_BLOCK_PLUGINS"})
    assert r.returncode == 0, r.stderr[-2000:]
