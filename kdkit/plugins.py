"""Plugin discovery and the process-wide plugin manager.

Plugins are found in this order (later ones cannot replace earlier components: a duplicate
name is an error naming both plugins):

1. kdkit's internal default modules (:data:`DEFAULT_PLUGINS`), always;
2. entry points of the group ``kdkit`` of every installed distribution — kdkit's own
   built-in plugins in ``plugins/`` are found this way, exactly like third-party ones —
   unless ``KDKIT_DISABLE_PLUGIN_AUTOLOAD=1``;
3. modules named by dotted path with ``kdkit --plugins-module MOD`` (repeatable) or
   ``KDKIT_PLUGINS=mod1,mod2``.

The modules of source 3 a run loaded are recorded in its directory (:data:`RECORD_FILE`,
:func:`record_plugin_modules`) and loaded again by whatever reads that run later (``kdkit eval``,
``kdkit train --resume``, ``kdkit sweep``: :func:`load_recorded_plugins`).

Each entry point loads in its own ``try``: a plugin that fails to import or to register (an
exception, or a call of ``sys.exit()``) is reported as one warning line naming the plugin and its
distribution, and skipped (``KDKIT_STRICT_PLUGINS=1`` re-raises instead; ``sys.exit()`` as a
:class:`PluginError`).  A dotted-path module that fails the same way is a one-line
:class:`PluginError` naming it.  ``KDKIT_BLOCK_PLUGINS=a,b`` skips plugins by
name (entry-point name, or dotted module path for the other two sources).

Registries are built lazily: ``manager.registry(kind)`` calls every implementation of
``kdkit_register_<kind>`` one at a time with a ``register`` callback that knows which plugin
is calling, so every :class:`~kdkit.registry.Component` records its plugin.

Importing this module does not import torch.
"""
from __future__ import annotations

import contextlib
import inspect
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from kdkit import hookspecs
from kdkit.errors import KdkitError, PluginError
from kdkit.config.keys import ConfigKey
from kdkit.registry import KINDS, LOSS_INPUTS, Component, Registry, singular, check_target

#: Entry-point group scanned for installed plugins.
ENTRY_POINT_GROUP = "kdkit"

#: kdkit's internal plugin modules, registered first, in this order.  A module that does not
#: exist (yet) is skipped silently; one that exists but fails to import is a kdkit bug and raises.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "kdkit.data.builtin",
    "kdkit.models.builtin",
    "kdkit.losses",
    "kdkit.methods.kd",
)

ENV_DISABLE_AUTOLOAD = "KDKIT_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = "KDKIT_BLOCK_PLUGINS"
ENV_STRICT = "KDKIT_STRICT_PLUGINS"
ENV_MODULES = "KDKIT_PLUGINS"

#: Where a plugin came from.
SOURCE_INTERNAL = "internal"
SOURCE_ENTRY_POINT = "entry point"
SOURCE_MODULE = "module"

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginFailure",
    "PluginManager",
    "get_plugin_manager",
    "reset_plugin_manager",
    "add_plugin_modules",
    "plugin_manager_for_testing",
    "RECORD_FILE",
    "record_plugin_modules",
    "recorded_plugin_modules",
    "load_recorded_plugins",
]

#: The file of a run (or sweep) directory that names the plugin modules it was run with.  Not a
#: key of config.yaml: the modules must be loaded *before* that config can be resolved (they may
#: register its method, dataset or models), and config.yaml is the resolved config that a resume
#: compares with its checkpoints.
RECORD_FILE = "plugins.json"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class PluginInfo:
    """What ``kdkit plugins`` shows about one loaded plugin."""

    name: str
    source: str  #: one of ``"internal"``, ``"entry point"``, ``"module"``
    version: str  #: distribution version, or ``"builtin"`` / ``"module"``
    distribution: str | None = None
    module: str | None = None  #: dotted path of the plugin module (``None`` for objects)
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)

    @property
    def internal(self) -> bool:
        return self.source == SOURCE_INTERNAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "distribution": self.distribution,
            "source": self.source,
            "module": self.module,
            "hooks": list(self.hooks),
            "components": {kind: list(names) for kind, names in self.components.items()},
        }


@dataclass
class PluginFailure:
    """A plugin that was skipped because it failed to load (see :attr:`PluginManager.failures`)."""

    name: str
    distribution: str | None
    version: str | None
    error: str

    def message(self) -> str:
        dist = f"distribution {self.distribution} {self.version}" if self.distribution else "no distribution"
        return (
            f"kdkit: warning: skipped broken plugin {self.name!r} ({dist}): {self.error} "
            f"({ENV_BLOCK}={self.name} silences this, {ENV_STRICT}=1 raises)"
        )


