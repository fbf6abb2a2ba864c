"""Fuzz the two files ``kdkit sweep`` reads: the sweep file (YAML) and the ``--compare`` reference
(a ``table.json``).

Outcomes allowed for a sweep file: it loads, its size is counted (and refused over the cap) and its
runs are planned — or a one-line :class:`KdkitError`.  For a
reference: it loads (its structure checked once, in ``load_table``) and then compares with a table
and is checked for rows in common without any exception — or a one-line :class:`KdkitError`.
Never another exception, never a hang.
"""
from __future__ import annotations

import json
import math

import pytest
import yaml
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import event, given
from hypothesis import strategies as st

from kdkit import sweep as ks
from kdkit.errors import KdkitError
from kdkit.sweep.runner import check_size, sweep_size

pytestmark = pytest.mark.fuzz
budget = family_settings(2)  # the two fuzz tests share the family's budget

SWEEP = {
    "name": "fuzz", "seeds": [0, 1],
    "base": {"data.name": "shapes", "train.epochs": 1},
    "grid": {"train.lr": [0.1, 0.05]},
    "cells": [
        {"name": "kd", "method": "kd", "set": {"baseline.enabled": True},
         "rows": {"teacher": "teacher.convnet", "baseline": "baseline", "kd": "student"}},
        {"name": "frozen", "method": "kd",
         "set": {"teachers.0.pretrained": "{cell:kd}/checkpoints/teacher.convnet/best.pt", "teachers.0.train": False}},
    ],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["kd", "student", "baseline", "{cell:kd}", "{cell:zz}", "a" * 300, "train.lr", "seed"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(
        ["name", "method", "set", "rows", "seeds", "grid", "base", "cells", "train.lr", "id", "best", "mean"]),
        inner, max_size=4),
    max_leaves=12)

# YAML scalars that surprise a parser: tags, anchors, huge numbers, timestamps, deep nesting
SCALAR_TEXT = st.sampled_from([
    "0", "-1", "1e400", ".nan", "true", "null", "~", "''", "2020-01-01", "!!binary Zm9v", "!!set {a, b}",
    "!!python/object:os.system {}", "[1, 2]", "[]", "{}", "{1: a, b: c}", "*undefined", "&a [*a]", "9" * 400,
    "[" * 300 + "]" * 300, "kd", "'{cell:kd}/x.pt'", "[{name: a, method: kd}]", "{name: kd, method: kd}",
])
TOP_KEYS = st.sampled_from(["name", "seeds", "base", "grid", "cells", "seed", "x"])
# a valid sweep file with one raw YAML scalar put into a slot: the value reaches the checks of that key
SLOTS = (
    "name: {v}\nseeds: [0]\ncells: [{{name: a, method: kd}}]",
    "seeds: [0, {v}]\ncells: [{{name: a, method: kd}}]",
    "seeds: [0]\nbase: {{train.lr: {v}}}\ncells: [{{name: a, method: kd}}]",
    "seeds: [0]\ngrid: {{train.lr: [0.1, {v}]}}\ncells: [{{name: a, method: kd}}]",
    "seeds: [0]\ngrid: {{train.lr: {v}}}\ncells: [{{name: a, method: kd}}]",
    "seeds: [0]\ncells: [{{name: {v}, method: kd}}]",
    "seeds: [0]\ncells: [{{name: a, method: {v}}}]",
    "seeds: [0]\ncells: [{{name: a, method: kd, set: {{train.lr: {v}}}}}]",
    "seeds: [0]\ncells: [{{name: a, method: kd, set: {v}}}]",
    "seeds: [0]\ncells: [{{name: a, method: kd, rows: {{a: {v}}}}}]",
    "seeds: [0]\ncells: [{{name: a, method: kd, rows: {v}}}]",
)


def _path_into(doc: dict, bits: list) -> tuple:
    """``(container, key)`` of a value inside ``doc["root"]``, walked down by ``bits`` (drawn up front)."""
    node, key = doc, "root"
    for bit in bits:
        value = node[key]
        if isinstance(value, dict) and value:
            node, key = value, list(value)[bit % len(value)]
        elif isinstance(value, list) and value:
            node, key = value, bit % len(value)
        else:
            break
    return node, key


@st.composite
def edited(draw, seed: dict) -> dict:
    """``seed`` with a few values somewhere inside replaced by arbitrary JSON values (or removed)."""
    doc = {"root": json.loads(json.dumps(seed))}
    for _ in range(draw(st.integers(1, 4))):
        node, key = _path_into(doc, draw(st.lists(st.integers(0, 50), min_size=1, max_size=6)))
        if isinstance(node, dict) and node is not doc and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(json_values)
    return doc["root"]


@st.composite
def sweep_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["edited", "edited", "slot", "slot", "lines", "mutated", "text"]))
    event(f"sweep file: {kind}")
    if kind == "slot":
        return draw(st.sampled_from(SLOTS)).format(v=draw(SCALAR_TEXT)).encode()
    if kind == "edited":
        return yaml.safe_dump(draw(edited(SWEEP)), allow_unicode=True).encode("utf-8", "surrogatepass")
    if kind == "lines":
        lines = [f"{key}: {text}" for key, text in draw(st.lists(st.tuples(TOP_KEYS, SCALAR_TEXT), max_size=5))]
        return "\n".join(lines).encode()
    if kind == "mutated":
        return draw(mutated(yaml.safe_dump(SWEEP).encode()))
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


