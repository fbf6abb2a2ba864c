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
        builtin.shapes("train", None, nonsense=1)