class PluginManager(pluggy.PluginManager):
    """kdkit's pluggy manager: hook specs from :mod:`kdkit.hookspecs`, discovery, registries.

    ``manager.hook`` is pluggy's hook relay for lifecycle calls, e.g.
    ``manager.hook.kdkit_after_step(trainer=t, step=s, loss=l, logs={})``.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] | None = None
        #: plugins skipped because they failed to load, in discovery order
        self.failures: list[PluginFailure] = []
        self.strict = False
        #: modules loaded by dotted path (``--plugins-module``, ``KDKIT_PLUGINS``, a run's record),
        #: in load order: what a run records (:func:`record_plugin_modules`)
        self.loaded_modules: list[str] = []

    # --- registration -------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None, **info: Any) -> str | None:
        """Register ``plugin`` (a module or object with ``@kdkit.hookimpl`` functions).

        Raises :class:`pluggy.PluginValidationError` for a hook implementation whose
        arguments the spec lacks or whose name starts with ``kdkit_`` but matches no spec
        (a misspelt hook); the plugin is then left unregistered.
        """
        name = super().register(plugin, name=name)
        if name is None:  # blocked
            return None
        try:
            self.check_pending()
        except pluggy.PluginValidationError:
            self.unregister(plugin)
            raise
        module = plugin.__name__ if isinstance(plugin, ModuleType) else None
        self._info[name] = PluginInfo(
            name=name,
            source=info.get("source", SOURCE_MODULE),
            version=info.get("version") or "module",
            distribution=info.get("distribution"),
            module=info.get("module", module),
        )
        self._registries = None
        return name

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        result = super().unregister(plugin=plugin, name=name)
        self._info.pop(name, None)
        self._registries = None
        return result

    def parse_hookimpl_opts(self, plugin: object, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("kdkit_") and inspect.isroutine(getattr(plugin, name, None)):
            # An unmarked kdkit_* function is almost always a forgotten @kdkit.hookimpl;
            # treat it as an implementation so a misspelt name is caught by check_pending().
            return {}
        return opts

    def _blocked_names(self) -> set[str]:
        return set(_env_list(ENV_BLOCK))

    def _fail(self, failure: PluginFailure, exc: BaseException) -> None:
        if self.strict:
            if isinstance(exc, SystemExit):  # re-raised, it would end kdkit silently with the plugin's status
                raise PluginError(f"plugin {failure.name!r} failed to load: {failure.error}") from exc
            raise exc
        self.failures.append(failure)
        print(failure.message(), file=sys.stderr)

    def load_default_plugins(self, modules: Iterable[str] | None = None) -> None:
        """Register kdkit's internal modules (default :data:`DEFAULT_PLUGINS`).

        A module that does not exist is skipped; one that fails to import is a bug and raises.
        """
        blocked = self._blocked_names()
        for dotted in DEFAULT_PLUGINS if modules is None else modules:
            if dotted in blocked or self.has_plugin(dotted):
                continue
            try:
                if importlib.util.find_spec(dotted) is None:
                    continue
            except ModuleNotFoundError:  # a parent package is missing
                continue
            module = importlib.import_module(dotted)
            self.register(module, name=dotted, source=SOURCE_INTERNAL, version="builtin",
                          distribution=None, module=dotted)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register every entry point of ``group``, each in its own ``try``."""
        blocked = self._blocked_names()
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else None
            dist_version = dist.version if dist is not None else None
            if ep.name in blocked or ep.name in seen or self.has_plugin(ep.name):
                continue
            seen.add(ep.name)
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name, source=SOURCE_ENTRY_POINT,
                              version=dist_version or "unknown", distribution=dist_name,
                              module=ep.value.split(":")[0])
            # SystemExit too: a plugin calling sys.exit() at import made kdkit exit 0 with no output
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not kill kdkit
                self._fail(PluginFailure(ep.name, dist_name, dist_version, _describe(exc)), exc)

    def load_module(self, dotted: str, origin: str = "--plugins-module") -> None:
        """Import ``dotted`` and register it; an import failure is a user error naming it."""
        if dotted in self._blocked_names() or self.has_plugin(dotted):
            return
        try:
            module = importlib.import_module(dotted)
        except (Exception, SystemExit) as exc:  # sys.exit() in the plugin must not end kdkit silently
            raise PluginError(
                f"cannot import plugin module {dotted!r} (from {origin}): {_describe(exc)}"
            ) from exc
        if self.is_registered(module):
            return
        try:
            self.register(module, name=dotted, source=SOURCE_MODULE, version="module",
                          distribution=None, module=dotted)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin module {dotted!r} (from {origin}) is invalid: {exc}") from exc
        if dotted not in self.loaded_modules:
            self.loaded_modules.append(dotted)

    def load_all(self, modules: Iterable[str] = ()) -> None:
        """Discovery in the documented order, honouring the ``KDKIT_*`` switches."""
        self.strict = _env_flag(ENV_STRICT)
        for name in self._blocked_names():
            self.set_blocked(name)
        self.load_default_plugins()
        if not _env_flag(ENV_DISABLE_AUTOLOAD):
            self.load_entry_points()
        for dotted in _env_list(ENV_MODULES):
            self.load_module(dotted, origin=ENV_MODULES)
        for dotted in modules:
            self.load_module(dotted)

    # --- registries ---------------------------------------------------------------------

    def _build_registries(self) -> dict[str, Registry]:
        registries: dict[str, Registry] = {}
        for kind in KINDS:
            registry = Registry(kind)
            caller = getattr(self.hook, f"kdkit_register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    continue
                for component in self._collect(kind, impl):
                    registry.add(component)
            registries[kind] = registry
        return registries

    def _collect(self, kind: str, impl: pluggy.HookImpl) -> list[Component]:
        plugin_name = impl.plugin_name
        collected: list[Component] = []

        def register(name: str, target: str | Callable[..., Any], description: str = "", *,
                     options: Mapping[str, ConfigKey] | None = None, **metadata: Any) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin_name!r} registered a {singular(kind)} with an "
                                  f"invalid name {name!r} (a non-empty string is required)")
            where = f"plugin {plugin_name!r} registered {singular(kind)} {name!r}"
            check_target(target, where)
            if options is not None:
                if not isinstance(options, Mapping) or not all(
                        isinstance(k, str) and isinstance(v, ConfigKey) for k, v in options.items()):
                    raise PluginError(f"{where} with options that are not a mapping of option name -> "
                                      "kdkit.ConfigKey")
                options = dict(options)
            if kind == "losses" and metadata.get("inputs", "logits") not in LOSS_INPUTS:
                raise PluginError(f"{where} with inputs={metadata['inputs']!r}; expected one of "
                                  f"{', '.join(map(repr, LOSS_INPUTS))}")
            collected.append(Component(kind=kind, name=name, target=target, plugin=plugin_name,
                                       description=description or "", declared_options=options,
                                       metadata=dict(metadata)))

        try:
            impl.function(register=register) if "register" in impl.argnames else impl.function()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - SystemExit: see load_entry_points
            info = self._info.get(plugin_name)
            if info is not None and info.source == SOURCE_ENTRY_POINT:
                self._fail(PluginFailure(plugin_name, info.distribution, info.version,
                                         f"kdkit_register_{kind} raised {_describe(exc)}"), exc)
                return []
            if isinstance(exc, KdkitError) or (isinstance(exc, Exception) and (info is None or info.internal)):
                raise  # the plugin's own one-line error, or a bug in kdkit's own modules
            # the user's dotted-path modules: one line naming the module (--debug shows the traceback)
            raise PluginError(f"plugin module {plugin_name!r}: kdkit_register_{kind} raised {_describe(exc)}") from exc
        return collected

    def registries(self) -> dict[str, Registry]:
        """All registries, built on first use (duplicate names raise :class:`PluginError`)."""
        if self._registries is None:
            self._registries = self._build_registries()
        return self._registries

    def registry(self, kind: str) -> Registry:
        """The :class:`~kdkit.registry.Registry` of ``kind`` (one of :data:`kdkit.registry.KINDS`)."""
        if kind not in KINDS:
            raise PluginError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        return self.registries()[kind]

    # --- introspection ------------------------------------------------------------------

    def plugin_info(self, include_internal: bool = True) -> list[PluginInfo]:
        """One :class:`PluginInfo` per registered plugin, in registration order."""
        registries = self.registries()
        result = []
        for name, info in self._info.items():
            if info.internal and not include_internal:
                continue
            plugin = self.get_plugin(name)
            info.hooks = sorted(caller.name for caller in (self.get_hookcallers(plugin) or []))
            info.components = {}
            for kind, registry in registries.items():
                # a source ("torchvision:") stands for every name of its form: listed as that form
                names = [c.name for c in registry if c.plugin == name] + [
                    c.metadata.get("form", c.name) for c in registry.sources() if c.plugin == name]
                if names:
                    info.components[kind] = names
            result.append(info)
        return result


