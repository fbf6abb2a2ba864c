"""Resolving a config: the method's declared defaults <- ``--config FILE`` <- ``--set`` items, merged,
then every value checked against its declaration; a component section (``data``, ``student``,
``teachers[]``, ...) is checked against the options its chosen component declared when it was
registered (:attr:`kdkit.registry.Component.options`)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kdkit.config.files import apply_sets, load_yaml, parse_set
from kdkit.config.keys import ConfigKey, check_type, inherit_declarations, plain_defaults, type_name
from kdkit.config.schema import COMPONENT_SECTIONS, ENGINE_KEYS, base_config
from kdkit.config.settings import check_train_sections
from kdkit.config.view import freeze_config
from kdkit.errors import ConfigError, KdkitError
from kdkit.paths import user_path

__all__ = ["merge", "validate", "resolve_config", "resolve_method_config", "component_options", "get_path"]

def merge(defaults: Any, override: Any, path: str = "") -> Any:
    """Deep-merge ``override`` onto ``defaults``; mappings merge, everything else replaces.

    Lists whose default holds a mapping are lists of *items*: each override item is merged onto
    the template (the first default item).
    """
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = copy.deepcopy(defaults)
        for key, value in override.items():
            sub = f"{path}.{key}" if path else str(key)
            out[key] = merge(defaults[key], value, sub) if key in defaults else copy.deepcopy(value)
        return out
    if isinstance(defaults, list) and defaults and isinstance(defaults[0], dict) and isinstance(override, list):
        template = defaults[0]
        return [merge(template, item, f"{path}.{i}") if isinstance(item, dict) else copy.deepcopy(item)
                for i, item in enumerate(override)]
    return copy.deepcopy(override)



def validate(value: Any, default: Any, path: str = "",
             extra: Callable[[str, Any], dict | None] | None = None, *, check_files: bool = True) -> Any:
    """Check ``value`` against the schema ``default``; return it (ints promoted where floats are expected).

    ``extra(path, section) -> dict | None`` may return additional defaults for the mapping at
    ``path`` (the options of a component); ``{"*": ...}`` in that dict means "open".
    ``check_files=False`` skips the existence of :attr:`ConfigKey.file` paths (a sweep plans runs
    whose weights an earlier run writes).
    """
    where = path or "<root>"
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where}: expected mapping, got {type_name(value)} ({value!r})")
        if not default:
            return value  # open mapping
        schema = dict(default)
        is_open = False
        if extra is not None:
            # a section that names no component (`--set student={}`) has the declared one's options
            named = value if "name" in value or "name" not in schema else {
                **value, "name": plain_defaults(schema["name"])}
            more = extra(path, named)
            if more:
                is_open = "*" in more
                for k, v in more.items():
                    if k != "*" and k not in schema:
                        schema[k] = v
                    elif isinstance(v, ConfigKey) and not isinstance(schema.get(k), (ConfigKey, dict, list)):
                        schema[k] = v.with_default(schema[k])  # a method's plain default keeps the declaration
        out = {}
        for key, sub in value.items():
            subpath = f"{path}.{key}" if path else str(key)
            if key not in schema:
                if is_open:
                    out[key] = sub
                    continue
                valid = ", ".join(str(k) for k in schema)
                raise ConfigError(f"unknown config key {subpath!r}; valid keys at {where}: {valid}")
            out[key] = validate(sub, schema[key], subpath, extra, check_files=check_files)
        for key, sub in schema.items():  # defaults of the keys not given by the user
            if key not in out:
                out[key] = plain_defaults(sub)
        return out
    if isinstance(default, ConfigKey):
        value = default.check(value, where)
        if default.file and check_files and value:
            _check_file(value, where)
        return value
    if default is None or isinstance(default, (bool, int, float, str)):
        return ConfigKey(default).check(value, where)  # a plain default declares its own type
    if isinstance(default, (list, tuple)):
        value = check_type(value, list, where, "list")
        if default:
            template = default[0]
            return [validate(item, template, f"{path}.{i}", extra, check_files=check_files)
                    for i, item in enumerate(value)]
        return value
    return value


def _check_file(value, where: str) -> None:
    path = user_path(str(value))
    shown = value if str(value).isprintable() else repr(value)
    if path.is_dir():
        raise ConfigError(f"config key {where}: {shown} is a directory; give a file")
    if not path.is_file():
        raise ConfigError(f"config key {where}: file not found: {shown} (kdkit never downloads it; give a local file)")


def component_options(kind: str, name: str, registry_lookup=None) -> dict | None:
    """The declared options (name -> :class:`ConfigKey`) of component ``name`` of ``kind``, with
    ``"*"`` added when it accepts undeclared ones too; ``None`` when no registry is available."""
    try:
        if registry_lookup is None:
            import kdkit

            registry = kdkit.get_registry(kind)
        else:
            registry = registry_lookup(kind)
        component = registry.get(name)
    except KdkitError:
        raise
    except Exception:  # no plugin manager yet (early development, isolated tests)
        return None
    options: dict = dict(component.options)
    if component.accepts_any:
        options["*"] = None
    return options


def _section_kind(path: str, sections: Mapping[str, str]) -> str | None:
    """The registry kind whose component the mapping at ``path`` configures (``None``: not a component section)."""
    for pattern, kind in sections.items():
        if pattern.endswith("[]"):
            head, _, tail = path.rpartition(".")
            if path == pattern or (head == pattern[:-2] and tail.isdigit()):
                return kind
        elif path == pattern:
            return kind
    return None


def _component_extra(sections: Mapping[str, str], registry_lookup=None):
    def extra(path: str, section: dict) -> dict | None:
        kind = _section_kind(path, sections)
        name = section.get("name")
        if kind is None or not isinstance(name, str) or not name:
            return None
        options = component_options(kind, name, registry_lookup)
        if options is None:
            return {"*": None}  # cannot check: stay permissive, the factory will complain
        engine_keys = ENGINE_KEYS.get(kind, {"name"})
        return {k: v for k, v in options.items() if k not in engine_keys}

    return extra


def resolve_config(defaults: Mapping, config_file: str | Path | None = None, sets: Iterable[str] = (),
                   component_sections: Mapping[str, str] | None = None, registry_lookup=None, *,
                   check_files: bool = True) -> dict:
    """defaults <- YAML file <- ``--set`` items, validated against ``defaults``.

    ``defaults`` is a tree of :class:`ConfigKey` declarations (plain values are keys whose type is
    their default's).  ``component_sections`` (default :data:`COMPONENT_SECTIONS`) names the
    sections checked against a component factory's options; ``registry_lookup(kind)`` returns the
    registry.  ``check_files=False``: see :func:`validate`.
    """
    return _resolve(defaults, config_file, sets, component_sections, registry_lookup, check_files)[1]


def _resolve(defaults, config_file, sets, component_sections, registry_lookup,
             check_files: bool = True) -> tuple[dict, dict]:
    """``(schema, config)``: the declarations that apply once the chosen components are known, and the config."""
    user: dict = load_yaml(config_file) if config_file else {}
    sets = list(sets or ())
    merged = apply_sets(merge(plain_defaults(dict(defaults)), user), sets)
    sections = dict(COMPONENT_SECTIONS) if component_sections is None else dict(component_sections)
    schema, merged = _follow_chosen_components(dict(defaults), merged, user, sets, sections)
    return schema, validate(merged, schema, "", _component_extra(sections, registry_lookup), check_files=check_files)


def _given(user: dict, sets: list[str]) -> list[tuple[tuple, Any]]:
    """``(path, value)`` of everything the user wrote: the config file's leaves, then the ``--set`` items."""
    out: list[tuple[tuple, Any]] = []

    def walk(node, path):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, path + (str(key),))
        else:
            out.append((path, node))

    walk(user or {}, ())
    for item in sets:
        parts, value = parse_set(item)
        out.append((tuple(parts), value))
    return out


