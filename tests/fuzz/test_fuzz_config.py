"""Fuzz target: YAML config text + ``--set`` overrides through the real resolve path (load_yaml,
parse_set, merge, validate, the method's check_config) of several methods.

The only outcomes allowed: a resolved config — which resolves to itself once written as
``config.yaml`` (what ``--resume`` and ``kdkit eval`` read back) — or a :class:`KdkitError`; never
another exception, never a hang.  ``KDKIT_FUZZ_EXAMPLES=10000 pytest -m fuzz tests/fuzz`` is the
long run.
"""
from __future__ import annotations

import contextlib
import math
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from _fuzz import fuzz_settings
from kdkit.config import dump_yaml, plain_defaults, resolve_method_config
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz

METHODS = ("kd", "dkd", "crd", "wordnet_relax", "soda")
SECONDS_PER_EXAMPLE = 20  # a generous bound: one resolution takes milliseconds


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in kdkit swallows it."""


@contextlib.contextmanager
def no_hang(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no outcome after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _leaf_paths(tree, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [p for k, v in tree.items() for p in _leaf_paths(v, f"{prefix}{k}.")] + [prefix.rstrip(".")]
    if isinstance(tree, list) and tree:
        return [p for i, v in enumerate(tree) for p in _leaf_paths(v, f"{prefix}{i}.")] + [prefix.rstrip(".")]
    return [prefix.rstrip(".")]


def _get(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def _defaults() -> dict[str, dict[str, object]]:
    """method -> {dotted path: default value} of its declared config."""
    import kdkit

    registry = kdkit.get_plugin_manager().registry("methods")
    out = {}
    for method in METHODS:
        tree = plain_defaults(registry.get(method).factory.default_config())
        out[method] = {p: _get(tree, p) for p in _leaf_paths(tree) if p}
    return out


DEFAULTS = _defaults()
KNOWN_PATHS = sorted({p for paths in DEFAULTS.values() for p in paths})

# Scalars as a user (or a typo) writes them, including YAML's surprises.
SCALAR_TEXT = st.sampled_from([
    "0", "-1", "1", "3", "1.5", "-0.1", "1e-3", "1e400", ".nan", ".inf", "-.inf", "true", "no", "null", "~", "''",
    "abc", "sgd", "cosine", "kl", "resnet8", "shapes", "cuda:0", "2020-01-01", "2020-13-45", "0x1F", "1_000",
    "!!int x", "!!bool x", "!!binary Zm9v", "!!python/object:os.system {}", "[1, 2]", "[]", "{}", "{a: 1}",
    "[{name: resnet8}]", "[{loss: kl, weight: 0.5}]", "*undefined", "&a [*a]", "'" + "9" * 5000 + "'", "9" * 5000,
    "[" * 300 + "]" * 300, "\"\\ud800\"", "a: b", "- x", "'quoted'", "1:20", "|\n  block",
])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["sgd", "adam", "cosine", "step", "kl", "dkd", "resnet8", "shapes"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(KNOWN_PATHS) | st.text(max_size=15)


def plausible(default):
    """Values near a key's default (often valid): the resolved path gets exercised, not only errors."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, max(4, 2 * default))
    if isinstance(default, float):
        return st.floats(0, max(1.0, 2 * default), exclude_max=True)
    if isinstance(default, str):
        return st.sampled_from([default, "sgd", "adam", "step", "resnet8", "shapes", "none"])
    if default is None:  # keys such as pretrained and pool_file name files
        return st.none() | st.sampled_from(["", "x", "/no/such/file", "/tmp", "~kdkit_no_such_user/x", "a\x00b",
                                            "a\nb"]) | st.text(max_size=8)
    return st.just(default)


def _nest(dotted: str, value):
    for part in reversed(dotted.split(".")):
        value = {int(part) if part.isdecimal() else part: value}
    return value


@st.composite
def config_text(draw, defaults: dict) -> bytes:
    """A config file: plausible values at the method's keys, a YAML dump of values at (mostly) known
    keys, raw YAML-ish text, or bytes."""
    kind = draw(st.sampled_from(["plausible", "plausible", "structured", "structured", "lines", "text", "bytes"]))
    if kind == "plausible":
        doc = {}
        for key in draw(st.lists(st.sampled_from(sorted(defaults)), max_size=5)):
            doc = _merge(doc, _nest(key, draw(plausible(defaults[key]))))
        return yaml.safe_dump(doc).encode("utf-8")
    if kind == "structured":
        doc: dict = {}
        for key, value in draw(st.lists(st.tuples(KEYS, VALUES), max_size=6)):
            doc = _merge(doc, _nest(key, value))
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    if kind == "lines":  # dotted keys as YAML lines with raw scalar text: tags, anchors, odd scalars
        lines = [f"{key.split('.')[0]}: {{{'.'.join(key.split('.')[1:]) or 'x'}: {text}}}"
                 if "." in key and draw(st.booleans()) else f"{key}: {text}"
                 for key, text in draw(st.lists(st.tuples(KEYS, SCALAR_TEXT), max_size=5))]
        return "\n".join(lines).encode("utf-8", "surrogatepass")
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=200))


def _merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v) if k in out else v
        return out
    return b


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def set_items(defaults: dict):
    key = st.sampled_from(sorted(defaults))
    near_default = key.flatmap(lambda k: plausible(defaults[k]).map(lambda v: f"{k}={_flow(v)}"))
    return st.one_of(
        near_default, near_default, near_default,
        st.builds(lambda k, v: f"{k}={v}", KEYS, SCALAR_TEXT),
        st.builds(lambda k, v: f"{k}={_flow(v)}", KEYS, VALUES),
        st.text(max_size=40),
    )


@st.composite
def cases(draw):
    """``(method, config file bytes or None, --set items)``."""
    method = draw(st.sampled_from(METHODS))
    defaults = DEFAULTS[method]
    return method, draw(st.none() | config_text(defaults)), draw(st.lists(set_items(defaults), max_size=4))


def _same(a, b) -> bool:
    """Equality with nan equal to itself (a float key without a range may hold nan)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="kdkit-fuzz-config-") as path:
        yield Path(path)


@fuzz_settings()
@given(case=cases())
def test_config_resolves_or_is_a_kdkit_error(workdir, case):
    method, text, sets = case
    config_file = None
    if text is not None:
        config_file = workdir / "config.yaml"
        config_file.write_bytes(text)
    with no_hang(SECONDS_PER_EXAMPLE):
        try:
            config = resolve_method_config(method, config_file, sets)
        except KdkitError as exc:
            assert str(exc) and "\n" not in str(exc).strip(), f"a multi-line error: {exc!r}"
            event(f"error: {type(exc).__name__}")
            return
        event("resolved")
        # a resolved config is what the run saves as config.yaml: it must read back as itself
        saved = workdir / "saved.yaml"
        saved.write_text(dump_yaml(config), encoding="utf-8")
        again = resolve_method_config(method, saved)
    assert _same(again, config)
