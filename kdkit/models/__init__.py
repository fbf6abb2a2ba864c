"""kdkit's built-in models (registered as teachers and students by :mod:`kdkit.models.builtin`).

``build_model(name, num_classes, **options)``, ``load_weights(model, path)`` and the table
``MODELS`` are the API; see :mod:`kdkit.models.zoo` for names and options.
"""
from kdkit.models.cifar_resnet import CifarResNet, ConvNet, torchvision_resnet
from kdkit.models.weights import classifier_prefix, extract_state_dict, load_weights
from kdkit.models.zoo import MODELS, ModelSpec, build_model, model_factory

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "model_factory",
    "load_weights",
    "extract_state_dict",
    "classifier_prefix",
    "CifarResNet",
    "ConvNet",
    "torchvision_resnet",
]
