"""What choosing another component brought with it: one log line per switched component section.

``--set data.name=imagefolder`` on a method whose default dataset is ``shapes`` drops shapes'
options and brings imagefolder's own defaults (``augment: weak``, ``image_size: ...``); the config is
right, but a user who wrote one key should see what else changed.  :func:`component_switches`
compares the resolved config with the method's declared defaults and says, per switched section,
which options the new component brought and which the old one's were dropped.
"""
from __future__ import annotations

from typing import Any, Mapping

from kdkit.config.keys import plain_defaults
from kdkit.config.resolve import _method_declarations, _plugin_manager, get_path
from kdkit.config.schema import ENGINE_KEYS

__all__ = ["component_switches", "method_component_switches"]


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(path: str, kind: str, default: Mapping, chosen: Mapping) -> str | None:
    old, new = default.get("name"), chosen.get("name")  # a section may declare no name (open)
    if not isinstance(old, str) or not isinstance(new, str) or old == new:
        return None
    engine = set(ENGINE_KEYS.get(kind, {"name"}))
    brought = [f"{k}={_shown(v)}" + (f" (was {_shown(default[k])})" if k in default and default[k] != v else "")
               for k, v in chosen.items() if k not in engine]
    dropped = [k for k in default if k not in engine and k not in chosen]
    line = f"{path}: {new} instead of {old}"
    line += f"; its options: {', '.join(brought)}" if brought else "; it has no options"
    if dropped:
        line += f"; dropped with {old}: {', '.join(dropped)}"
    return line


def component_switches(declared: Mapping, config: Mapping, sections: Mapping[str, str]) -> list[str]:
    """One line per component section of ``config`` whose component differs from the declared
    default's (``declared``: the method's declaration tree; ``sections``: path pattern -> registry
    kind, as :data:`kdkit.config.schema.COMPONENT_SECTIONS`)."""
    defaults = plain_defaults(dict(declared))
    lines: list[str] = []
    for pattern, kind in sections.items():
        base = pattern[:-2] if pattern.endswith("[]") else pattern
        default, chosen = get_path(defaults, base), get_path(config, base)
        if pattern.endswith("[]"):
            if not (isinstance(default, list) and default and isinstance(default[0], Mapping)
                    and isinstance(chosen, (list, tuple))):
                continue
            for i, item in enumerate(chosen):
                template = default[i] if i < len(default) and isinstance(default[i], Mapping) else default[0]
                if isinstance(item, Mapping):
                    lines.append(_describe(f"{base}.{i}", kind, template, item))
        elif isinstance(default, Mapping) and isinstance(chosen, Mapping):
            lines.append(_describe(base, kind, default, chosen))
    return [line for line in lines if line]


def method_component_switches(method_name: str, config: Mapping, manager=None) -> list[str]:
    """:func:`component_switches` of a resolved config of method ``method_name``."""
    _, declared, sections = _method_declarations(method_name, _plugin_manager(manager))
    return component_switches(declared, config, sections)
