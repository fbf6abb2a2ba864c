"""MkDocs hook: the API reference pages list exactly the public API, generated at build time.

A page line ``<!-- api-reference: kdkit.distill -->`` becomes one section per name of that module's
``__all__``, in order, each rendered by mkdocstrings from the object's docstring where it is
defined (``kdkit.ConfigKey`` is documented from ``kdkit.config``'s source, wherever it moves).
kdkit's public names are imported lazily (PEP 562), which static analysis cannot follow; importing
the module here and asking each object where it lives keeps the pages complete with no list to
maintain.  ``kdkit.__all__``, ``kdkit.distill.__all__`` and ``kdkit.ops.__all__`` are the public API
(``tests/test_public_api.py``).

Sphinx roles (``:class:`Foo```, ``:func:``...) are plain text to mkdocstrings: the role prefix is
dropped from the HTML, leaving the name as code.  Every docstring warning fails ``mkdocs build
--strict`` (one field documents one name: griffe's Sphinx parser cannot split ``:param a / b:``).
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys

MARKER = re.compile(r"^<!-- api-reference: ([\w.]+) -->[ \t]*$", re.M)
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):(?=<code>)")


def _where(module_name: str, name: str, obj) -> str:
    """The dotted path of the object's definition, for mkdocstrings' ``:::``."""
    if inspect.ismodule(obj):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    # a value (a marker object, a tuple): the kdkit module that binds it, other than the re-exporter
    for mod_name, mod in sorted(sys.modules.items()):
        if mod is None or mod_name == module_name or mod_name.split(".")[0] != module_name.split(".")[0]:
            continue
        for key, value in list(vars(mod).items()):
            if value is obj and not key.startswith("_"):
                return f"{mod_name}.{key}"
    return f"{module_name}.{name}"


def _reference(match: re.Match) -> str:
    module_name = match.group(1)
    from mkdocs.exceptions import PluginError

    module = importlib.import_module(module_name)
    sections = []
    for name in module.__all__:
        try:
            obj = getattr(module, name)
        except Exception as exc:  # a public name that does not import is a broken API, not a docs detail
            raise PluginError(f"api-reference: {module_name}.{name} does not import: "
                              f"{type(exc).__name__}: {exc}") from exc
        title = f"## `{module_name}.{name}`"
        if name.startswith("__"):
            sections.append(f"{title}\n\n`{obj!r}`\n")
            continue
        sections.append(f"{title}\n\n::: {_where(module_name, name, obj)}\n"
                        "    options:\n      show_root_heading: false\n      heading_level: 3\n")
    return "\n".join(sections)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return MARKER.sub(_reference, markdown)


def on_page_content(html, page, config, files, **kwargs):
    return ROLE.sub("", html)
