"""The built-in dataset plugin registers through the real hook spec."""
import pytest

from kdkit.errors import ConfigError


def _datasets():
    """The datasets registry of a plugin manager holding only kdkit's internal plugins."""
    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing() as pm:
        return pm.registry("datasets")


def test_registers_datasets():
    registry = _datasets()
    assert {"shapes", "cifar100", "cifar10", "imagefolder", "fashion_mnist", "mnist"} <= set(registry.names())
    assert all(c.description and c.plugin == "kdkit.data.builtin" for c in registry)
    ds = registry.build("shapes", "test", None, test_per_class=2, image_size=16)
    assert len(ds) == 20 and ds.classes[0] == "circle"


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="dataset 'shapes': unknown option 'nonsense'; valid options: .*train_per_class"):
        _datasets().build("shapes", "train", None, nonsense=1)


def test_declared_options_are_checked_when_built():
    with pytest.raises(ConfigError, match=r"dataset 'shapes': option image_size: expected int in \[1, inf\), got 0"):
        _datasets().build("shapes", "train", None, image_size=0)


def test_dataset_options_are_declared_without_importing_at_registration():
    cifar = _datasets().get("cifar10")
    assert isinstance(cifar.target, str)  # a lazy import path
    options = cifar.options
    assert not cifar.accepts_any and options["download"].default is False
    assert options["image_size"].default == 32 and options["image_size"].range == "[1, inf)"
    assert "split" not in options and "transform" not in options  # the engine's and code-only arguments
    assert options["augment"].nullable and options["augment"].default == "weak"
