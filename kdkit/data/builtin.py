"""Internal default plugin: registers kdkit's built-in datasets.

Factories follow the dataset contract ``factory(split, root, **options) -> Dataset`` and
import their modules only when called (listing plugins stays cheap).
"""
from __future__ import annotations

import kdkit


def shapes(split: str, root: str | None = None, **options):
    """Embedded offline default: procedurally generated figures named by WordNet nouns."""
    from kdkit.data.shapes import ShapesDataset

    return _call(ShapesDataset, "shapes", split, root, options)


def cifar100(split: str, root: str | None = None, **options):
    """CIFAR-100 from torchvision's on-disk format (cifar-100-python/)."""
    from kdkit.data.cifar import CIFAR100Dataset

    return _call(CIFAR100Dataset, "cifar100", split, root, options)


def cifar10(split: str, root: str | None = None, **options):
    """CIFAR-10 from torchvision's on-disk format (cifar-10-batches-py/)."""
    from kdkit.data.cifar import CIFAR10Dataset

    return _call(CIFAR10Dataset, "cifar10", split, root, options)


def imagefolder(split: str, root: str | None = None, **options):
    """torchvision ImageFolder layout ROOT/{train,val|test}/<class>/<image>."""
    from kdkit.data.imagefolder import ImageFolderDataset

    return _call(ImageFolderDataset, "imagefolder", split, root, options)


def _call(cls, name: str, split: str, root, options: dict):
    import inspect

    from kdkit.errors import ConfigError

    params = inspect.signature(cls.__init__).parameters
    valid = sorted(p for p in params if p not in ("self", "split", "root", "transform"))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"dataset {name!r}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
    return cls(split, root, **options)


DATASETS = {
    "shapes": (shapes, "embedded offline default: seeded procedurally generated figures (10 WordNet-noun classes, 32 px)"),
    "cifar100": (cifar100, "CIFAR-100 in torchvision's on-disk format (download only with data.download=true)"),
    "cifar10": (cifar10, "CIFAR-10 in torchvision's on-disk format (download only with data.download=true)"),
    "imagefolder": (imagefolder, "image folders ROOT/{train,val|test}/<class>/...; optional class-name mapping file"),
}


@kdkit.hookimpl
def kdkit_register_datasets(register):
    for name, (factory, description) in DATASETS.items():
        register(name, factory, description=description)
