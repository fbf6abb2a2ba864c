"""The built-in dataset plugin registers through the real hook spec."""
import pluggy
import pytest

import kdkit.data.builtin as builtin
from kdkit import hookspecs
from kdkit.errors import ConfigError


def collect(hook_name, module):
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(module)
    seen = {}

    def register(name, factory, description=""):
        assert name not in seen
        seen[name] = (factory, description)

    getattr(pm.hook, hook_name)(register=register)
    return seen


def test_registers_datasets():
    seen = collect("kdkit_register_datasets", builtin)
    assert {"shapes", "cifar100", "cifar10", "imagefolder"} <= set(seen)
    assert all(desc for _, desc in seen.values())
    ds = seen["shapes"][0]("test", None, test_per_class=2, image_size=16)
    assert len(ds) == 20 and ds.classes[0] == "circle"


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid options: .*train_per_class"):
        builtin.DATASETS["shapes"][0]("train", None, nonsense=1)


def test_dataset_factories_expose_their_options_without_importing_at_registration():
    import inspect

    from kdkit.config import factory_options

    factory = builtin.DATASETS["cifar10"][0]
    options = factory_options(factory)
    assert "*" not in options and options["download"] is False and options["image_size"].default == 32 and options["image_size"].range == "[1, inf)"
    assert "split" not in options and "transform" not in options  # the engine's and code-only arguments
    assert options["augment"].nullable and options["augment"].default == "weak"  # `str | None = "weak"`
    assert list(inspect.signature(factory).parameters)[:2] == ["split", "root"]
