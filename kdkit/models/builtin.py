"""Internal default plugin: registers every built-in model as both a teacher and a student."""
from __future__ import annotations

import kdkit
from kdkit.models.zoo import MODELS, model_factory


def _register_all(register) -> None:
    for name, spec in MODELS.items():
        register(name, model_factory(name), description=spec.description)


@kdkit.hookimpl
def kdkit_register_teachers(register):
    _register_all(register)


@kdkit.hookimpl
def kdkit_register_students(register):
    _register_all(register)
