"""``kdkit train --method NAME --help-config``: every key of a method's resolved config, with what it
allows, its value and its one-line help, all read from the declarations (:class:`ConfigKey`) — the
engine's, the method's and those of each chosen component."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from kdkit.config.files import plain_value
from kdkit.config.keys import ConfigKey, describe_allowed, plain_defaults
from kdkit.config.resolve import (_component_extra, _method_declarations, _plugin_manager, _resolve,
                                  _section_kind)
from kdkit.config.schema import COMPONENT_SECTIONS

__all__ = ["config_rows", "format_config_help", "method_config_help"]


def config_rows(defaults: Mapping, config_file: str | Path | None = None, sets: Iterable[str] = (),
                component_sections: Mapping[str, str] | None = None,
                registry_lookup=None) -> list[tuple[str, str, str, str]]:
    """``(dotted key, what it allows, value, help)`` for every key of the resolved config: the
    declared keys, then the options of each chosen component (as its registration declared them).
    Values are those of the config (its defaults unless ``--config`` / ``--set`` changed them)."""
    sections = dict(COMPONENT_SECTIONS) if component_sections is None else dict(component_sections)
    schema, config = _resolve(defaults, config_file, sets, sections, registry_lookup, check_files=False)
    rows: list[tuple[str, str, str, str]] = []
    component_options = _component_extra(sections, registry_lookup)

    def option_row(path: str, key: str, value, section: dict, plain_type) -> tuple[str, str, str, str]:
        """A component option's row: its declaration when the component declares ``key``."""
        declared = (component_options(path, section) or {}).get(key)
        if isinstance(declared, ConfigKey):
            return f"{path}.{key}", declared.describe(), _show(value), declared.help
        kind = _section_kind(path, sections)
        owner = f"{kind[:-1] if kind.endswith('s') else kind} {section.get('name')!r}" if kind else "the section"
        return f"{path}.{key}", describe_allowed(plain_type, None, None, None), _show(value), f"option of {owner}"

    def options(declared: dict, section: dict, path: str) -> None:
        for key in (k for k in section if k not in declared):  # the chosen component's own options
            value = section[key]
            rows.append(option_row(path, key, value, section, type(value) if value is not None else None))

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
            plain_type = None if declared is None else dict if isinstance(declared, dict) else type(declared)
            rows.append(option_row(parent, key, value, section or {}, plain_type))

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
    return yaml.safe_dump(plain_value(value), default_flow_style=True, width=1 << 16).strip()\
        .removesuffix("\n...").removesuffix("...").strip()


def method_config_help(method_name: str, config_file=None, sets: Iterable[str] = (), manager=None) -> str:
    """The text of ``kdkit train --method METHOD_NAME --help-config``: every key the method takes
    with what it allows, its value and a one-line help (after ``--config`` / ``--set``, so that the
    options of the chosen dataset, student and teachers are listed)."""
    manager = _plugin_manager(manager)
    component, declared, sections = _method_declarations(method_name, manager)
    rows = config_rows(declared, config_file, sets, component_sections=sections, registry_lookup=manager.registry)
    title = (f"kdkit train --method {method_name}: {component.description or 'a distillation method'}\n"
             "Config keys; set them with --set KEY=VALUE (dotted key, YAML value) or a --config FILE.")
    return format_config_help(title, rows)
