"""Component registries: one general mechanism for every kind plugins can add.

The plugin manager (:mod:`kdkit.plugins`) fills one :class:`Registry` per kind by calling the
``kdkit_register_<kind>`` hooks; everything else looks components up here by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from kdkit.errors import PluginError, UnknownComponentError

#: The component kinds, each filled by the hook ``kdkit_register_<kind>``.
KINDS = ("teachers", "students", "text_relaxers", "losses", "datasets", "methods")


def _singular(kind: str) -> str:
    """``"losses"`` -> ``"loss"``, ``"text_relaxers"`` -> ``"text relaxer"``."""
    word = kind[:-2] if kind.endswith("sses") else kind[:-1]
    return word.replace("_", " ")


@dataclass(frozen=True)
class Component:
    """One registered component: what it is called, how to build it and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    metadata: dict = field(default_factory=dict)

    def build(self, *args, **kwargs):
        return self.factory(*args, **kwargs)


class Registry:
    """Name -> :class:`Component` for one kind, with errors that help the user."""

    def __init__(self, kind: str):
        self.kind = kind
        self._components: dict[str, Component] = {}

    def add(self, component: Component) -> None:
        existing = self._components.get(component.name)
        if existing is not None:
            raise PluginError(
                f"{_singular(self.kind)} {component.name!r} is registered twice: by plugin "
                f"{existing.plugin!r} and by plugin {component.plugin!r}; block one of them with "
                f"KDKIT_BLOCK_PLUGINS={component.plugin}"
            )
        self._components[component.name] = component

    def get(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            choices = ", ".join(sorted(self._components)) or "(none registered)"
            raise UnknownComponentError(
                f"unknown {_singular(self.kind)} {name!r}; valid choices: {choices}"
            ) from None

    def build(self, name: str, *args, **kwargs):
        return self.get(name).build(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._components)

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __iter__(self) -> Iterator[Component]:
        return iter(self._components[n] for n in sorted(self._components))

    def __len__(self) -> int:
        return len(self._components)
