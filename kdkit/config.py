"""Configuration: declared keys, YAML files (``yaml.safe_load`` only), dotted ``--set`` overrides.

Precedence, highest first: ``--set a.b=value`` > ``--config FILE`` > the method's
``default_config()``.  The defaults are the schema, and each key is declared once:

* a leaf is a :class:`ConfigKey` (default, one-line help, type, choices / range / pattern, list
  item type, nullability) or a plain value (typed by its default; a ``None`` default accepts
  anything); :func:`base_config` and :func:`train_section` declare the engine's keys, and a plain
  value a method writes over one keeps its declaration (:func:`inherit_declarations`);
* every key of a default mapping is the set of valid keys at that level — an unknown key is a
  :class:`~kdkit.errors.ConfigError` naming its dotted path and listing the valid keys; an empty
  mapping ``{}`` is an open mapping whose keys are not checked;
* a list whose default holds a mapping uses that first mapping as the template of every item
  (missing keys are filled from it, unknown keys are errors);
* *component sections* (``data`` -> datasets, ``student`` -> students, ``teachers[]`` ->
  teachers, ...) additionally accept the keyword options of the selected component's factory
  (``inspect.signature``: defaults, simple annotations such as ``str | None`` as types; a
  ``config_keys`` attribute of the factory declares options exactly); a factory taking
  ``**options`` makes the section open.  Choosing another component drops the
  default component's options and brings the chosen one's.

Values of ``--set`` are parsed as YAML scalars or flow collections (``--set train.lr=0.1``,
``--set train.milestones=[10,20]``, ``--set student.name=resnet8``); a numeric path
component indexes a list (``--set teachers.0.name=resnet20``).  :func:`resolve_method_config`
checks a method's whole config before a run directory exists; :func:`method_config_help` is
``kdkit train --plugin NAME --help-config``.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from kdkit.errors import ConfigError, KdkitError
from kdkit.paths import user_path

__all__ = [
    "ConfigKey",
    "base_config",
    "train_section",
    "plain_defaults",
    "inherit_declarations",
    "config_rows",
    "format_config_help",
    "resolve_method_config",
    "method_config_help",
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


# --- declared keys ------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class ConfigKey:
    """A declared config key: its default, a one-line help, and what values it allows.

    :param default: the value when neither ``--config`` nor ``--set`` gives one.
    :param help: one line, shown by ``kdkit train --plugin NAME --help-config``.
    :param type: ``bool``, ``int``, ``float`` (accepts ints), ``str``, ``list`` or ``dict`` (an
        open mapping), or a tuple of them; inferred from ``default`` when omitted.  A ``null``
        default without ``type`` accepts anything (a declaration should say what it takes).
    :param choices: the allowed values.
    :param range: an interval such as ``"[0, 1]"``, ``"(0, inf)"`` or ``"[1, inf)"``.
    :param pattern: a regular expression a string value must match in full.
    :param items: the type of a list's items; for a list, ``choices``, ``range`` and ``pattern``
        constrain its items.
    :param nullable: ``null`` is allowed too (implied by a ``null`` default).
    :param file: a value other than ``null`` / ``""`` names an existing file (a weights file, a word
        list); checked when a run's config is resolved, so a missing file stops it before anything trains.
    """

    default: Any
    help: str = ""
    type: Any = None
    choices: tuple | None = None
    range: str | None = None
    pattern: str | None = None
    items: Any = None
    nullable: bool = False
    file: bool = False

    def __post_init__(self):
        if self.type is None and self.default is not None:
            object.__setattr__(self, "type", type(self.default) if not isinstance(self.default, tuple) else list)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is None:
            object.__setattr__(self, "nullable", True)
        if self.range is not None:
            _parse_range(self.range)  # a malformed declaration fails when it is made

    def with_default(self, default) -> "ConfigKey":
        """The same declaration with another default (a method's own default for an engine key)."""
        return dataclasses.replace(self, default=default)

    def describe(self) -> str:
        """What the key allows, in a few words: ``float in (0, inf)``, ``sgd|adam|adamw``, ``int or null``."""
        if self.type is list and self.items is not None:
            text = f"list of {_allowed(self.items, self.choices, self.range, self.pattern)}"
        else:
            text = _allowed(self.type, self.choices, self.range, self.pattern)
        if self.file:
            text = "path of an existing file"
        return f"{text} or null" if self.nullable and text != "any" else text

    def check(self, value, where: str):
        """``value`` if allowed (ints promoted to floats), else a one-line :class:`ConfigError`."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"config key {where}: expected {self.describe()}, got null")
        if self.type is None:
            return value
        if self.type is list or (isinstance(self.type, tuple) and list in self.type and isinstance(value, list)):
            value = _check_type(value, list, where, self.describe())
            if self.items is None:
                return value
            item = _allowed(self.items, self.choices, self.range, self.pattern)
            return [self._check_one(_check_type(v, self.items, f"{where}.{i}", item), f"{where}.{i}", item)
                    for i, v in enumerate(value)]
        return self._check_one(_check_type(value, self.type, where, self.describe()), where, self.describe())

    def _check_one(self, value, where: str, allowed: str):
        if ((self.choices is not None and value not in self.choices)
                or (self.range is not None and isinstance(value, (int, float)) and not _in_range(value, self.range))
                or (self.pattern is not None and isinstance(value, str) and not re.fullmatch(self.pattern, value))):
            if self.choices is not None:
                allowed = f"one of {', '.join(map(str, self.choices))}"
            raise ConfigError(f"config key {where}: expected {allowed}, got {value!r}")
        return value


def _parse_range(text: str) -> tuple[float, float, bool, bool]:
    m = _RANGE_RE.match(text)
    try:
        low, high = float(m.group(2)), float(m.group(3))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise ValueError(f"ConfigKey range {text!r}: expected an interval such as '[0, 1]' or '(0, inf)'") from None
    return low, high, m.group(1) == "[", m.group(4) == "]"  # type: ignore[union-attr]


def _in_range(value: float, text: str) -> bool:
    low, high, closed_low, closed_high = _parse_range(text)
    return (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)


def _allowed(kind, choices, range_, pattern) -> str:
    if choices is not None:
        return "|".join(map(str, choices))
    if kind is None:
        return "any"
    names = [_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in (kind if isinstance(kind, tuple) else (kind,))]
    text = " or ".join(names)
    if range_ is not None:
        text += f" in {range_}"
    if pattern is not None:
        text += f" matching {pattern}"
    return text


def _check_type(value, kind, where: str, allowed: str):
    """``value`` if it has type ``kind`` (a type or tuple of types), ints/float strings promoted to float."""
    for k in kind if isinstance(kind, tuple) else (kind,):
        if k is bool and isinstance(value, bool):
            return value
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k is float:
            if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        if k is str and isinstance(value, str):
            return value
        if k is list and isinstance(value, (list, tuple)):
            return list(value)
        if k is dict and isinstance(value, dict):
            return value
        if k not in (bool, int, float, str, list, dict) and isinstance(value, k):
            return value
    raise ConfigError(f"config key {where}: expected {allowed}, got {_tname(value)} ({value!r})")


def plain_defaults(tree: Any) -> Any:
    """A config tree with every :class:`ConfigKey` replaced by its default."""
    if isinstance(tree, ConfigKey):
        return copy.deepcopy(tree.default)
    if isinstance(tree, dict):
        return {k: plain_defaults(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [plain_defaults(v) for v in tree]
    return copy.deepcopy(tree)


def inherit_declarations(tree: Any, declared: Any) -> Any:
    """``tree`` with each plain value at a path that ``declared`` declares replaced by that
    declaration, the value becoming its default: a method that writes ``cfg["seed"] = 1`` keeps the
    engine's type, range and help for ``seed`` (the engine keys are declared once, in :func:`base_config`)."""
    if isinstance(tree, dict) and isinstance(declared, dict):
        return {k: inherit_declarations(v, declared[k]) if k in declared else v for k, v in tree.items()}
    if isinstance(declared, ConfigKey) and not isinstance(tree, (ConfigKey, dict)):
        return declared.with_default(tree)
    return tree


# --- the engine's keys ---------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "multistep")
SELECT_ON = ("val", "test", "last")


def base_config() -> dict:
    """The keys every method shares, declared once (:class:`ConfigKey`).  A method starts from this
    and adds its own; a plain value it writes over one of these keys becomes that key's default
    (see :func:`inherit_declarations`)."""
    return {
        "method": ConfigKey("", "the method's name (filled in from --plugin)", type=str),
        "seed": ConfigKey(0, "seed of every random stream (data order, initialisation, augmentation)",
                          range="[0, inf)"),
        "device": ConfigKey("auto", "auto (cuda when available), cpu, cuda or cuda:N",
                            pattern=r"auto|cpu|cuda(:\d+)?"),
        "deterministic": ConfigKey(True, "torch.use_deterministic_algorithms where possible"),
        "data": {
            "name": ConfigKey("shapes", "dataset: a name of the datasets registry (kdkit plugins lists them)"),
            "root": ConfigKey(None, "directory of the dataset's files (null: the dataset's default)", type=str),
            "val_fraction": ConfigKey(0.1, "share of the training split held out to select checkpoints",
                                      range="[0, 1)"),
            "num_workers": ConfigKey(0, "DataLoader worker processes", range="[0, inf)"),
        },
        "train": train_section(),
        "checkpoint": {
            "select_on": ConfigKey("val", "split that picks the best epoch: val (held out from training), "
                                          "test (an optimistic, explicit opt-in) or last", choices=SELECT_ON),
            "save_best": ConfigKey(True, "write the best epoch's weights to checkpoints/<stage>/best.pt"),
        },
        "logging": {
            "progress": ConfigKey(True, "tqdm progress bars (rank 0, only when stderr is a terminal)"),
            "log_every": ConfigKey(0, "print a line every N optimiser steps (0: once per epoch)", range="[0, inf)"),
            "tensorboard": ConfigKey(False, "write TensorBoard event files to <run>/tensorboard "
                                            "(the kdkit_tensorboard plugin)"),
        },
    }


_TRAIN_KEYS = {
    "epochs": ConfigKey(10, "training epochs of the stage", range="[1, inf)"),
    "batch_size": ConfigKey(64, "training batch size (global: split across DDP processes)", range="[1, inf)"),
    "eval_batch_size": ConfigKey(256, "batch size of evaluation and of teacher-output caching", range="[1, inf)"),
    "optimizer": ConfigKey("sgd", "optimiser", choices=OPTIMIZERS),
    "lr": ConfigKey(0.05, "peak learning rate", range="(0, inf)"),
    "momentum": ConfigKey(0.9, "SGD momentum", range="[0, 1)"),
    "nesterov": ConfigKey(False, "Nesterov momentum (SGD)"),
    "weight_decay": ConfigKey(5e-4, "weight decay (L2 for SGD/Adam, decoupled for AdamW)", range="[0, inf)"),
    "scheduler": ConfigKey("cosine", "learning-rate schedule, stepped every optimiser step", choices=SCHEDULERS),
    "milestones": ConfigKey([], "epochs at which multistep multiplies the rate by gamma", items=int,
                            range="[0, inf)"),
    "step_size": ConfigKey(30, "epochs between decays of the step schedule", range="[1, inf)"),
    "gamma": ConfigKey(0.1, "decay factor of the step and multistep schedules", range="(0, 1]"),
    "warmup_epochs": ConfigKey(0.0, "linear warm-up length in epochs (fractions allowed)", range="[0, inf)"),
    "grad_clip": ConfigKey(None, "clip the gradient norm to this value (null: no clipping)", type=float,
                           range="(0, inf)"),
    "amp": ConfigKey(True, "autocast + GradScaler on CUDA (ignored on CPU)"),
}


def train_section(**overrides) -> dict:
    """The optimisation keys of one stage, with ``overrides`` as their defaults; ``train`` and every
    extra stage of a method (``teacher_train``, ...) use it."""
    unknown = sorted(set(overrides) - set(_TRAIN_KEYS))
    if unknown:
        raise TypeError(f"train_section(): unknown key {unknown[0]!r}; valid: {', '.join(_TRAIN_KEYS)}")
    return {k: key.with_default(overrides[k]) if k in overrides else key for k, key in _TRAIN_KEYS.items()}


# --- YAML ---------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file with ``yaml.safe_load``; errors are one-line :class:`ConfigError`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    data = _parse_yaml(text, f"invalid YAML in {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level, got {type(data).__name__}")
    return data


#: Values a config document may expand to; far above any real config, far below what aliases of
#: aliases ("billion laughs") or a self-referencing alias expand to when the config is walked.
MAX_YAML_VALUES = 100_000


def _parse_yaml(text: str, what: str, with_position: bool = True):
    """``yaml.safe_load(text)``; malformed or pathological YAML is a one-line :class:`ConfigError`
    starting with ``what``."""
    try:
        data = yaml.safe_load(io.StringIO(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None and with_position else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what}{at}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{what}: collections nested too deeply") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as `2020-13-45`, `!!int x`, a 5000-digit int
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what}: a value cannot be read ({problem})") from None
    _check_expanded_size(data, what)
    return data


def _check_expanded_size(data, what: str) -> None:
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{what}: the document expands to more than {MAX_YAML_VALUES} values "
                              "(aliases of aliases, or an alias inside itself)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


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
    if not key or not key.isprintable() or any(not part for part in key.split(".")):  # no line breaks in messages
        raise ConfigError(f"--set: invalid key {key!r} in {item!r}")
    value = _parse_yaml(raw, f"--set {key}: value {raw!r} is not valid YAML", with_position=False) if raw.strip() \
        else None
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
            raise ConfigError(f"config key {where}: expected mapping, got {_tname(value)} ({value!r})")
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
        value = _check_type(value, list, where, "list")
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
    """The keyword options of ``factory``: from its signature, typed by defaults and simple
    annotations; a ``config_keys`` attribute (option -> :class:`ConfigKey`) declares options exactly
    (a model's ``pretrained`` is an existing file)."""
    declared = getattr(factory, "config_keys", None) or {}
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
            default = _plain(param.default) if isinstance(param.default, (list, tuple, dict, Path)) else (
                param.default if param.default is None or isinstance(param.default, (bool, int, float, str)) else None)
            kinds, nullable = _annotation_types(param.annotation)
            # the annotation types the option when it says more than the default (`warmup: float = 20`)
            out[pname] = ConfigKey(default, type=kinds[0] if len(kinds) == 1 else kinds, nullable=nullable) if (
                kinds and (default is None or nullable or type(default) not in kinds)) else default
    out.update({name: key for name, key in declared.items() if name in out or "*" in out})
    return out


_ANNOTATION_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "Path": str, "dict": dict, "list": list}