def _one_line(exc: Exception) -> None:
    assert str(exc) and "\n" not in str(exc).strip(), f"a multi-line error: {exc!r}"


def _load_sweep(text: bytes) -> None:
    with scratch_dir() as d, time_limit():
        (d / "s.yaml").write_bytes(text)
        try:
            sweep = ks.load_sweep(d / "s.yaml")
            sweep_size(sweep)
            check_size(sweep, yes=False)
            # the runs' configs (check_configs) are resolve_method_config's: test_fuzz_config.py fuzzes it
            runs = ks.plan(sweep, d / "out")
            # the table of a sweep with no results yet: grouped by grid point, written as JSON and text
            table = ks.make_table(sweep, [], runs)
            json.dumps(table)
            ks.format_table(table)
        except KdkitError as exc:
            _one_line(exc)
            event(f"sweep: {type(exc).__name__}")
            return
        event("sweep: planned")
        assert runs and all(len(r.run_dir.name) <= ks.MAX_NAME_LENGTH for r in runs)
        assert all(len(r.cell.name) <= ks.MAX_NAME_LENGTH for r in runs)


@budget
@given(text=sweep_texts())
def test_sweep_file_loads_or_is_a_kdkit_error(text):
    _load_sweep(text)


# --- the --compare reference --------------------------------------------------------------------

def _table() -> tuple:
    """A sweep's table with results: 3 seeds of a kd cell (baseline and student rows), one diverged."""
    sweep = ks.parse_sweep({"name": "t", "seeds": [0, 1, 2],
                            "cells": [{"name": "kd", "method": "kd", "rows": {"base": "baseline", "kd": "student"}}]})
    runs = ks.plan(sweep, "/nonexistent")
    records = []
    for run in runs:
        for row in run.cell.rows:
            diverged = run.seed == 2 and row == "kd"
            top1 = None if diverged else 50.0 + run.seed + (row == "kd")
            records.append({"cell": "kd", "row": row, "grid_id": run.point.id, "seed": run.seed,
                            "select_on": "val", "status": "diverged" if diverged else "trained",
                            "diverged": {"stage": "student", "epoch": 1, "epochs": 2, "step": 3, "loss": "nan"}
                            if diverged else None,
                            "test_top1_best": top1, "test_top1_last": top1, "val_top1_best": top1})
    return sweep, runs, ks.make_table(sweep, records, runs)


SWEEP_T, RUNS_T, TABLE = _table()
TABLE_JSON = json.dumps(TABLE).encode()


@st.composite
def reference_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["edited", "edited", "edited", "values", "mutated", "text"]))
    event(f"reference: {kind}")
    if kind == "edited":
        return json.dumps(draw(edited(TABLE))).encode()  # NaN and Infinity as Python's json writes them
    if kind == "values":
        return json.dumps({"rows": draw(st.lists(json_values | st.fixed_dictionaries(
            {"id": json_values | st.sampled_from(["kd", "base"]), "best": json_values}), max_size=3))}).encode()
    if kind == "mutated":
        return draw(mutated(TABLE_JSON))
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


@budget
@given(text=reference_texts(), tolerance=st.sampled_from([0.0, 0.5, 1.0, 100.0]))
def test_reference_loads_and_compares_or_is_a_kdkit_error(text, tolerance):
    with scratch_dir() as d, time_limit():
        (d / "ref.json").write_bytes(text)
        try:
            reference = ks.load_table(d / "ref.json")
            ks.check_common_rows(reference, SWEEP_T, RUNS_T, d / "ref.json")
        except KdkitError as exc:
            _one_line(exc)
            assert str(exc).startswith("--compare ")
            event(f"reference: {type(exc).__name__}")
            return
        # a reference that loads is one compare_tables reads without an exception, and no NaN,
        # bool or string mean gets into a line as a number
        lines, failed = ks.compare_tables(TABLE, reference, tolerance)
        event(f"reference: compared, {failed} failed")
        assert failed >= 0 and lines and all("\n" not in ln for ln in lines)
        assert not any("nan" in ln.split(":", 2)[-1] for ln in lines if ln.startswith("  ok:"))
        ids = [r["id"] for r in reference["rows"]]
        assert len(ids) == len(set(ids))
        for row in reference["rows"]:
            for sel in ("best", "last"):
                mean = (row.get(sel) or {}).get("mean")
                assert mean is None or (type(mean) in (int, float) and math.isfinite(mean))


def test_the_table_compares_with_itself():
    """The seeds of the fuzz: the unedited files load and pass."""
    with scratch_dir() as d:
        (d / "ref.json").write_bytes(TABLE_JSON)
        reference = ks.load_table(d / "ref.json")
        (d / "s.yaml").write_text(yaml.safe_dump(SWEEP))
        assert len(ks.plan(ks.load_sweep(d / "s.yaml"), d / "out")) == 2 * 2 * 2
    lines, failed = ks.compare_tables(TABLE, reference, 0.0)
    assert failed == 0 and lines[-1] == "compare: 2 row(s) within ±0 points, 0 outside"
