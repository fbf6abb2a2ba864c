"""Component registries: one general mechanism for every kind plugins can add.

The plugin manager (:mod:`kdkit.plugins`) fills one :class:`Registry` per kind by calling the
``kdkit_register_<kind>`` hooks; everything else looks components up here by name.

Every component — built-in or third-party, of every kind — is declared the one way::

    register("dkd", "kdkit_methods.logit:DKDLoss", description="...",
             options={"alpha": ConfigKey(1.0, "TCKD weight", range="[0, inf)"), ...})

``target`` is a lazy import path ``"package.module:attribute"`` (imported when the component is
first built, so registering costs no torch) or the callable itself; ``options`` declares the keyword
options it takes as :class:`~kdkit.config.ConfigKey` s, and the config, ``--help-config`` and
:meth:`Component.build` all check against that declaration.  A component registered without
``options`` accepts any option and passes it on (its factory is the judge).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from kdkit.config.keys import ConfigKey
from kdkit.errors import ConfigError, PluginError, UnknownComponentError

#: The component kinds, each filled by the hook ``kdkit_register_<kind>``.
KINDS = ("teachers", "students", "text_relaxers", "losses", "datasets", "methods")

#: The arguments of each kind's calling contract (:mod:`kdkit.hookspecs`): not options, so never
#: checked against the declaration, whether given by position or by name.
CONTRACT_ARGUMENTS = {"teachers": ("num_classes",), "students": ("num_classes",), "datasets": ("split", "root")}

__all__ = ["KINDS", "CONTRACT_ARGUMENTS", "Component", "Registry", "load_target", "check_target", "singular"]


def singular(kind: str) -> str:
    """``"losses"`` -> ``"loss"``, ``"text_relaxers"`` -> ``"text relaxer"``."""
    word = kind[:-2] if kind.endswith("sses") else kind[:-1]
    return word.replace("_", " ")


def load_target(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """The object a component's ``target`` names: ``"package.module:attribute"`` imported (once;
    Python caches the module), or the callable itself."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def check_target(target: Any, where: str) -> None:
    """A one-line :class:`PluginError` unless ``target`` is a callable or a ``"module:attribute"`` path."""
    if isinstance(target, str):
        module, sep, attribute = target.partition(":")
        if not sep or not all(p.isidentifier() for p in module.split(".") + attribute.split(".")):
            raise PluginError(f"{where}: target {target!r} is not an import path; give 'package.module:attribute' "
                              "or the callable itself")
    elif not callable(target):
        raise PluginError(f"{where}: target {target!r} is not callable; give the callable or its import path "
                          "'package.module:attribute'")


@dataclass(frozen=True)
class Component:
    """One registered component: what it is called, what builds it, its declared options and who provided it.

    :param target: ``"package.module:attribute"`` (imported on first use) or the callable itself.
    :param declared_options: option name -> :class:`~kdkit.config.ConfigKey`; ``None``: undeclared
        (any option is accepted and passed on).
    """

    kind: str
    name: str
    target: str | Callable[..., Any]
    plugin: str
    description: str = ""
    declared_options: Mapping[str, ConfigKey] | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def factory(self) -> Callable[..., Any]:
        """What :attr:`target` names (importing its module on first use)."""
        return load_target(self.target)

    @property
    def options(self) -> dict[str, ConfigKey]:
        """The declared options (empty when undeclared: see :attr:`accepts_any`)."""
        return dict(self.declared_options or {})

    @property
    def accepts_any(self) -> bool:
        """Registered without ``options``: every option is passed on unchecked."""
        return self.declared_options is None

    def check_options(self, options: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """``options`` checked against the declaration, declared defaults filled in for those not
        given; an unknown or disallowed option is a one-line :class:`ConfigError`."""
        owner = where or f"{singular(self.kind)} {self.name!r}"
        if self.accepts_any:
            return dict(options)
        declared = self.options
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise ConfigError(f"{owner}: unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(declared)) or '(none)'}")
        checked = {name: key.default for name, key in declared.items()}
        for name, value in options.items():
            path = f"{where}.{name}" if where else name
            try:
                checked[name] = declared[name].check(value, path)
            except ConfigError as exc:
                if where:  # a config path: the message names it
                    raise
                # built outside a config: name the component, not a config key
                raise ConfigError(str(exc).replace(f"config key {path}", f"{owner}: option {name}", 1)) from None
        return checked

    def build(self, *args, **kwargs):
        """``target(*args, **kwargs)`` with the options among ``kwargs`` checked and completed by
        :meth:`check_options` (the kind's contract arguments, :data:`CONTRACT_ARGUMENTS`, pass as given)."""
        contract = CONTRACT_ARGUMENTS.get(self.kind, ())
        options = {k: v for k, v in kwargs.items() if k not in contract}
        given = {k: v for k, v in kwargs.items() if k in contract}
        return self.factory(*args, **given, **self.check_options(options))


class Registry:
    """Name -> :class:`Component` for one kind, with errors that help the user."""

    def __init__(self, kind: str):
        self.kind = kind
        self._components: dict[str, Component] = {}

    def add(self, component: Component) -> None:
        existing = self._components.get(component.name)
        if existing is not None:
            raise PluginError(
                f"{singular(self.kind)} {component.name!r} is registered twice: by plugin "
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
                f"unknown {singular(self.kind)} {name!r}; valid choices: {choices}"
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
