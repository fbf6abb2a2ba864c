"""One source of defaults: code reads a resolved config by indexing, never with a fallback of its own.

A resolved config (:func:`kdkit.config.resolve_method_config`) holds every declared key, its default
filled in and its value checked, so ``cfg.get("lr", 0.1)`` can only disagree with the declaration,
silently.  This test scans the sources of ``kdkit/`` and ``plugins/`` with :mod:`ast` for the three
spellings of such a fallback on a config-like receiver (a name or attribute called ``cfg``, ``config``,
``dcfg``, ``tcfg``, ``section``, ``relax``, ``tx``, ``soda``, ``distill``, ``dist`` or ending in
``_cfg`` / ``_config`` / ``_section``, also through subscripts such as ``cfg["soda"]``):

* ``cfg.get("key", default)``;
* ``cfg.get("key") or default``;
* ``get_path(cfg, "a.b", default)`` (any receiver: ``get_path`` walks config trees).

A key that may be missing is declared (a ``ConfigKey`` with its default) and then indexed.
:data:`ALLOWED` lists the few legitimate matches (dicts that are not kdkit configs), each with its
reason.  An entry that no longer matches anything fails the test, so the list cannot outlive its reason.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("kdkit", "plugins")

CONFIG_NAME = re.compile(r"^(cfg|config|dcfg|tcfg|section|relax|tx|soda|distill|dist)$|(_cfg|_config|_section)$")

#: (path, the call as ``ast.unparse`` writes it) -> why it is not a read of a kdkit config
ALLOWED = {
    ("kdkit/clip.py", "cfg.get('quick_gelu', False)"):
        "open_clip's model config (its JSON schema, where quick_gelu is optional), not a kdkit config",
    ("kdkit/clip.py", "cfg['text_cfg'].get('context_length', 77)"):
        "open_clip's model config: a text tower without context_length has open_clip's default 77",
}

#: known fallbacks in modules that another change of issue 19 is rewriting; remove each entry with its fallback


def _config_like(node: ast.AST) -> bool:
    """Is ``node`` (the receiver of ``.get``) a config, by its name or the attribute it reads?"""
    while True:
        if isinstance(node, ast.Name):
            return bool(CONFIG_NAME.search(node.id))
        if isinstance(node, ast.Attribute):
            if CONFIG_NAME.search(node.attr):
                return True
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return False


def _config_get(node: ast.AST) -> ast.Call | None:
    """``node`` when it is ``<config>.get("key", ...)``."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and _config_like(node.func.value)):
        return node
    return None


def fallbacks(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every config read with a default of its own in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        call = _config_get(node)
        if call is not None and len(call.args) + len(call.keywords) >= 2:
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and _config_get(node.values[0]) is not None
              and len(node.values[0].args) == 1):
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "get_path"
              and len(node.args) + len(node.keywords) >= 3):
            found.append((node.lineno, ast.unparse(node)))
    return found


def _scan() -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, code in fallbacks(path.read_text(encoding="utf-8")):
                out.setdefault((rel, code), []).append(line)
    return out


@pytest.fixture(scope="module")
def found():
    return _scan()


def test_no_config_read_has_a_fallback_default(found):
    bad = [f"{path}:{lines[0]}: {code}" for (path, code), lines in sorted(found.items())
           if (path, code) not in ALLOWED]
    assert not bad, ("a resolved config holds every declared key: index it (cfg['key']), and declare a key that "
                     "may be missing (a ConfigKey with its default) instead of a fallback in the code:\n  "
                     + "\n  ".join(bad))


def test_every_exception_still_matches(found):
    stale = [f"{path}: {code}" for path, code in ALLOWED if (path, code) not in found]
    assert not stale, f"ALLOWED in {Path(__file__).name} lists fallbacks that are gone; remove: {stale}"


def test_the_scan_catches_each_spelling():
    sample = '''
cfg.get("lr", 0.1)
ctx.config["train"].get("lr", default=0.1)
relax.get("cache_dir") or "/tmp"
get_path(config, "checkpoint.select_on", "val")
soda_section.get("bits", [16])
cfg["soda"]["bits"]                       # indexing: fine
cfg.get("pretrained")                     # no default of its own: fine
summary.get("teachers", {})               # not a config: fine
registry.get(cfg["name"])                 # not a string key: fine
'''
    assert [line for line, _ in fallbacks(sample)] == [2, 3, 4, 5, 6]