_manager: PluginManager | None = None
_extra_modules: list[str] = []


def add_plugin_modules(modules: Iterable[str]) -> None:
    """Ask for more plugin modules by dotted path (what ``--plugins-module`` does).

    Before the manager exists they are loaded when it is created; afterwards immediately.
    """
    modules = [m for m in modules if m]
    _extra_modules.extend(m for m in modules if m not in _extra_modules)
    if _manager is not None:
        for dotted in modules:
            _manager.load_module(dotted)


def get_plugin_manager() -> PluginManager:
    """The process-wide :class:`PluginManager`; discovery runs on the first call."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load_all(_extra_modules)
        _manager = manager
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager and requested modules (for tests)."""
    global _manager
    _manager = None
    _extra_modules.clear()


@contextlib.contextmanager
def plugin_manager_for_testing(*plugins: object, defaults: bool = True,
                               autoload: bool = False) -> Iterator[PluginManager]:
    """Temporarily replace the process-wide manager — a fixture kit for plugin authors.

    ``plugins`` are modules or objects with ``@kdkit.hookimpl`` methods, registered after
    kdkit's internal modules (``defaults=True``) and, with ``autoload=True``, after the
    installed entry points.  The previous manager is restored on exit::

        with plugin_manager_for_testing(my_plugin) as pm:
            assert "my_loss" in pm.registry("losses")
    """
    global _manager
    previous = _manager
    manager = PluginManager()
    manager.strict = True
    if defaults:
        manager.load_default_plugins()
    if autoload:
        manager.load_entry_points()
    for plugin in plugins:
        name = plugin.__name__ if isinstance(plugin, ModuleType) else None
        manager.register(plugin, name=name)
    _manager = manager
    try:
        yield manager
    finally:
        _manager = previous