def _annotation_types(annotation) -> tuple[tuple, bool]:
    """``(config types, null allowed)`` of a simple annotation such as ``str | None`` (``((), False)``:
    not a simple one).  It types a component option whose default is ``None``, which would otherwise
    take anything, and lets ``null`` through where the annotation allows it."""
    if annotation is inspect.Parameter.empty:
        return (), False
    names = [n.strip().split("[")[0] for n in str(annotation).replace("typing.", "").split("|")]
    if any(n not in _ANNOTATION_TYPES and n != "None" for n in names):
        return (), False
    return tuple(_ANNOTATION_TYPES[n] for n in names if n != "None"), "None" in names


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


# --- --help-config ------------------------------------------------------------------------

def config_rows(defaults: Mapping, config_file: str | Path | None = None, sets: Iterable[str] = (),
                component_sections: Mapping[str, str] | None = None,
                registry_lookup=None) -> list[tuple[str, str, str, str]]:
    """``(dotted key, what it allows, value, help)`` for every key of the resolved config: the
    declared keys, then the options of each chosen component (help from the factory's docstring
    ``:param NAME:`` lines).  Values are those of the config (its defaults unless ``--config`` /
    ``--set`` changed them)."""
    sections = dict(COMPONENT_SECTIONS) if component_sections is None else dict(component_sections)
    schema, config = _resolve(defaults, config_file, sets, sections, registry_lookup, check_files=False)
    rows: list[tuple[str, str, str, str]] = []

    component_options = _component_extra(sections, registry_lookup)

    def options(declared: dict, section: dict, path: str) -> None:
        kind = _section_kind(path, sections)
        own = component_options(path, section) or {}
        for key in (k for k in section if k not in declared):  # the chosen component's own options
            value = section[key]
            allowed = own[key].describe() if isinstance(own.get(key), ConfigKey) else _allowed(
                type(value) if value is not None else None, None, None, None)
            rows.append((f"{path}.{key}", allowed, _show(value),
                         _option_help(kind, section.get("name"), key, registry_lookup)))

    def walk(declared, value, path: str, section: dict | None = None) -> None:
        if isinstance(declared, dict) and declared and isinstance(value, dict):
            for key, sub in declared.items():
                walk(sub, value.get(key), f"{path}.{key}" if path else str(key), value)
            options(declared, value, path)
        elif isinstance(declared, list) and declared and isinstance(declared[0], dict):
            walk(declared[0], plain_defaults(declared[0]), f"{path}[]")  # each item's keys, once
            for i, item in enumerate(value or []):
                if isinstance(item, dict):
                    options(declared[0], item, f"{path}.{i}")
        elif isinstance(declared, ConfigKey):
            rows.append((path, declared.describe(), _show(value), declared.help))
        else:  # a plain default (its type is the declaration): a component's option the method set
            parent, _, key = path.rpartition(".")
            kind = None if declared is None else dict if isinstance(declared, dict) else type(declared)
            name = (section or {}).get("name")
            own = (component_options(parent, section) or {}).get(key) if section else None
            allowed = own.describe() if isinstance(own, ConfigKey) else _allowed(kind, None, None, None)
            rows.append((path, allowed, _show(value),
                         _option_help(_section_kind(parent, sections), name, key, registry_lookup)))

    walk(schema, config, "")
    return rows