def _user_keys(section: tuple, given: list[tuple[tuple, Any]]) -> set:
    """The keys of the mapping at ``section`` that the user gave (directly, or inside a value given
    for an enclosing path, e.g. a whole ``teachers`` list)."""
    keys: set = set()
    for path, value in given:
        if path[:len(section)] == section and len(path) > len(section):
            keys.add(path[len(section)])
        elif section[:len(path)] == path:
            for part in section[len(path):]:
                if isinstance(value, dict):
                    value = value.get(part)
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = None
                    break
            if isinstance(value, dict):
                keys |= set(value)
    return keys


def _follow_chosen_components(defaults: dict, merged: dict, user: dict, sets: list[str],
                              sections: Mapping[str, str]) -> tuple[dict, dict]:
    """A component's options follow the component that is chosen.

    When a component section (``data``, ``student``, each of ``teachers``) names another component
    than the method's default, the default component's options are dropped from the section (they
    belong to a component no longer in use: the procedural dataset's ``train_per_class`` under
    ``data.name=cifar10``), keeping the engine's keys, the keys the method declared with a
    :class:`ConfigKey` (wordnet_relax's ``data.augment``) and what the user wrote; the chosen
    component's own defaults then come from its factory.  Returns ``(schema, merged)`` for
    :func:`validate`.
    """
    schema = copy.deepcopy(defaults)
    given = _given(user, sets)

    def name_of(section: dict):
        return plain_defaults(section.get("name"))

    def method_keys(default_section: dict, kind: str) -> set:
        """The engine's keys and those the method declared (ConfigKey): not the default component's options."""
        return set(ENGINE_KEYS.get(kind, {"name"})) | {k for k, v in default_section.items()
                                                      if isinstance(v, ConfigKey)}

    def rebuilt(default_section: dict, section: dict, path: tuple, kind: str) -> dict:
        keep = method_keys(default_section, kind) | _user_keys(path, given)
        return {k: v for k, v in section.items() if k in keep}

    def engine_only(default_section: dict, kind: str) -> dict:
        keep = method_keys(default_section, kind)
        return {k: v for k, v in default_section.items() if k in keep}

    for pattern, kind in sections.items():
        base = pattern[:-2] if pattern.endswith("[]") else pattern
        d_node, m_node = get_path(schema, base), get_path(merged, base)
        parent_d, parent_m = _parent(schema, base), _parent(merged, base)
        leaf = base.split(".")[-1]
        if pattern.endswith("[]"):
            if not (isinstance(d_node, list) and d_node and isinstance(d_node[0], dict) and isinstance(m_node, list)):
                continue
            template = d_node[0]
            switched = False
            for i, item in enumerate(m_node):
                if isinstance(item, dict) and item.get("name", name_of(template)) != name_of(template):
                    m_node[i] = rebuilt(template, item, tuple(base.split(".")) + (str(i),), kind)
                    switched = True
            if switched and parent_d is not None:
                parent_d[leaf] = [engine_only(template, kind)] + d_node[1:]
        elif (isinstance(d_node, dict) and isinstance(m_node, dict)
              and m_node.get("name", name_of(d_node)) != name_of(d_node)):
            if parent_m is not None and parent_d is not None:
                parent_m[leaf] = rebuilt(d_node, m_node, tuple(base.split(".")), kind)
                parent_d[leaf] = engine_only(d_node, kind)
    return schema, merged


