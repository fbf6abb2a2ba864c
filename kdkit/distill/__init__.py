"""kdkit.distill — the pieces distillation methods are built from.

* :class:`FeatureTaps` — outputs of named submodules of any ``nn.Module`` (the student, a teacher),
  captured by forward hooks during its forward pass, with no edit to the model.

Importing this package is cheap; torch loads when a piece is first used.
"""
from __future__ import annotations

__all__ = ["FeatureTaps", "module_paths"]

_LAZY = {"FeatureTaps": "kdkit.distill.taps", "module_paths": "kdkit.distill.taps"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit.distill' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
