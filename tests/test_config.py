"""kdkit.config: precedence, validation, YAML safety, --set parsing."""
from __future__ import annotations

import re

import pytest

from kdkit.config import (ConfigKey, apply_sets, base_config, load_yaml, parse_set, plain_defaults, resolve_config,
                          validate)
from kdkit.errors import ConfigError, KdkitError

DEFAULTS = {
    "seed": 0,
    "lr": 0.1,
    "name": "x",
    "flag": False,
    "anything": None,
    "open": {},
    "milestones": [],
    "train": {"epochs": 3, "opt": {"momentum": 0.9}},
    "teachers": [{"name": "a", "train": True}],
}


def test_defaults_only():
    assert resolve_config(DEFAULTS, component_sections={}, registry_lookup=None) == DEFAULTS


def test_precedence_set_over_file_over_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 5\nlr: 0.5\ntrain:\n  epochs: 7\n")
    cfg = resolve_config(DEFAULTS, f, ["lr=0.25", "train.opt.momentum=0.8"], component_sections={})
    assert cfg["seed"] == 5  # file
    assert cfg["lr"] == 0.25  # --set beats file
    assert cfg["train"] == {"epochs": 7, "opt": {"momentum": 0.8}}  # deep merge keeps defaults
    assert cfg["name"] == "x"  # default


def test_unknown_key_lists_valid_keys_with_dotted_path():
    with pytest.raises(ConfigError) as exc:
        resolve_config(DEFAULTS, None, ["train.opt.momentun=0.5"], component_sections={})
    msg = str(exc.value)
    assert "train.opt.momentun" in msg and "valid keys at train.opt: momentum" in msg
    with pytest.raises(ConfigError, match=r"unknown config key 'sed'.*valid keys at <root>: seed, lr"):
        resolve_config(DEFAULTS, None, ["sed=1"], component_sections={})


@pytest.mark.parametrize("item, key, expected, got", [
    ("seed=1.5", "seed", "int", "float"),
    ("seed=true", "seed", "int", "bool"),
    ("lr=abc", "lr", "float", "str"),
    ("name=3", "name", "str", "int"),
    ("flag=1", "flag", "bool", "int"),
    ("milestones=5", "milestones", "list", "int"),
    ("train=3", "train", "mapping", "int"),
    ("train.epochs=[1]", "train.epochs", "int", "list"),
])
def test_wrong_type_names_key_expected_and_got(item, key, expected, got):
    with pytest.raises(ConfigError) as exc:
        resolve_config(DEFAULTS, None, [item], component_sections={})
    msg = str(exc.value)
    assert f"config key {key}:" in msg and f"expected {expected}" in msg and f"got {got}" in msg


def test_int_accepted_for_float_and_none_accepts_anything_and_open_mapping():
    cfg = resolve_config(DEFAULTS, None, ["lr=1", "anything=[1, 2]", "open.whatever.deep=3"], component_sections={})
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["anything"] == [1, 2]
    assert cfg["open"] == {"whatever": {"deep": 3}}


def test_an_integer_beyond_floats_range_for_a_float_key_is_one_line():
    """Found by tests/fuzz/test_fuzz_sweep.py: float() of a 400-digit int raised OverflowError (a traceback)."""
    with pytest.raises(ConfigError, match=r"config key lr: an integer of \d+ bits is too large for a float"):
        resolve_config(DEFAULTS, None, ["lr=" + "9" * 400], component_sections={})