# --- plugin modules recorded with a run ----------------------------------------------------------

def recorded_plugin_modules(directory: str | Path) -> list[dict[str, Any]]:
    """The entries of ``directory``/:data:`RECORD_FILE` (``{"name": dotted, "file": path or None}``),
    ``[]`` when the directory records none."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [dict(entry) for entry in data["modules"]]
        if not all(isinstance(entry["name"], str) and entry["name"] for entry in entries):
            raise ValueError("a module without a name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KdkitError(f"{path} is unreadable ({_describe(exc)}); it names the plugin modules of the run: "
                         'restore it, or write {"modules": [{"name": "MODULE"}]}') from None
    return entries


def record_plugin_modules(directory: str | Path, modules: Iterable[str]) -> None:
    """Write ``directory``/:data:`RECORD_FILE` naming ``modules`` after those it already records
    (with the file each was imported from, for the error when it is gone); nothing when none."""
    from kdkit.files import atomic_write_text

    entries = recorded_plugin_modules(directory)
    names = [entry["name"] for entry in entries]
    added = [m for m in dict.fromkeys(modules) if m and m not in names]
    if not added:
        return
    for dotted in added:
        module = sys.modules.get(dotted)
        file = getattr(module, "__file__", None)
        entries.append({"name": dotted, "file": str(Path(file).resolve()) if file else None})
    atomic_write_text(Path(directory) / RECORD_FILE, json.dumps({"modules": entries}, indent=2) + "\n")


def load_recorded_plugins(directory: str | Path, manager: PluginManager | None = None) -> list[str]:
    """Load the plugin modules ``directory`` records into ``manager`` (default: the process-wide
    one); returns their names.  One that cannot be imported is a :class:`PluginError` naming it."""
    entries = recorded_plugin_modules(directory)
    if not entries:
        return []
    manager = manager if manager is not None else get_plugin_manager()
    record = Path(directory) / RECORD_FILE
    for entry in entries:
        dotted = entry["name"]
        try:
            manager.load_module(dotted, origin=str(record))
        except PluginError as exc:
            was = f" (it was {entry['file']})" if entry.get("file") else ""
            raise PluginError(f"{exc}; the run was made with plugin module {dotted!r}{was}: make it importable "
                              f"again (PYTHONPATH) or remove it from {record}") from None
    return [entry["name"] for entry in entries]
