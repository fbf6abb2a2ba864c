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

Models (teachers and students) have two more rules:

* **weights**: every model takes the options of :data:`WEIGHT_OPTIONS` (``pretrained``, a local
  file, ``pretrained_key``, ``pretrained_strict``); when its declaration has no ``pretrained`` of
  its own, :meth:`Component.build` loads the file with :func:`kdkit.load_weights` after the factory
  returns, so a plugin's model needs no loading code;
* **sources**: a name registered with a trailing colon (``"torchvision:"``) is a *source*: its target
  ``resolve(rest) -> (factory, options, description)`` turns every name ``"torchvision:REST"`` into a
  :class:`Component` when it is first looked up (:mod:`kdkit.models.sources` registers
  ``torchvision:``, ``timm:``, ``hf:`` and ``py:``); ``"*"`` among ``options`` passes undeclared
  options on as well.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from kdkit.config.keys import ConfigKey
from kdkit.errors import ConfigError, KdkitError, PluginError, UnknownComponentError

#: The component kinds, each filled by the hook ``kdkit_register_<kind>``.
KINDS = ("teachers", "students", "text_relaxers", "losses", "datasets", "methods")

#: The arguments of each kind's calling contract (:mod:`kdkit.hookspecs`): not options, so never
#: checked against the declaration, whether given by position or by name.
CONTRACT_ARGUMENTS = {"teachers": ("num_classes",), "students": ("num_classes",), "datasets": ("split", "root")}

#: What a loss reads (its ``inputs`` metadata, :func:`kdkit.hookspecs.kdkit_register_losses`): logits
#: (the default) or the term's tapped features (the term must name student and teacher module paths).
LOSS_INPUTS = ("logits", "features")

#: The kinds whose components are models: they take :data:`WEIGHT_OPTIONS` and may come from a source.
MODEL_KINDS = ("teachers", "students")

#: The weight-loading options every model takes (loaded by :func:`kdkit.load_weights`).
WEIGHT_OPTIONS = {
    "pretrained": ConfigKey(None, "weights file to load (a state dict or a checkpoint holding one)", type=str,
                            file=True),
    "pretrained_key": ConfigKey(None, "key of the state dict inside the weights file (null: found automatically)",
                                type=str),
    "pretrained_strict": ConfigKey(True, "every weight must match (false: load what matches, report the rest)"),
}

__all__ = ["KINDS", "CONTRACT_ARGUMENTS", "MODEL_KINDS", "WEIGHT_OPTIONS", "Component", "Registry", "load_target",
           "check_target", "singular"]


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
    :param accepts_more: the declared options are checked and any other is passed on as well (a
        factory with ``**kwargs``).
    """

    kind: str
    name: str
    target: str | Callable[..., Any]
    plugin: str
    description: str = ""
    declared_options: Mapping[str, ConfigKey] | None = None
    metadata: dict = field(default_factory=dict)
    accepts_more: bool = False

    @property
    def factory(self) -> Callable[..., Any]:
        """What :attr:`target` names (importing its module on first use)."""
        return load_target(self.target)

    @property
    def loads_weights(self) -> bool:
        """A model whose declaration has no ``pretrained``: :meth:`build` loads its weights (:data:`WEIGHT_OPTIONS`)."""
        return self.kind in MODEL_KINDS and "pretrained" not in (self.declared_options or {})

    @property
    def needs_features(self) -> bool:
        """A loss registered with ``inputs="features"``: its terms must tap student and teacher modules."""
        return self.kind == "losses" and self.metadata.get("inputs") == "features"

    @property
    def options(self) -> dict[str, ConfigKey]:
        """The declared options, with :data:`WEIGHT_OPTIONS` for a model that :attr:`loads_weights`
        (empty when undeclared: see :attr:`accepts_any`)."""
        declared = dict(self.declared_options or {})
        return {**declared, **WEIGHT_OPTIONS} if self.loads_weights else declared

    @property
    def accepts_any(self) -> bool:
        """Registered without ``options`` (or with :attr:`accepts_more`): options not declared are
        passed on unchecked."""
        return self.declared_options is None or self.accepts_more

    def check_options(self, options: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """``options`` checked against the declaration, declared defaults filled in for those not
        given; an unknown or disallowed option is a one-line :class:`ConfigError`."""
        owner = where or f"{singular(self.kind)} {self.name!r}"
        declared = self.options
        unknown = sorted(set(options) - set(declared))
        if unknown and not self.accepts_any:
            raise ConfigError(f"{owner}: unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(declared)) or '(none)'}")
        checked = {name: key.default for name, key in declared.items()}
        for name, value in options.items():
            if name not in declared:  # accepts_any: passed on as given
                checked[name] = value
                continue
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
        :meth:`check_options` (the kind's contract arguments, :data:`CONTRACT_ARGUMENTS`, pass as given);
        a model whose parameters would not fit in memory is refused first (:func:`kdkit.models.footprint.check_fits`);
        then, for a model that :attr:`loads_weights`, its ``pretrained`` file loaded by :func:`kdkit.load_weights`."""
        contract = CONTRACT_ARGUMENTS.get(self.kind, ())
        options = self.check_options({k: v for k, v in kwargs.items() if k not in contract})
        given = {k: v for k, v in kwargs.items() if k in contract}
        if self.kind in MODEL_KINDS:
            # one line before allocation, not an allocator traceback or an OOM kill while weights initialise;
            # by name, as targets are: the models layer sits above this one (docs/architecture.md)
            load_target("kdkit.models.footprint:check_fits")(self, args, given, options)
        if not self.loads_weights:
            return self.factory(*args, **given, **options)
        weights = {k: options.pop(k) for k in WEIGHT_OPTIONS}
        model = self.factory(*args, **given, **options)
        if weights["pretrained"]:
            import kdkit  # the public facade: the loader imports torch, this layer does not

            kdkit.load_weights(model, weights["pretrained"], key=weights["pretrained_key"],
                               strict=weights["pretrained_strict"])
        return model