def test_set_values_are_yaml():
    assert parse_set("a.b=[10, 20]") == (["a", "b"], [10, 20])
    assert parse_set("a=null") == (["a"], None)
    assert parse_set("a=0.001") == (["a"], 1e-3)
    # YAML 1.1 reads 1e-3 as a string; a float key still accepts it
    assert resolve_config(DEFAULTS, None, ["lr=1e-3"], component_sections={})["lr"] == 1e-3
    assert parse_set("a=hello world") == (["a"], "hello world")
    assert parse_set("a=") == (["a"], None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("novalue")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_set("a=[1, 2")


def test_list_of_mappings_uses_first_item_as_template():
    cfg = resolve_config(DEFAULTS, None, ["teachers=[{name: b}, {name: c, train: false}]"], component_sections={})
    assert cfg["teachers"] == [{"name": "b", "train": True}, {"name": "c", "train": False}]
    cfg = resolve_config(DEFAULTS, None, ["teachers.0.name=z"], component_sections={})
    assert cfg["teachers"] == [{"name": "z", "train": True}]
    with pytest.raises(ConfigError, match=r"teachers\.1\.bogus.*valid keys at teachers\.1: name, train"):
        resolve_config(DEFAULTS, None, ["teachers=[{name: b}, {bogus: 1}]"], component_sections={})
    with pytest.raises(ConfigError, match="out of range"):
        apply_sets({"t": [1]}, ["t.3=2"])


def test_component_sections_accept_declared_options():
    class Reg:
        def get(self, name):
            from kdkit.registry import Component

            def factory(split, root=None, size: int = 32, augment: str = "weak"):
                pass

            def open_factory(split, root=None, **options):
                pass

            if name == "strict":
                return Component("datasets", name, factory, "test",
                                 declared_options={"size": ConfigKey(32), "augment": ConfigKey("weak")})
            return Component("datasets", name, open_factory, "test")  # undeclared: open

    defaults = {"data": {"name": "strict", "root": None}}
    cfg = resolve_config(defaults, None, ["data.size=16"], registry_lookup=lambda kind: Reg())
    assert cfg["data"] == {"name": "strict", "root": None, "size": 16, "augment": "weak"}
    with pytest.raises(ConfigError, match=r"data\.bogus.*valid keys at data: name, root, size, augment"):
        resolve_config(defaults, None, ["data.bogus=1"], registry_lookup=lambda kind: Reg())
    with pytest.raises(ConfigError, match="config key data.size: expected int"):
        resolve_config(defaults, None, ["data.size=big"], registry_lookup=lambda kind: Reg())
    cfg = resolve_config(defaults, None, ["data.name=open", "data.bogus=1"], registry_lookup=lambda kind: Reg())
    assert cfg["data"]["bogus"] == 1


def test_yaml_errors_are_one_line_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad\.yaml \(line \d+, column \d+\)") as exc:
        load_yaml(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(top)
    assert load_yaml(_write(tmp_path / "empty.yaml", "")) == {}
    assert issubclass(ConfigError, KdkitError)


def test_safe_load_only_no_code_execution(tmp_path):
    evil = _write(tmp_path / "evil.yaml", "seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(evil)


def test_base_config_sections_and_self_validation():
    cfg = plain_defaults(base_config())
    for key in ("seed", "device", "data", "train", "checkpoint", "logging"):
        assert key in cfg
    assert cfg["checkpoint"]["select_on"] == "val"
    assert cfg["data"]["val_fraction"] == 0.1
    assert validate(cfg, base_config()) == cfg


def _write(path, text):
    path.write_text(text)
    return path


class _TwoComponents:
    """A registry with two datasets / teachers of different options."""

    def get(self, name):
        from kdkit.registry import Component

        def procedural(split, root=None, per_class: int = 200, image_size: int = 32):
            pass

        def folder(split, root=None, image_size: int = 224, train_dir: str = "train"):
            pass

        def small_net(num_classes, width: int = 8):
            pass

        def big_net(num_classes, depth: int = 50, pretrained: str = ""):
            pass

        factories = {"procedural": procedural, "folder": folder, "small": small_net, "big": big_net}
        options = {"procedural": {"per_class": ConfigKey(200), "image_size": ConfigKey(32)},
                   "folder": {"image_size": ConfigKey(224), "train_dir": ConfigKey("train")},
                   "small": {"width": ConfigKey(8)},
                   "big": {"depth": ConfigKey(50), "pretrained": ConfigKey("")}}
        if name not in factories:
            from kdkit.errors import UnknownComponentError

            raise UnknownComponentError(f"unknown {name!r}")
        return Component("x", name, factories[name], "test", declared_options=options[name])


METHOD_DEFAULTS = {
    "data": {"name": "procedural", "root": None, "val_fraction": 0.1, "per_class": 20, "image_size": 32},
    "teachers": [{"name": "small", "train": True, "width": 4}],
}


def _resolve(config_file=None, sets=()):
    return resolve_config(METHOD_DEFAULTS, config_file, sets, registry_lookup=lambda kind: _TwoComponents())


def test_a_components_options_follow_the_component_that_is_chosen(tmp_path):
    """Switching the dataset drops the default dataset's options (per_class) and brings the new one's
    defaults; engine keys and what the user wrote stay — from --set and from a config file."""
    assert _resolve()["data"] == METHOD_DEFAULTS["data"]  # same component: the method's defaults stand
    cfg = _resolve(sets=["data.name=folder", "data.root=/d"])
    assert cfg["data"] == {"name": "folder", "root": "/d", "val_fraction": 0.1, "image_size": 224,
                           "train_dir": "train"}
    cfg = _resolve(sets=["data.name=folder", "data.image_size=32"])  # equal to the old default, but given
    assert cfg["data"]["image_size"] == 32 and "per_class" not in cfg["data"]
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  name: folder\n  train_dir: tr\n")
    cfg = _resolve(f)
    assert cfg["data"] == {"name": "folder", "root": None, "val_fraction": 0.1, "image_size": 224, "train_dir": "tr"}
    with pytest.raises(ConfigError, match=r"data\.per_class.*valid keys at data: name, root, val_fraction"):
        _resolve(sets=["data.name=folder", "data.per_class=3"])  # an option the chosen dataset lacks


def test_teacher_list_items_follow_their_component_too():
    cfg = _resolve(sets=["teachers=[{name: big, depth: 18}, {name: small}]"])
    assert cfg["teachers"] == [{"name": "big", "train": True, "depth": 18, "pretrained": ""},
                               {"name": "small", "train": True, "width": 8}]
    cfg = _resolve(sets=["teachers.0.name=big"])
    assert cfg["teachers"] == [{"name": "big", "train": True, "depth": 50, "pretrained": ""}]
    assert _resolve()["teachers"] == [{"name": "small", "train": True, "width": 4}]


# --- declared keys (ConfigKey) --------------------------------------------------------------

def test_declared_keys_check_type_choices_range_pattern_items_and_null():
    from kdkit.config import ConfigKey

    declared = {
        "lr": ConfigKey(0.1, "rate", range="(0, inf)"),
        "frac": ConfigKey(0.5, "share", range="[0, 1]"),
        "opt": ConfigKey("sgd", "optimiser", choices=("sgd", "adam")),
        "dev": ConfigKey("cpu", "device", pattern=r"cpu|cuda(:\d+)?"),
        "steps": ConfigKey([], "epochs", items=int, range="[1, inf)"),
        "clip": ConfigKey(None, "max norm", type=float, range="(0, inf)"),
        "n": ConfigKey(3, "count"),
    }
    assert resolve_config(declared, None, ["lr=1", "frac=1", "steps=[1, 5]", "clip=2", "dev=cuda:1"],
                          component_sections={}) == {
        "lr": 1.0, "frac": 1.0, "opt": "sgd", "dev": "cuda:1", "steps": [1, 5], "clip": 2.0, "n": 3}
    assert isinstance(resolve_config(declared, None, ["lr=1"], component_sections={})["lr"], float)
    bad = {
        "lr=0": "config key lr: expected float in (0, inf), got 0.0",  # open bound
        "frac=1.5": "config key frac: expected float in [0, 1], got 1.5",
        "opt=adagrad": "config key opt: expected one of sgd, adam, got 'adagrad'",
        "dev=gpu": r"config key dev: expected str matching cpu|cuda(:\d+)?, got 'gpu'",
        "steps=[1, 0]": "config key steps.1: expected int in [1, inf), got 0",
        "steps=[1, x]": "config key steps.1: expected int in [1, inf), got str ('x')",
        "clip=-1": "config key clip: expected float in (0, inf) or null, got -1.0",
        "clip=fast": "config key clip: expected float in (0, inf) or null, got str ('fast')",
        "n=null": "config key n: expected int, got null",  # null only where declared
        "n=true": "config key n: expected int, got bool (True)",
    }
    for item, message in bad.items():
        with pytest.raises(ConfigError) as info:
            resolve_config(declared, None, [item], component_sections={})
        assert str(info.value) == message, item
    assert resolve_config(declared, None, ["clip=null"], component_sections={})["clip"] is None


def test_a_malformed_range_fails_when_declared():
    from kdkit.config import ConfigKey

    with pytest.raises(ValueError, match="expected an interval"):
        ConfigKey(1, "x", range="0..1")


def test_plain_values_over_engine_keys_keep_the_engine_declaration():
    from kdkit.config import ConfigKey, inherit_declarations, train_section

    method = plain_defaults(base_config())
    method["seed"] = 7
    method["train"] = train_section(epochs=3)
    method["extra"] = {"k": ConfigKey(1, "own key")}
    declared = inherit_declarations(method, base_config())
    assert declared["seed"].default == 7 and declared["seed"].range == "[0, inf)" and declared["seed"].help
    assert declared["train"]["epochs"].default == 3 and declared["train"]["precision"].choices
    assert resolve_config(declared, component_sections={})["seed"] == 7
    with pytest.raises(ConfigError, match="config key seed: expected int in"):
        resolve_config(declared, None, ["seed=-2"], component_sections={})
    with pytest.raises(TypeError, match="unknown key 'epoch'"):
        train_section(epoch=3)


def test_config_rows_list_declared_keys_and_the_chosen_components_options(tmp_path):
    from kdkit.config import ConfigKey, config_rows, format_config_help

    declared = {
        "seed": ConfigKey(0, "the seed", range="[0, inf)"),
        "data": {"name": ConfigKey("procedural", "dataset"), "root": ConfigKey(None, "files", type=str)},
        "teachers": [{"name": ConfigKey("small", "teacher")}],
    }
    lookup = lambda kind: _TwoComponents()
    rows = {r[0]: r for r in config_rows(declared, None, ["seed=4"], registry_lookup=lookup)}
    assert rows["seed"] == ("seed", "int in [0, inf)", "4", "the seed")  # the value after --set
    assert rows["data.root"][1:] == ("str or null", "null", "files")
    assert rows["teachers[].name"][1:] == ("str", "small", "teacher")
    assert rows["data.per_class"][1:3] == ("int", "200")  # options of the chosen dataset
    assert "teachers.0.width" in rows
    rows = {r[0] for r in config_rows(declared, None, ["data.name=folder"], registry_lookup=lookup)}
    assert "data.per_class" not in rows and "data.train_dir" in rows  # the other dataset's options
    text = format_config_help("title", config_rows(declared, component_sections={}))
    assert text.splitlines()[0] == "title" and "seed" in text and "the seed" in text


@pytest.mark.parametrize("method", ["kd", "wordnet_relax", "soda"])
def test_every_key_of_the_builtin_methods_is_declared_with_help(method):
    """Like a docs-coverage test: every key a built-in method takes says what it allows and what it
    does; plain values are allowed only for a component's own options (documented by the component)."""
    import kdkit
    from kdkit.config import ENGINE_KEYS, ConfigKey
    from kdkit.config.resolve import _method_declarations, _section_kind

    _, declared, sections = _method_declarations(method, kdkit.get_plugin_manager())
    missing = []

    def walk(node, path):
        if isinstance(node, dict) and node:
            for key, sub in node.items():
                walk(sub, f"{path}.{key}" if path else key)
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            walk(node[0], f"{path}[]")
        else:
            parent, _, key = path.rpartition(".")
            kind = _section_kind(parent, sections)
            if kind is not None and key not in ENGINE_KEYS.get(kind, {"name"}) and not isinstance(node, ConfigKey):
                return  # a component option (student.width): the component documents it
            if not isinstance(node, ConfigKey) or not node.help or node.type is None:
                missing.append(path)

    walk(declared, "")
    assert not missing, f"{method}: keys without a typed, documented declaration: {missing}"


def test_keys_the_method_declares_in_a_component_section_stay_when_the_component_changes():
    from kdkit.config import ConfigKey

    defaults = {"data": {**METHOD_DEFAULTS["data"], "augment": ConfigKey("weak", "the student's augmentation")}}
    cfg = resolve_config(defaults, None, ["data.name=folder"], registry_lookup=lambda kind: _TwoComponents())
    assert cfg["data"]["augment"] == "weak" and "per_class" not in cfg["data"]  # the old dataset's option goes


# --- issue 22: duplicate keys and overlapping dotted keys are errors, not "the last one wins" ---

def test_a_duplicate_key_in_a_config_file_is_a_one_line_error_naming_key_and_lines(tmp_path):
    cfg = _write(tmp_path / "dup.yaml", "seed: 1\ndata:\n  name: shapes\n  name: fashion_mnist\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(cfg)
    message = str(exc.value)
    assert "\n" not in message
    assert "(line 4, column 3): duplicate key 'name' (first on line 3)" in message, message


def test_a_duplicate_key_in_a_set_value_is_an_error():
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        parse_set("data={name: shapes, name: cifar10}")


def test_a_document_of_too_many_plain_values_is_not_blamed_on_aliases(tmp_path):
    """Issue 22 rerun: 300,000 keys and no alias were "aliases of aliases, or an alias inside itself"."""
    from kdkit.config.files import MAX_YAML_VALUES, parse_yaml

    text = "{" + ", ".join(f"k{i}: {i}" for i in range(MAX_YAML_VALUES // 2 + 1)) + "}"
    with pytest.raises(ConfigError, match=r"^big: the document expands to more than 100000 values \(aliases of "
                                          r"aliases, an alias inside itself, or that many values written out; "
                                          r"a config needs far fewer\)$"):
        parse_yaml(text, "big")


def test_merge_keys_may_still_be_overridden(tmp_path):
    # `<<: *base` then a key of base is YAML's documented override, not a duplicate
    cfg = _write(tmp_path / "merge.yaml", "base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.5\n")
    assert load_yaml(cfg)["train"] == {"lr": 0.5, "epochs": 2}


def test_layers_set_values_go_through_the_same_loader():
    from kdkit.commands.layers import _options

    assert _options(["width=8"]) == {"width": 8}
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        _options(["width={a: 1, a: 2}"])


def test_no_yaml_read_outside_the_config_loader():
    """Every YAML read of a user file goes through kdkit.config.files (duplicate keys refused)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(p for d in ("kdkit", "plugins", "examples") for p in (root / d).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "kdkit/config/files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml"
                    and node.func.attr in ("load", "safe_load", "full_load", "unsafe_load", "load_all",
                                           "safe_load_all")):
                found.append(f"{rel}:{node.lineno}: yaml.{node.func.attr}")
    assert not found, "use kdkit.config.files.parse_yaml / load_yaml:\n" + "\n".join(found)


@pytest.mark.parametrize("mapping, message", [
    ({"data.name": "shapes", "data": {"name": "fashion_mnist"}}, "'data.name' and 'data' both set data.name"),
    ({"data": {"name": "fashion_mnist"}, "data.name": "shapes"}, "'data' and 'data.name' both set data.name"),
    ({"train.opt": {"momentum": 0.9}, "train": {"opt": {"momentum": 0.5}}},
     "'train.opt' and 'train' both set train.opt.momentum"),
    ({"data": None, "data.name": "x"}, "'data' and 'data.name' both set data;"),
    # not the same leaf, but which one survives depends on their order: a mapping replaces the section
    ({"train.epochs": 2, "train": {"lr": 0.1}}, "'train.epochs' and 'train' overlap"),
])
def test_a_dotted_key_and_a_mapping_naming_the_same_setting_are_an_error(mapping, message):
    from kdkit.config import check_dotted_keys

    with pytest.raises(ConfigError, match=re.escape(f"base: keys {message}")):
        check_dotted_keys(mapping, "base")
    check_dotted_keys({"data.name": "x", "data.root": "y", "train.lr": 0.1, "train.epochs": 2}, "base")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_config_that_is_not_a_regular_file_is_refused_by_type(tmp_path, kind):
    """`--config /dev/zero` or a FIFO was "not found" (and opening a FIFO blocks): refused before opening."""
    import os

    if kind == "fifo":
        path = tmp_path / "cfg.fifo"
        os.mkfifo(path)
        what = "is a FIFO"
    elif kind == "device":
        path, what = "/dev/zero", "is a character device"
    else:
        path, what = tmp_path, "is a directory"
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(path))} {what}, not a regular file"):
        load_yaml(path)
