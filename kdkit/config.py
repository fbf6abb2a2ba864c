"""Configuration: YAML files (``yaml.safe_load`` only), dotted ``--set`` overrides and validation.

Precedence, highest first: ``--set a.b=value`` > ``--config FILE`` > the method's
``default_config()``.  The defaults are also the schema:

* every key of a default mapping is the set of valid keys at that level — an unknown key is a
  :class:`~kdkit.errors.ConfigError` naming its dotted path and listing the valid keys;
* a value must have the type of its default (``int`` is accepted where the default is a
  ``float``; a ``None`` default accepts anything; an empty mapping ``{}`` is an open mapping
  whose keys are not checked);
* a list whose default holds a mapping uses that first mapping as the template of every item
  (missing keys are filled from it, unknown keys are errors);
* *component sections* (``data`` -> datasets, ``student`` -> students, ``teachers[]`` ->
  teachers, ...) additionally accept the keyword options of the selected component's factory
  (``inspect.signature``), with the factory's defaults; a factory taking ``**options`` makes
  the section open.

Values of ``--set`` are parsed as YAML scalars or flow collections (``--set train.lr=0.1``,
``--set train.milestones=[10,20]``, ``--set student.name=resnet8``); a numeric path
component indexes a list (``--set teachers.0.name=resnet20``).
"""
from __future__ import annotations

import copy
import inspect
import io
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from kdkit.errors import ConfigError, KdkitError

__all__ = [
    "base_config",
    "load_yaml",
    "parse_set",
    "apply_sets",
    "merge",
    "validate",
    "resolve_config",
    "dump_yaml",
    "write_config",
    "COMPONENT_SECTIONS",
]

#: Config paths whose keys are extended with the options of a registered component.
#: ``"teachers[]"`` means "every item of the list at ``teachers``".  Methods may extend this by
#: setting a class attribute ``component_sections`` (same format) on the method class.
COMPONENT_SECTIONS: dict[str, str] = {
    "data": "datasets",
    "student": "students",
    "teacher": "teachers",
    "teachers[]": "teachers",
}

#: Keys of a component section that the engine consumes (never passed to the factory).
ENGINE_KEYS = {
    "datasets": {"name", "root", "val_fraction", "num_workers"},
    "students": {"name"},
    "teachers": {"name", "train", "cache"},
}


def base_config() -> dict:
    """The sections every method shares.  Methods start from this and add their own."""
    return {
        "method": "",  # filled in by the engine: the name given to --plugin
        "seed": 0,
        "device": "auto",  # "auto" | "cpu" | "cuda" | "cuda:N"
        "deterministic": True,  # torch.use_deterministic_algorithms where possible
        "data": {
            "name": "shapes",
            "root": None,
            "val_fraction": 0.1,  # held out from the training split for model selection
            "num_workers": 0,
        },
        "train": train_section(),
        "checkpoint": {
            "select_on": "val",  # "val" (held-out split) | "test" (explicit opt-in) | "last"
            "save_best": True,
        },
        "logging": {
            "progress": True,  # tqdm bars (only when stderr is a terminal, rank 0)
            "log_every": 0,  # print a line every N steps (0: only per epoch)
            "tensorboard": False,  # kdkit_tensorboard plugin: event files in run_dir/tensorboard
        },
    }


def train_section(**overrides) -> dict:
    """Default optimisation settings (one stage); used by ``train`` and by methods for extra stages."""
    section = {
        "epochs": 10,
        "batch_size": 64,
        "eval_batch_size": 256,
        "optimizer": "sgd",  # "sgd" | "adam" | "adamw"
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "scheduler": "cosine",  # "none" | "cosine" | "step" | "multistep"
        "milestones": [],  # epochs, for "multistep"
        "step_size": 30,  # epochs, for "step"
        "gamma": 0.1,
        "warmup_epochs": 0.0,
        "grad_clip": None,  # max grad norm, or None
        "amp": True,  # autocast + GradScaler when on CUDA (ignored on CPU)
    }
    section.update(overrides)
    return section


# --- YAML ---------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file with ``yaml.safe_load``; errors are one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(config: Mapping) -> str:
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)


def write_config(config: Mapping, path: str | Path) -> None:
    """Write the resolved config atomically."""
    from kdkit.engine.checkpoint import atomic_write_text

    atomic_write_text(Path(path), dump_yaml(config))


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- --set --------------------------------------------------------------------------------

def parse_set(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, parsed value).  The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set: invalid key {key!r} in {item!r}")
    try:
        value = yaml.safe_load(io.StringIO(raw)) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {problem}") from None
    if raw.strip() and isinstance(value, dict) and not raw.strip().startswith("{"):
        # "a=b: c" would silently become a mapping; almost certainly a mistake
        raise ConfigError(f"--set {key}: value {raw!r} parses as a mapping; quote it or use {{...}}")
    return key.split("."), value


def apply_sets(config: dict, sets: Iterable[str]) -> dict:
    """Apply ``--set`` items onto a copy of ``config`` (structure is validated later)."""
    config = copy.deepcopy(config)
    for item in sets or ():
        parts, value = parse_set(item)
        node = config
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, here)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i]) or '<root>'} is not a mapping")
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, ".".join(parts))] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    return config


def _list_index(node: list, part: str, path: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--set {path}: {part!r} must be a list index (the value is a list)") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"--set {path}: index {index} out of range (list has {len(node)} items)")
    return index


# --- merge + validate ---------------------------------------------------------------------

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


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}


