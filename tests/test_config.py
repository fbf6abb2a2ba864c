"""kdkit.config: precedence, validation, YAML safety, --set parsing."""
from __future__ import annotations

import pytest

from kdkit.config import apply_sets, base_config, load_yaml, parse_set, resolve_config, validate
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


def test_component_sections_accept_factory_options():
    class Reg:
        def get(self, name):
            from kdkit.registry import Component

            def factory(split, root=None, size: int = 32, augment: str = "weak"):
                pass

            def open_factory(split, root=None, **options):
                pass

            return Component("datasets", name, factory if name == "strict" else open_factory, "test")

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
    cfg = base_config()
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
        if name not in factories:
            from kdkit.errors import UnknownComponentError

            raise UnknownComponentError(f"unknown {name!r}")
        return Component("x", name, factories[name], "test")


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
