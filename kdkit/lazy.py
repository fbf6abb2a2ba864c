"""``lazy_import``: a module that is imported on first use, to keep plugin registration cheap;
``import_extra``: an optional dependency imported when needed, or a one-line error naming its extra.

kdkit imports every plugin when it starts (``kdkit plugins``, ``kdkit --help``), so a plugin module
must not import torch, open_clip or nltk at import time.  ``torch = lazy_import("torch")`` at module
level reads like a normal import and costs nothing until ``torch.<something>`` is first used.
"""
from __future__ import annotations

import importlib
import types

__all__ = ["lazy_import", "import_extra"]


class _LazyModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_target"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str) -> types.ModuleType:
    """A stand-in for ``importlib.import_module(name)`` that imports on first attribute access."""
    return _LazyModule(name)


_WARNED: set[str] = set()


def deprecated_name(namespace: str, name: str, module: str, advice: str):
    """``module.name``, for a name that left the public API of ``namespace`` (kept one release): the
    first access in a process emits a :class:`DeprecationWarning` saying what to use instead."""
    import warnings

    value = getattr(importlib.import_module(module), name)
    qualified = f"{namespace}.{name}"
    if qualified not in _WARNED:
        _WARNED.add(qualified)
        warnings.warn(f"{qualified} is deprecated and leaves kdkit's public API in the next release: {advice}",
                      DeprecationWarning, stacklevel=3)
    return value


def import_extra(package: str, extra: str, needed_by: str = "") -> types.ModuleType:
    """``package`` imported, or a one-line :class:`~kdkit.errors.ConfigError` naming the kdkit extra that
    installs it (``needed_by`` opens the message: ``"dataset 'text' needs the transformers package: pip
    install 'kdkit[hf]'"``)."""
    try:
        return importlib.import_module(package)
    except ImportError:
        from kdkit.errors import ConfigError

        raise ConfigError(f"{needed_by + ' ' if needed_by else ''}needs the {package} package: "
                          f"pip install 'kdkit[{extra}]'") from None