def _parent(config: dict, dotted: str):
    """The mapping holding the last part of ``dotted`` (``None`` when a part is missing)."""
    node: Any = config
    for part in dotted.split(".")[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def get_path(config: Mapping, dotted: str, default=None):
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return default
    return node


def _method_declarations(method_name: str, manager) -> tuple[Any, dict, dict]:
    """``(method component, declared keys, component sections)`` of a method registered with ``manager``."""
    if not isinstance(method_name, str) or not method_name:  # e.g. `method: [kd]` in a run's config.yaml
        raise ConfigError(f"config key method: expected a method name, got {type_name(method_name)} ({method_name!r})")
    component = manager.registry("methods").get(method_name)
    defaults = component.factory.default_config()
    if not isinstance(defaults, dict):
        raise KdkitError(f"method {method_name!r}: default_config() must return a dict")
    declared = inherit_declarations({**defaults, "method": method_name}, base_config())
    sections = {**COMPONENT_SECTIONS, **(getattr(component.factory, "component_sections", None) or {})}
    return component, declared, sections


def _plugin_manager(manager):
    if manager is not None:
        return manager
    import kdkit

    return kdkit.get_plugin_manager()


def _check_selection(config: Mapping) -> None:
    """``checkpoint.select_on: val`` selects on ``data.val_fraction`` of the training split: with 0 held
    out there is nothing to select on, so each stage kept its last epoch while ``summary.json`` and a
    sweep's table said "val"."""
    checkpoint, data = config.get("checkpoint"), config.get("data")
    if (isinstance(checkpoint, Mapping) and isinstance(data, Mapping) and checkpoint.get("select_on") == "val"
            and data.get("val_fraction") == 0):
        raise ConfigError("config key checkpoint.select_on: val selects the best epoch on data.val_fraction of the "
                          "training split, and data.val_fraction is 0: set checkpoint.select_on=last (no "
                          "validation) or data.val_fraction above 0")


def resolve_method_config(method_name: str, config_file=None, sets: Iterable[str] = (), manager=None, *,
                          check_files: bool = True) -> dict:
    """The validated config of ``kdkit train --method METHOD_NAME [--config FILE] [--set ...]``:
    every key checked against its declaration (files named by :attr:`ConfigKey.file` keys exist
    unless ``check_files=False``), then the method's own ``check_config(config, registry)`` rules
    (on a frozen view of it: :class:`kdkit.config.view.FrozenConfig`) — all before a run directory
    exists.  The method is chosen by ``METHOD_NAME`` (``--method``):
    a ``method`` key naming another one is an error."""
    manager = _plugin_manager(manager)
    component, declared, sections = _method_declarations(method_name, manager)
    config = resolve_config(declared, config_file, sets, component_sections=sections,
                            registry_lookup=manager.registry, check_files=check_files)
    if config["method"] not in ("", method_name):
        raise ConfigError(f"config key method is {config['method']!r} but the method run is {method_name!r}: "
                          f"choose the method with --method NAME (and drop the method key or make it match)")
    config["method"] = method_name
    check_train_sections(config)  # optimiser / scheduler classes and their options, against torch
    _check_selection(config)
    check = getattr(component.factory, "check_config", None)
    if callable(check):
        check(freeze_config(config), manager.registry)  # rules read the config; they do not change it
    return config