def format_config_help(title: str, rows: list[tuple[str, str, str, str]]) -> str:
    """``rows`` of :func:`config_rows` as an aligned table under ``title``."""
    header = ("key", "allowed", "value", "help")
    widths = [min(max(len(r[i]) for r in [header, *rows]), cap) for i, cap in enumerate((44, 34, 24))]
    lines = [title, ""]
    for row in [header, *rows]:
        cells = [cell.ljust(w) if len(cell) <= w else cell for cell, w in zip(row[:3], widths)]
        lines.append("  ".join(cells + [row[3]]).rstrip())
    return "\n".join(lines) + "\n"


def _show(value) -> str:
    if isinstance(value, str):
        return value if value and value == value.strip() else json.dumps(value)
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=1 << 16).strip().removesuffix("\n...")\
        .removesuffix("...").strip()


_PARAM_RE = re.compile(r":param\s+(\w+):\s*(.+)")


def _option_help(kind: str | None, name, option: str, registry_lookup=None) -> str:
    """The first line of ``:param OPTION:`` in the docstring of the component's factory."""
    if kind is None or not isinstance(name, str):
        return ""
    try:
        registry = registry_lookup(kind) if registry_lookup is not None else None
        factory = registry.get(name).factory if registry is not None else None
    except Exception:  # noqa: BLE001 - help text only
        return ""
    docs = "\n".join(filter(None, [getattr(factory, "__doc__", None),
                                   factory.__init__.__doc__ if inspect.isclass(factory) else None]))
    for found, text in _PARAM_RE.findall(docs or ""):
        if found == option:
            return text.strip()
    return f"option of {kind[:-1] if kind.endswith('s') else kind} {name!r}"


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


