"""Internal default plugin: registers every built-in model as both a teacher and a student, and the
model sources (``torchvision:``, ``timm:``, ``hf:``, ``py:``; :mod:`kdkit.models.sources`) for both."""
from __future__ import annotations

import functools

import kdkit
from kdkit.models.sources import SOURCES
from kdkit.models.zoo import MODELS, build_model, model_options


def _register_all(register) -> None:
    for name, spec in MODELS.items():
        register(name, functools.partial(build_model, name), description=spec.description,
                 options=model_options(name))
    for prefix, (target, form, description) in SOURCES.items():
        # a name with a trailing colon is a source: "torchvision:NAME" resolves through `target`
        register(f"{prefix}:", target, description=description, options={}, form=form)


@kdkit.hookimpl
def kdkit_register_teachers(register):
    _register_all(register)


@kdkit.hookimpl
def kdkit_register_students(register):
    _register_all(register)