class Registry:
    """Name -> :class:`Component` for one kind, with errors that help the user."""

    def __init__(self, kind: str):
        self.kind = kind
        self._components: dict[str, Component] = {}
        self._sources: dict[str, Component] = {}  # "prefix:" -> the source's component
        self._resolved: dict[str, Component] = {}  # "prefix:rest" -> the component its source made

    def add(self, component: Component) -> None:
        if component.name.endswith(":"):
            self._add_source(component)
            return
        existing = self._components.get(component.name)
        if existing is not None:
            raise PluginError(
                f"{singular(self.kind)} {component.name!r} is registered twice: by plugin "
                f"{existing.plugin!r} and by plugin {component.plugin!r}; block one of them with "
                f"KDKIT_BLOCK_PLUGINS={component.plugin}"
            )
        self._components[component.name] = component

    def _add_source(self, component: Component) -> None:
        prefix = component.name[:-1]
        if not prefix.isidentifier():
            raise PluginError(f"plugin {component.plugin!r} registered the {singular(self.kind)} source "
                              f"{component.name!r}; a source is a name such as 'torchvision:' (an identifier and a colon)")
        existing = self._sources.get(component.name)
        if existing is not None:
            raise PluginError(f"{singular(self.kind)} source {component.name!r} is registered twice: by plugin "
                              f"{existing.plugin!r} and by plugin {component.plugin!r}")
        self._sources[component.name] = component

    def sources(self) -> list[Component]:
        """The registered sources (names ending with a colon), by prefix; ``metadata["form"]`` shows
        how a name of each is written (``torchvision:NAME``)."""
        return [self._sources[p] for p in sorted(self._sources)]

    def get(self, name: str) -> Component:
        """The component ``name``: a registered one, or the one a source makes of ``"prefix:rest"``."""
        component = self._components.get(name)
        if component is not None:
            return component
        prefix, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        source = self._sources.get(prefix + colon) if colon else None
        if source is None:
            choices = ", ".join(sorted(self._components)) or "(none registered)"
            forms = ", ".join(s.metadata.get("form", s.name) for s in self.sources())
            raise UnknownComponentError(
                f"unknown {singular(self.kind)} {name!r}; valid choices: {choices}"
                + (f"; or a name from a source: {forms}" if forms else "")
            ) from None
        if name not in self._resolved:
            self._resolved[name] = self._resolve(source, name, rest)
        return self._resolved[name]

    def _resolve(self, source: Component, name: str, rest: str) -> Component:
        try:
            factory, options, description = source.factory(rest)
        except KdkitError as exc:  # one line naming the name asked for
            raise type(exc)(f"{singular(self.kind)} {name!r}: {exc}") from None
        options = None if options is None else dict(options)
        more = options is not None and options.pop("*", False) is not False
        return Component(kind=self.kind, name=name, target=factory, plugin=source.plugin, description=description,
                         declared_options=options, metadata={"source": source.name}, accepts_more=more)

    def build(self, name: str, *args, **kwargs):
        return self.get(name).build(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._components)

    def __contains__(self, name: object) -> bool:
        """A registered name, or one a source resolves (``"torchvision:resnet18"``)."""
        if name in self._components:
            return True
        if not isinstance(name, str) or ":" not in name:
            return False
        try:
            self.get(name)
        except KdkitError:
            return False
        return True

    def __iter__(self) -> Iterator[Component]:
        return iter(self._components[n] for n in sorted(self._components))

    def __len__(self) -> int:
        return len(self._components)