def _tname(value) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def validate(value: Any, default: Any, path: str = "",
             extra: Callable[[str, Any], dict | None] | None = None) -> Any:
    """Check ``value`` against the schema ``default``; return it (ints promoted where floats are expected).

    ``extra(path, section) -> dict | None`` may return additional defaults for the mapping at
    ``path`` (the options of a component); ``{"*": ...}`` in that dict means "open".
    """
    where = path or "<root>"
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where}: expected mapping, got {_tname(value)} ({value!r})")
        if not default:
            return value  # open mapping
        schema = dict(default)
        is_open = False
        if extra is not None:
            more = extra(path, value)
            if more:
                is_open = "*" in more
                for k, v in more.items():
                    if k != "*" and k not in schema:
                        schema[k] = v
        out = {}
        for key, sub in value.items():
            subpath = f"{path}.{key}" if path else str(key)
            if key not in schema:
                if is_open:
                    out[key] = sub
                    continue
                valid = ", ".join(str(k) for k in schema)
                raise ConfigError(f"unknown config key {subpath!r}; valid keys at {where}: {valid}")
            out[key] = validate(sub, schema[key], subpath, extra)
        for key, sub in schema.items():  # component defaults not given by the user
            if key not in out:
                out[key] = copy.deepcopy(sub)
        return out
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where}: expected bool, got {_tname(value)} ({value!r})")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {where}: expected int, got {_tname(value)} ({value!r})")
        return value
    if isinstance(default, float):
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where}: expected float, got {_tname(value)} ({value!r})")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {where}: expected str, got {_tname(value)} ({value!r})")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where}: expected list, got {_tname(value)} ({value!r})")
        if default:
            template = default[0]
            return [validate(item, template, f"{path}.{i}", extra) for i, item in enumerate(value)]
        return list(value)
    return value


def component_options(kind: str, name: str, registry_lookup=None) -> dict | None:
    """Keyword options (with defaults) of the factory registered as ``name`` in ``kind``.

    Returns ``None`` when the component is unknown or no registry is available, ``{"*": None}``
    (open) when the factory takes ``**options``.
    """
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
    return factory_options(component.factory)


def factory_options(factory) -> dict:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {"*": None}
    out: dict = {}
    for i, (pname, param) in enumerate(sig.parameters.items()):
        if param.kind is param.VAR_KEYWORD:
            out["*"] = None
        elif param.kind is param.VAR_POSITIONAL:
            continue
        elif param.default is not param.empty:
            out[pname] = _plain(param.default) if isinstance(param.default, (list, tuple, dict, Path)) else (
                param.default if param.default is None or isinstance(param.default, (bool, int, float, str)) else None)
    return out


def _component_extra(sections: Mapping[str, str], registry_lookup=None):
    def extra(path: str, section: dict) -> dict | None:
        for pattern, kind in sections.items():
            if pattern.endswith("[]"):
                base = pattern[:-2]
                head, _, tail = path.rpartition(".")
                if head != base or not tail.isdigit():
                    continue
            elif path != pattern:
                continue
            name = section.get("name")
            if not isinstance(name, str) or not name:
                return None
            options = component_options(kind, name, registry_lookup)
            if options is None:
                return {"*": None}  # cannot check: stay permissive, the factory will complain
            engine_keys = ENGINE_KEYS.get(kind, {"name"})
            return {k: v for k, v in options.items() if k not in engine_keys}
        return None

    return extra


def resolve_config(defaults: Mapping, config_file: str | Path | None = None, sets: Iterable[str] = (),
                   component_sections: Mapping[str, str] | None = None, registry_lookup=None) -> dict:
    """defaults <- YAML file <- ``--set`` items, validated against ``defaults``.

    ``component_sections`` (default :data:`COMPONENT_SECTIONS`) names the sections checked
    against a component factory's options; ``registry_lookup(kind)`` returns the registry.
    """
    user: dict = load_yaml(config_file) if config_file else {}
    sets = list(sets or ())
    merged = apply_sets(merge(dict(defaults), user), sets)
    sections = dict(COMPONENT_SECTIONS) if component_sections is None else dict(component_sections)
    schema, merged = _follow_chosen_components(dict(defaults), merged, user, sets, sections)
    return validate(merged, schema, "", _component_extra(sections, registry_lookup))


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
    ``data.name=cifar10``), keeping the engine's keys and what the user wrote; the chosen
    component's own defaults then come from its factory.  Returns ``(schema, merged)`` for
    :func:`validate`.
    """
    schema = copy.deepcopy(defaults)
    given = _given(user, sets)

    def rebuilt(default_section: dict, section: dict, path: tuple, kind: str) -> dict:
        engine = ENGINE_KEYS.get(kind, {"name"})
        keep = _user_keys(path, given)
        return {k: v for k, v in section.items() if k in engine or k in keep}

    def engine_only(default_section: dict, kind: str) -> dict:
        engine = ENGINE_KEYS.get(kind, {"name"})
        return {k: v for k, v in default_section.items() if k in engine}

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
                if isinstance(item, dict) and item.get("name") != template.get("name"):
                    m_node[i] = rebuilt(template, item, tuple(base.split(".")) + (str(i),), kind)
                    switched = True
            if switched and parent_d is not None:
                parent_d[leaf] = [engine_only(template, kind)] + d_node[1:]
        elif isinstance(d_node, dict) and isinstance(m_node, dict) and m_node.get("name") != d_node.get("name"):
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