# --- a method's config --------------------------------------------------------------------

def _method_declarations(method_name: str, manager) -> tuple[Any, dict, dict]:
    """``(method component, declared keys, component sections)`` of a method registered with ``manager``."""
    if not isinstance(method_name, str) or not method_name:  # e.g. `method: [kd]` in a run's config.yaml
        raise ConfigError(f"config key method: expected a method name, got {_tname(method_name)} ({method_name!r})")
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


def resolve_method_config(method_name: str, config_file=None, sets: Iterable[str] = (), manager=None, *,
                          check_files: bool = True) -> dict:
    """The validated config of ``kdkit train --plugin METHOD_NAME [--config FILE] [--set ...]``:
    every key checked against its declaration (files named by :attr:`ConfigKey.file` keys exist
    unless ``check_files=False``), then the method's own ``check_config(config, registry)`` rules
    — all before a run directory exists.  The method is chosen by ``METHOD_NAME`` (``--plugin``):
    a ``method`` key naming another one is an error."""
    manager = _plugin_manager(manager)
    component, declared, sections = _method_declarations(method_name, manager)
    config = resolve_config(declared, config_file, sets, component_sections=sections,
                            registry_lookup=manager.registry, check_files=check_files)
    if config["method"] not in ("", method_name):
        raise ConfigError(f"config key method is {config['method']!r} but the method run is {method_name!r}: "
                          f"choose the method with --plugin NAME (and drop the method key or make it match)")
    config["method"] = method_name
    check = getattr(component.factory, "check_config", None)
    if callable(check):
        check(config, manager.registry)
    return config


def method_config_help(method_name: str, config_file=None, sets: Iterable[str] = (), manager=None) -> str:
    """The text of ``kdkit train --plugin METHOD_NAME --help-config``: every key the method takes
    with what it allows, its value and a one-line help (after ``--config`` / ``--set``, so that the
    options of the chosen dataset, student and teachers are listed)."""
    manager = _plugin_manager(manager)
    component, declared, sections = _method_declarations(method_name, manager)
    rows = config_rows(declared, config_file, sets, component_sections=sections, registry_lookup=manager.registry)
    title = (f"kdkit train --plugin {method_name}: {component.description or 'a distillation method'}\n"
             "Config keys; set them with --set KEY=VALUE (dotted key, YAML value) or a --config FILE.")
    return format_config_help(title, rows)
