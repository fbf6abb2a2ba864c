"""kdkit — plugin-based knowledge distillation for PyTorch.

Importing :mod:`kdkit` is cheap: the compiled ops, open_clip and nltk load only when used.
The public plugin API is what this module exports; built-in and third-party plugins use
nothing else.
"""
from __future__ import annotations

from kdkit.errors import ConfigError, DataError, KdkitError, PluginError, UnknownComponentError
from kdkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "hookimpl",
    "KdkitError",
    "ConfigError",
    "DataError",
    "PluginError",
    "UnknownComponentError",
    "get_registry",
    "get_plugin_manager",
]


def get_plugin_manager():
    """The process-wide :class:`kdkit.plugins.PluginManager` (plugins loaded on first use)."""
    from kdkit.plugins import get_plugin_manager as _get

    return _get()


def get_registry(kind: str):
    """The :class:`kdkit.registry.Registry` of ``kind`` (``"methods"``, ``"datasets"``, ...)."""
    return get_plugin_manager().registry(kind)
