"""Internal default plugin: registers kdkit's built-in datasets.

Factories follow the dataset contract ``factory(split, root, **options) -> Dataset`` and
import their modules only when called (listing plugins stays cheap).
"""
from __future__ import annotations

import kdkit


class DatasetFactory:
    """The registry factory of a built-in dataset class, imported on first use.

    Its signature is the class's own (``split``, ``root`` and the keyword options, ``transform``
    left out), so that the config lists, type-checks and defaults the options of the chosen
    dataset before a run starts; reading it imports the dataset module (torch), registering does not.
    """

    def __init__(self, name: str, module: str, class_name: str):
        self.name, self.module, self.class_name = name, module, class_name
        self.__name__ = self.__qualname__ = name

    def dataset_class(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.class_name)

    def __call__(self, split: str, root: str | None = None, **options):
        return _call(self.dataset_class(), self.name, split, root, options)

    @property
    def __signature__(self):
        import inspect

        params = [p.replace(default=inspect.Parameter.empty) if name == "split" else p
                  for name, p in inspect.signature(self.dataset_class().__init__).parameters.items()
                  if name not in ("self", "transform")]
        return inspect.Signature(params)

    @property
    def config_keys(self) -> dict:
        """Ranges of the options every built-in dataset shares, with the class's own defaults, so a
        value such as ``train_per_class: 0`` is refused when the config is resolved, not when the
        run opens its data (``kdkit.config.factory_options`` reads this)."""
        import inspect

        from kdkit.config import ConfigKey

        params = inspect.signature(self.dataset_class().__init__).parameters
        keys = {}
        for name, help_text in _COUNTED_OPTIONS.items():
            if name in params:
                default = params[name].default
                keys[name] = ConfigKey(default, help_text, type=int, nullable=default is None, range="[1, inf)")
        return keys

    @property
    def __doc__(self):  # the class's docstring: its ``:param NAME:`` lines document the options
        return self.dataset_class().__doc__


#: options that count something (images, pixels), declared by :attr:`DatasetFactory.config_keys`
_COUNTED_OPTIONS = {
    "train_per_class": "images per class taken from the training split (null: all of them)",
    "test_per_class": "images per class taken from the test split (null: all of them)",
    "image_size": "side of the images in pixels",
}


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
    "shapes": (DatasetFactory("shapes", "kdkit.data.shapes", "ShapesDataset"),
               "embedded offline default: seeded procedurally generated figures (10 WordNet-noun classes, 32 px)"),
    "cifar100": (DatasetFactory("cifar100", "kdkit.data.cifar", "CIFAR100Dataset"),
                 "CIFAR-100 in torchvision's on-disk format (download only with data.download=true)"),
    "cifar10": (DatasetFactory("cifar10", "kdkit.data.cifar", "CIFAR10Dataset"),
                "CIFAR-10 in torchvision's on-disk format (download only with data.download=true)"),
    "fashion_mnist": (DatasetFactory("fashion_mnist", "kdkit.data.mnist", "FashionMNIST"),
                      "Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist); 10 WordNet-noun classes, 28 px"),
    "mnist": (DatasetFactory("mnist", "kdkit.data.mnist", "MNIST"),
              "MNIST digits from their IDX files (data.root: the files or torchvision's MNIST/raw)"),
    "imagefolder": (DatasetFactory("imagefolder", "kdkit.data.imagefolder", "ImageFolderDataset"),
                    "image folders ROOT/{train,val|test}/<class>/...; optional class-name mapping file"),
}


@kdkit.hookimpl
def kdkit_register_datasets(register):
    for name, (factory, description) in DATASETS.items():
        register(name, factory, description=description)
