"""`kdkit train --method NAME` selects the method; `--plugin NAME` is its deprecated alias, which
still works and says so in one warning line on stderr (issue 19, item 6)."""
from __future__ import annotations

import pytest
import yaml

from kdkit import cli
from kdkit import plugins as kp

WARNING = "kdkit: warning: --plugin dkd is deprecated; use --method dkd\n"


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    for var in (kp.ENV_DISABLE_AUTOLOAD, kp.ENV_BLOCK, kp.ENV_STRICT, kp.ENV_MODULES):
        monkeypatch.delenv(var, raising=False)
    kp.reset_plugin_manager()
    yield
    kp.reset_plugin_manager()


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
