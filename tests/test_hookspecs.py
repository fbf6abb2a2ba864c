"""Meta-tests (after datasette's): every hook is documented with its exact arguments and tested.

Adding a hook to kdkit/hookspecs.py without a docstring that documents each argument, without
an entry in docs/writing-plugins.md, or without a test under tests/ fails here.

To regenerate the hook reference in the docs after changing a hook:
``KDKIT_UPDATE_DOCS=1 pytest tests/test_hookspecs.py`` (or paste ``kdkit plugins --hooks``).
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

from kdkit import hookspecs
from kdkit.commands.plugins import HOOKS_END, HOOKS_START, hook_reference_markdown, hook_specs
from kdkit.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "writing-plugins.md"
TESTS = ROOT / "tests"
SPECS = hook_specs()


def test_hookspecs_found():
    names = [name for name, _, _ in SPECS]
    assert len(names) == len(set(names)) >= 7
    assert all(name.startswith("kdkit_") for name in names)
    # every hook function in the module carries the spec marker (none was forgotten)
    declared = [n for n in vars(hookspecs) if n.startswith("kdkit_")]
    assert sorted(declared) == sorted(names)


def test_every_component_kind_has_a_registration_hook():
    names = {name for name, _, _ in SPECS}
    assert {f"kdkit_register_{kind}" for kind in KINDS} <= names
    for name, args, _ in SPECS:
        if name.startswith("kdkit_register_"):
            assert args == ["register"], name


@pytest.mark.parametrize("name, args, doc", SPECS, ids=[s[0] for s in SPECS])
def test_hook_docstring_documents_every_argument(name, args, doc):
    assert doc.strip(), f"{name} has no docstring"
    documented = re.findall(r":param (\w+):\s*\S", doc)
    assert sorted(documented) == sorted(args), (
        f"{name}: arguments {args} but docstring documents {documented} (use ':param NAME: text')")


def test_docs_hook_reference_is_current():
    text = DOCS.read_text(encoding="utf-8")
    expected = hook_reference_markdown()
    start, end = text.find(HOOKS_START), text.find(HOOKS_END)
    assert start != -1 and end != -1, f"{DOCS} lacks the generated hook reference markers"
    current = text[start:end + len(HOOKS_END)] + "\n"
    if current != expected and os.environ.get("KDKIT_UPDATE_DOCS"):
        DOCS.write_text(text[:start] + expected + text[end + len(HOOKS_END) + 1:], encoding="utf-8")
        return
    assert current == expected, (
        "docs/writing-plugins.md hook reference is out of date: run "
        "KDKIT_UPDATE_DOCS=1 pytest tests/test_hookspecs.py")


@pytest.mark.parametrize("name, args, doc", SPECS, ids=[s[0] for s in SPECS])
def test_hook_is_documented_in_docs(name, args, doc):
    text = DOCS.read_text(encoding="utf-8")
    assert f"### `{name}({', '.join(args)})`" in text, f"{name} is not documented in {DOCS.name}"
    section = text.split(f"### `{name}(", 1)[1].split("\n### ", 1)[0]
    for arg in args:
        assert f"- `{arg}`:" in section, f"argument {arg!r} of {name} is not documented"


@functools.lru_cache(maxsize=1)
def _test_sources() -> str:
    this = Path(__file__).resolve()
    return "\n".join(path.read_text(encoding="utf-8", errors="replace")
                     for path in sorted(TESTS.rglob("*.py")) if path.resolve() != this)


@pytest.mark.parametrize("name", [s[0] for s in SPECS])
def test_hook_has_a_test(name):
    found = re.search(rf"\b{name}\b", _test_sources()) is not None
    assert found, (
        f"no test under tests/ mentions {name}: add one that exercises the hook")
