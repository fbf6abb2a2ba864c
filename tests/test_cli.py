"""The `kdkit` command line (kdkit/cli.py, kdkit/__main__.py, kdkit/commands/info.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import yaml

import kdkit
from kdkit import cli
from kdkit import plugins as kp
from kdkit.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("clean_plugin_manager")


@pytest.fixture
def fake_command(monkeypatch):
    """A command `fake` whose run() raises what the test puts in `module.to_raise`."""
    module = types.ModuleType("kdkit_test_fake_command")
    module.to_raise = None
    module.seen = []

    def add_arguments(parser):
        parser.add_argument("--value", type=int, default=1)

    def run(args):
        module.seen.append(args)
        if module.to_raise is not None:
            raise module.to_raise
        return args.value

    module.add_arguments, module.run = add_arguments, run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", (module.__name__, "a test command"))
    return module


def _python(*args, env=None, timeout=120):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("KDKIT_PLUGINS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=REPO)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("kdkit: warning:")]


# --- parsing and exit statuses --------------------------------------------------------------

def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "plot", "plugins", "info", "bench", "--debug", "--plugins-module"):
        assert name in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kdkit {kdkit.__version__}"


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: kdkit" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["distill-everything"]) == 2
    assert "invalid choice: 'distill-everything'" in capsys.readouterr().err


def test_bad_subcommand_argument_is_a_usage_error(fake_command, capsys):
    assert cli.main(["fake", "--value", "notanint"]) == 2
    assert "argument --value: invalid int value" in capsys.readouterr().err
    assert cli.main(["plugins", "--no-such-flag"]) == 2


def test_run_return_value_is_the_exit_status(fake_command):
    assert cli.main(["fake", "--value", "0"]) == 0
    assert cli.main(["fake", "--value", "3"]) == 3


def test_global_flags_before_or_after_the_command(fake_command):
    assert cli.main(["--debug", "fake"]) == 1
    assert fake_command.seen[-1].debug is True
    assert cli.main(["fake", "--debug", "--plugins-module", "json"]) == 1
    assert fake_command.seen[-1].debug is True and fake_command.seen[-1].plugins_module == ["json"]
    assert cli.main(["fake"]) == 1
    assert fake_command.seen[-1].debug is False and fake_command.seen[-1].plugins_module is None


def test_user_error_is_one_line_and_exit_2(fake_command, capsys):
    fake_command.to_raise = ConfigError("unknown key 'train.epoch'; valid keys: train.epochs")
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == ["kdkit: error: unknown key 'train.epoch'; valid keys: train.epochs"]
    assert "Traceback" not in err


def test_debug_shows_the_traceback(fake_command, capsys):
    fake_command.to_raise = ConfigError("bad value")
    assert cli.main(["fake", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("kdkit: error: bad value")


@pytest.mark.parametrize("exc, message", [
    (FileNotFoundError(2, "No such file or directory", "cfg.yaml"), "No such file or directory: cfg.yaml"),
    (PermissionError(13, "Permission denied", "/root/x"), "Permission denied: /root/x"),
])
def test_stray_path_errors_are_user_errors(fake_command, capsys, exc, message):
    fake_command.to_raise = exc
    assert cli.main(["fake"]) == 2
    assert _error_lines(capsys.readouterr().err) == [f"kdkit: error: {message}"]


def test_keyboard_interrupt_exits_130(fake_command, capsys):
    fake_command.to_raise = KeyboardInterrupt()
    assert cli.main(["fake"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_bugs_keep_their_traceback_exit_1_and_ask_for_a_report(fake_command, capsys):
    fake_command.to_raise = ZeroDivisionError("a bug")
    assert cli.main(["fake"]) == 1
    err = capsys.readouterr().err.rstrip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-2] == "ZeroDivisionError: a bug"
    assert err[-1] == cli.BUG_REPORT and "please report" in err[-1]


def test_missing_command_module_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("kdkit.commands.no_such_module", "not written"))
    assert cli.main(["ghost"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "kdkit: error: command 'ghost' is not available in this installation "
        "(module kdkit.commands.no_such_module is missing)"]


def test_only_the_selected_command_is_imported(monkeypatch, fake_command):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("kdkit.commands.no_such_module", "not written"))
    assert cli.main(["fake"]) == 1  # 'ghost' is never imported
    assert cli._selected_command(["--plugins-module", "train", "fake", "x"]) == "fake"
    assert cli._selected_command(["--plugins-module=m", "--debug", "info"]) == "info"


def test_every_command_module_follows_the_contract():
    import importlib

    for name, (module_name, _) in cli.COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # written by another engineer, not there yet
            raise
        assert callable(module.add_arguments) and callable(module.run), name


# --- processes: python -m kdkit, import weight ---------------------------------------------

def test_python_m_kdkit_runs():
    proc = _python("-m", "kdkit", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"kdkit {kdkit.__version__}"
    proc = _python("-m", "kdkit", "nonsense")
    assert proc.returncode == 2


def test_import_and_help_do_not_import_torch():
    code = ("import sys, kdkit, kdkit.plugins, kdkit.registry\n"
            "from kdkit.cli import main\n"
            "assert main(['--help']) == 0\n"
            "assert main(['plugins', '--hooks']) == 0\n"
            "heavy = [m for m in ('torch', 'open_clip', 'nltk', 'kdkit._C', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# --- kdkit info ---------------------------------------------------------------------------

def test_info_json(capsys, monkeypatch):
    monkeypatch.setenv("KDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli.main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    import torch

    assert data["version"] == kdkit.__version__
    assert data["torch"] == torch.__version__
    assert data["cuda_available"] == torch.cuda.is_available()
    assert set(data["extension"]) >= {"loaded", "cpu_isa", "cuda_compiled", "error"}
    assert isinstance(data["extension"]["loaded"], bool)
    assert isinstance(data["plugins"], list)
    assert data["python"] == sys.version.split()[0]


def test_info_tolerates_missing_or_broken_ops(monkeypatch, capsys):
    from kdkit.commands import info

    broken = types.ModuleType("kdkit.ops")

    def extension_info():
        raise RuntimeError("extension exploded")

    broken.extension_info = extension_info
    monkeypatch.setitem(sys.modules, "kdkit.ops", broken)
    ext = info._extension_info()
    assert ext["loaded"] is False and "extension exploded" in ext["error"]

    monkeypatch.setitem(sys.modules, "kdkit.ops", None)  # import fails
    ext = info._extension_info()
    assert ext["loaded"] is False and "kdkit.ops unavailable" in ext["error"]

    monkeypatch.setenv("KDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "extension:  not loaded" in out and "torch:" in out


def test_info_lists_plugins_and_survives_plugin_errors(monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")

    class Dup:
        def __init__(self, tag):
            self.tag = tag

        @kdkit.hookimpl
        def kdkit_register_losses(self, register):
            register("dup", object)

    with kp.plugin_manager_for_testing(Dup(1), Dup(2), defaults=False):
        from kdkit.commands import info

        data = info.collect()
    assert "registered twice" in data["plugins_error"]


# --- `kdkit train --method NAME`; `--plugin NAME` is its deprecated alias (issue 19, item 6) ------------------

WARNING = "kdkit: warning: --plugin dkd is deprecated; use --method dkd\n"


def test_method_selects_the_method_without_a_warning(capsys):
    assert cli.main(["train", "--method", "dkd", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["method"] == "dkd"
    assert "deprecated" not in err, err


def test_plugin_still_selects_the_method_and_warns_once(capsys):
    assert cli.main(["train", "--method", "dkd", "--print-config"]) == 0
    expected = capsys.readouterr().out
    assert cli.main(["train", "--plugin", "dkd", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert out == expected
    assert err.count("deprecated") == 1 and WARNING in err, err


def test_plugin_alias_also_reaches_help_config(capsys):
    assert cli.main(["train", "--plugin", "dkd", "--help-config"]) == 0
    out, err = capsys.readouterr()
    assert "distill.terms" in out and err.count(WARNING) == 1, err


def test_method_and_plugin_naming_different_methods_is_an_error(capsys):
    assert cli.main(["train", "--method", "kd", "--plugin", "dkd", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert WARNING in err
    assert "kdkit: error: --method kd and --plugin dkd name different methods" in err, err


def test_help_names_method_and_calls_plugin_deprecated(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--method NAME the method to run" in out and "--plugin NAME deprecated alias of --method NAME" in out
