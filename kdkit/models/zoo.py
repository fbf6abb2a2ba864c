"""The table of built-in models — every entry is registered as a teacher AND as a student.

Factory signature (kdkit's model contract): ``factory(num_classes: int, **options) -> nn.Module``.
Options every model accepts:

* ``pretrained`` — path to a LOCAL weights file (state dict or checkpoint dict holding one);
  a classifier of another shape is re-initialised with a logged note; nothing is downloaded;
* ``pretrained_key`` — key (dotted) of the state dict inside a checkpoint dict, when ambiguous;
* ``pretrained_strict`` — error (default) or skip with a note on other non-fitting weights;
* ``in_channels`` — input channels (3).

Model-specific: ``width`` (CIFAR ResNets: 16; ``convnet``: 16); ``small_input`` (torchvision
ResNets: 3x3 stride-1 stem and no max-pool, default False except ``cifar_resnet18``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from kdkit.config import ConfigKey
from kdkit.errors import ConfigError
from kdkit.registry import WEIGHT_OPTIONS

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]   # build(num_classes, **model_options)
    description: str


def _cifar(depth: int, default_width: int = 16):
    def build(num_classes: int, width: int = default_width, in_channels: int = 3) -> nn.Module:
        from kdkit.models.cifar_resnet import CifarResNet

        return CifarResNet(depth, num_classes, width=width, in_channels=in_channels)

    return build


def _tv(arch: str, default_small: bool = False):
    def build(num_classes: int, small_input: bool = default_small, in_channels: int = 3) -> nn.Module:
        from kdkit.models.cifar_resnet import torchvision_resnet

        return torchvision_resnet(arch, num_classes, small_input=small_input, in_channels=in_channels)

    return build


def _convnet(num_classes: int, width: int = 16, in_channels: int = 3) -> nn.Module:
    from kdkit.models.cifar_resnet import ConvNet

    return ConvNet(num_classes, width=width, in_channels=in_channels)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("convnet", _convnet, "tiny 3-block CNN (width 16, 0.02M params) for very fast tests"),
        ModelSpec("resnet8", _cifar(8), "CIFAR ResNet-8 (3 stages x 1 block, width 16, 0.08M params)"),
        ModelSpec("resnet14", _cifar(14), "CIFAR ResNet-14 (3 stages x 2 blocks, width 16, 0.17M params)"),
        ModelSpec("resnet20", _cifar(20), "CIFAR ResNet-20 (3 stages x 3 blocks, width 16, 0.27M params)"),
        ModelSpec("resnet32", _cifar(32), "CIFAR ResNet-32 (3 stages x 5 blocks, width 16, 0.47M params)"),
        ModelSpec("resnet56", _cifar(56), "CIFAR ResNet-56 (3 stages x 9 blocks, width 16, 0.86M params)"),
        ModelSpec("resnet8x4", _cifar(8, 64), "CIFAR ResNet-8 at width 64 (RepDistiller's resnet8x4)"),
        ModelSpec("resnet32x4", _cifar(32, 64), "CIFAR ResNet-32 at width 64 (RepDistiller's resnet32x4)"),
        ModelSpec("cifar_resnet18", _tv("resnet18", True), "ResNet-18 with a 3x3 stem and no max-pool (11M params), for 32 px"),
        ModelSpec("resnet18", _tv("resnet18"), "torchvision ResNet-18 (ImageNet layout, 11.7M params)"),
        ModelSpec("resnet34", _tv("resnet34"), "torchvision ResNet-34 (ImageNet layout, 21.8M params)"),
        ModelSpec("resnet50", _tv("resnet50"), "torchvision ResNet-50 (ImageNet layout, 25.6M params)"),
    )
}


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: str | None = None,
    pretrained_key: str | None = None,
    pretrained_strict: bool = True,
    **options,
) -> nn.Module:
    """Build built-in model ``name`` with ``num_classes`` outputs; see the module docstring."""
    try:
        spec = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None
    allowed = set(model_options(name))  # the declaration the registry checks too
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model {name!r}: num_classes must be a positive integer; got {num_classes!r}")
    model = spec.build(num_classes, **options)
    model.kdkit_name = name
    if pretrained:
        from kdkit.models.weights import load_weights

        load_weights(model, pretrained, key=pretrained_key, strict=pretrained_strict)
    return model


def model_options(name: str) -> dict[str, ConfigKey]:
    """The declared options of built-in model ``name``: its own (from its builder's keyword
    parameters, one line of help each from :data:`OPTION_HELP`) and the weight-loading ones every
    model takes.  Checked when the config is resolved: a missing weights file or a zero width stops
    the run before anything trains."""
    own = {p.name: p.default for p in inspect.signature(MODELS[name].build).parameters.values()
           if p.name != "num_classes"}
    options = {option: ConfigKey(default, OPTION_HELP[option], range="[1, inf)" if option in _COUNTED else None)
               for option, default in own.items()}
    options.update(WEIGHT_OPTIONS)  # the declaration every model shares
    return options


#: options that count channels: at least 1
_COUNTED = ("width", "in_channels")


#: One line per model option (``kdkit train --help-config`` shows them).
OPTION_HELP = {
    "width": "channels of the first stage (later stages double it)",
    "in_channels": "input channels (3: RGB images)",
    "small_input": "CIFAR-style stem (3x3 conv, no max-pool) for 32 px inputs",
}
