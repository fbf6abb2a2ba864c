"""Declared keys: :class:`ConfigKey` and the one set of value checks every config value and every
component option goes through (types, choices, ranges, patterns, files).

This module imports neither YAML nor torch: registrations (``register(..., options={...})``) declare
their options with it while ``kdkit plugins`` stays cheap.

Why not pydantic or jsonargparse (both judged for issue 19): a kdkit config's shape depends on the
components it chooses — ``data.name=imagefolder`` brings that dataset's options and drops the default
dataset's, each teacher in a list brings its own — so a pydantic model would have to be built anew
for every choice of every section, and its multi-line ``ValidationError`` reworded into kdkit's
one-line, dotted-path errors (``config key train.lr: expected float in (0, inf), got -1.0``).
jsonargparse derives options from signatures and docstrings, which is the scraping this declaration
replaced, and brings its own CLI.  A declaration here is a small frozen dataclass; the engine's part
of a resolved config is read through frozen typed views (:mod:`kdkit.config.settings`).
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from kdkit.errors import ConfigError

__all__ = ["ConfigKey", "plain_defaults", "inherit_declarations", "check_type", "describe_allowed", "type_name"]

_RANGE_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class ConfigKey:
    """A declared config key: its default, a one-line help, and what values it allows.

    :param default: the value when neither ``--config`` nor ``--set`` gives one.
    :param help: one line, shown by ``kdkit train --method NAME --help-config``.
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
            text = f"list of {describe_allowed(self.items, self.choices, self.range, self.pattern)}"
        else:
            text = describe_allowed(self.type, self.choices, self.range, self.pattern)
        if self.file:
            text = "path of a local file"
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
            value = check_type(value, list, where, self.describe())
            if self.items is None:
                return value
            item = describe_allowed(self.items, self.choices, self.range, self.pattern)
            return [self._check_one(check_type(v, self.items, f"{where}.{i}", item), f"{where}.{i}", item)
                    for i, v in enumerate(value)]
        return self._check_one(check_type(value, self.type, where, self.describe()), where, self.describe())

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


def describe_allowed(kind, choices, range_, pattern) -> str:
    if choices is not None:
        return "|".join(map(str, choices))
    if kind is None:
        return "any"
    names = [TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in (kind if isinstance(kind, tuple) else (kind,))]
    text = " or ".join(names)
    if range_ is not None:
        text += f" in {range_}"
    if pattern is not None:
        text += f" matching {pattern}"
    return text


def check_type(value, kind, where: str, allowed: str):
    """``value`` if it has type ``kind`` (a type or tuple of types), ints/float strings promoted to float."""
    for k in kind if isinstance(kind, tuple) else (kind,):
        if k is bool and isinstance(value, bool):
            return value
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k is float:
            if isinstance(value, str) and FLOAT_RE.match(value.strip()):
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    return float(value)
                except OverflowError:  # an int beyond float's range (a 400-digit literal)
                    raise ConfigError(f"config key {where}: an integer of {value.bit_length()} bits is too large "
                                      f"for a float (at most about 1.8e308); expected {allowed}") from None
        if k is str and isinstance(value, str):
            return value
        if k is list and isinstance(value, (list, tuple)):
            return list(value)
        if k is dict and isinstance(value, dict):
            return value
        if k not in (bool, int, float, str, list, dict) and isinstance(value, k):
            return value
    raise ConfigError(f"config key {where}: expected {allowed}, got {type_name(value)} ({value!r})")


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


FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}


def type_name(value) -> str:
    if value is None:
        return "null"
    return TYPE_NAMES.get(type(value), type(value).__name__)
