"""kdkit's built-in models (registered as teachers and students by :mod:`kdkit.models.builtin`).

``build_model(name, num_classes, **options)``, ``load_weights(model, path)`` and the table
``MODELS`` are the API; see :mod:`kdkit.models.zoo` for names and options.  Models of torchvision,
timm, a Hugging Face directory or the user's own factory are named through the sources of
:mod:`kdkit.models.sources` (``torchvision:NAME``, ...).  Importing this package is cheap: torch and
torchvision load when a model is built.
"""
from __future__ import annotations

from kdkit.models.zoo import MODELS, ModelSpec, build_model, model_options

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "model_options",
    "load_weights",
    "extract_state_dict",
    "classifier_prefix",
    "CifarResNet",
    "ConvNet",
    "torchvision_resnet",
]

_LAZY = {
    "load_weights": "kdkit.models.weights",
    "extract_state_dict": "kdkit.models.weights",
    "classifier_prefix": "kdkit.models.weights",
    "CifarResNet": "kdkit.models.cifar_resnet",
    "ConvNet": "kdkit.models.cifar_resnet",
    "torchvision_resnet": "kdkit.models.cifar_resnet",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
