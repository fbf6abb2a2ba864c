"""The resolved config as a frozen, attribute-access view: ``ctx.config.train.lr``, ``cfg.soda.bits``.

Every value in it was checked against its declaration when the config was resolved
(:func:`kdkit.config.resolve_method_config`), so a read needs no default: a missing key is an
``AttributeError``/``KeyError`` naming the keys that exist, never a silent fallback.  The view is
frozen — assigning to it raises — because the run has started when a method sees it; the last place
to change a run's config is the ``kdkit_configure`` hook, which sees the plain dict.

Why a view and not generated dataclasses or pydantic models: a section's keys depend on the
component it chooses (``student.name`` brings that model's options) and some sections are open (a
relaxer's own keys), so a class per section would be built anew for every resolution and would give
static type checkers nothing a view does not.  The engine's own keys, whose shape is fixed, do have
dataclasses (:mod:`kdkit.config.settings`).  A ``dict`` that is also read by attribute keeps every
``section["key"]`` reader and every ``dict`` consumer working; :meth:`FrozenConfig.to_dict` gives
the plain ``dict``/``list`` tree for YAML, JSON and checkpoints.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FrozenConfig", "FrozenList", "freeze_config", "thaw_config"]


class FrozenList(tuple):
    """A list of config values, frozen; equal to the ``list`` it was made from, and shown like it
    (``repr`` feeds seeds and cache keys: :func:`kdkit.seeding.derive_seed`)."""

    def __eq__(self, other):
        if isinstance(other, list):
            other = tuple(other)
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self):
        return (FrozenList, (tuple(self),))


def _frozen(self, *args, **kwargs):
    what = _join(self._path, args[0]) if args and isinstance(args[0], str) else self._path or "its top level"
    raise TypeError(f"the resolved config is frozen (changing {what}); change a run's config with --set or in "
                    "a kdkit_configure hook")


class FrozenConfig(dict):
    """A read-only ``dict`` of a resolved config section whose keys are also attributes.

    A ``dict`` (not only a ``Mapping``) so that ``json.dumps``, ``isinstance(x, dict)`` checks and
    ``{**section}`` work unchanged; every mutating method raises.  YAML's safe dumper and
    ``torch.load(weights_only=True)`` accept plain types only: give them :meth:`to_dict`.
    """

    def __init__(self, items: Mapping[str, Any] = (), path: str = ""):
        dict.__init__(self, {k: _freeze(v, _join(path, k)) for k, v in dict(items).items()})
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_path":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            where = self._path or "the config"
            raise AttributeError(f"config key {_join(self._path, name)!r} does not exist; keys of {where}: "
                                 f"{', '.join(map(str, self)) or '(none)'}") from None

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _frozen
    update = pop = popitem = clear = setdefault = __ior__ = _frozen

    def __reduce__(self):
        return (_rebuild, (self.to_dict(), self._path))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def to_dict(self) -> dict:
        """The plain ``dict``/``list`` tree (a fresh copy): for YAML, JSON, checkpoints and mutation."""
        return thaw_config(self)


def _rebuild(items, path):
    return FrozenConfig(items, path)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _freeze(value: Any, path: str) -> Any:
    if isinstance(value, FrozenConfig):
        return value
    if isinstance(value, Mapping):
        return FrozenConfig(value, path)
    if isinstance(value, (list, tuple)) and not isinstance(value, FrozenList):
        return FrozenList(_freeze(v, f"{path}.{i}") for i, v in enumerate(value))
    return value


def freeze_config(config: Mapping[str, Any]) -> FrozenConfig:
    """``config`` (a resolved config or one of its sections) as a :class:`FrozenConfig`; a copy, so
    later changes to ``config`` do not show."""
    return config if isinstance(config, FrozenConfig) else FrozenConfig(config)


def thaw_config(value: Any) -> Any:
    """A plain, mutable copy of ``value``: mappings become ``dict``, lists and tuples ``list``."""
    if isinstance(value, Mapping):
        return {k: thaw_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw_config(v) for v in value]
    return value
