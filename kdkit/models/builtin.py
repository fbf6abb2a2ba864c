"""Internal default plugin: registers every built-in model as both a teacher and a student."""
from __future__ import annotations

import functools

import kdkit
from kdkit.models.zoo import MODELS, build_model, model_options


def _register_all(register) -> None:
    for name, spec in MODELS.items():
        register(name, functools.partial(build_model, name), description=spec.description,
                 options=model_options(name))


@kdkit.hookimpl
def kdkit_register_teachers(register):
    _register_all(register)


@kdkit.hookimpl
def kdkit_register_students(register):
    _register_all(register)
