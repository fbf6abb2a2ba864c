"""How two resolved configs differ: what ``--resume`` reports for an edited ``config.yaml`` and what a
sweep reports for a kept run made with another config (:func:`config_changes`), shortened for a
one-line message (:func:`summarize`)."""
from __future__ import annotations

import json
from typing import Any

__all__ = ["RESUME_FREE_KEYS", "config_changes", "summarize"]

#: config keys that may change between a run and its resume without changing what it computes
RESUME_FREE_KEYS = ("device", "logging", "data.root")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(started: dict, now: dict) -> list[str]:
    """Dotted keys whose values differ (``"train.epochs (2 -> 3)"``), keys in :data:`RESUME_FREE_KEYS` aside."""
    def plain(config):
        return _flat(json.loads(json.dumps(config, sort_keys=True, default=str)))

    old, new = plain(started), plain(now)
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS):
            continue
        if key not in old or key not in new or old[key] != new[key]:
            a, b = (repr(side[key]) if key in side else "unset" for side in (old, new))
            shown = f"{key} ({a} -> {b})"
            changes.append(shown if len(shown) <= 80 else key)
    return changes


def summarize(items: list[str], limit: int = 4) -> str:
    """The first ``limit`` of ``items`` (changes, file names) and how many more: ``"a, b and 3 more"``."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
