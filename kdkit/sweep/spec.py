"""The sweep file: its keys and values checked (:func:`parse_sweep`, :func:`load_sweep`), the cells in
run order (dependencies through ``{cell:NAME}`` first), the grid points, and the ``--set`` items the
values become.  The file's format is documented in :mod:`kdkit.sweep`."""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdkit.errors import ConfigError

SWEEP_KEYS = ("name", "seeds", "base", "grid", "cells")
CELL_KEYS = ("name", "method", "set", "rows")
_RESERVED = ("seed", "method")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CELL_REF = re.compile(r"\{cell:([^}]*)\}")
#: The longest cell name, sweep name and ``seed<S>``: each names a directory (``runs/<cell>``,
#: ``logs/<cell>``, the default ``--out sweeps/<name>``, ``seed<S>``) or a file in one, and a file
#: system refuses a name over 255 bytes (the names kdkit derives from them are longer still).
MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class Cell:
    name: str
    method: str
    sets: dict  # dotted key -> value ({cell:NAME} not yet substituted)
    rows: dict  # row name -> stage name
    deps: tuple = ()  # cells named by {cell:NAME}
    index: int = 0  # position in the file



@dataclass(frozen=True)
class GridPoint:
    id: str  # directory name: "default" or "g<i>-<label>"
    values: dict  # dotted key -> value
    label: str  # "lr=0.1 bs=64" ("" without a grid)



@dataclass
class Sweep:
    name: str
    seeds: list
    base: dict
    grid: dict
    cells: list  # Cell, in run order (dependencies first; file order otherwise)
    source: Path | None = None
    data: dict = field(default_factory=dict)  # the parsed file

    @property
    def dir_name(self) -> str:
        """The name as one directory name (the default ``--out sweeps/<dir_name>``): ``.`` and ``..``
        would name the parent directories."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        return safe.replace(".", "_") if set(safe) == {"."} else safe

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)

    @property
    def file_order(self) -> list:
        return sorted(self.cells, key=lambda c: c.index)

    @property
    def n_grid_points(self) -> int:
        """How many grid points :meth:`grid_points` gives, without making them."""
        return math.prod(len(values) for values in self.grid.values())

    @property
    def n_runs(self) -> int:
        """Runs of the whole file: cells x grid points x seeds."""
        return len(self.cells) * self.n_grid_points * len(self.seeds)

    def grid_points(self) -> list:
        if not self.grid:
            return [GridPoint("default", {}, "")]
        keys = list(self.grid)
        shorts = [k.rsplit(".", 1)[-1] for k in keys]
        names = shorts if len(set(shorts)) == len(shorts) else keys
        points = []
        for i, combo in enumerate(itertools.product(*(self.grid[k] for k in keys))):
            label = " ".join(f"{n}={_show(v)}" for n, v in zip(names, combo))
            safe = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", label.replace(" ", ","))[:60]
            points.append(GridPoint(f"g{i}-{safe}", dict(zip(keys, combo)), label))
        return points



def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)



def canonical(value) -> str:
    """``value`` as text that is equal for equal values, mapping order aside (``json.dumps(...,
    sort_keys=True)`` raises TypeError on a YAML mapping with keys of mixed types, ``{1: a, b: c}``)."""
    def keyed(v):
        if isinstance(v, dict):
            return sorted(([json.dumps(keyed(k), default=str), keyed(x)] for k, x in v.items()),
                          key=lambda pair: pair[0])
        if isinstance(v, (list, tuple)):
            return [keyed(x) for x in v]
        return v

    return json.dumps(keyed(value), default=str)



def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))



def _set_item(key: str, value) -> str:
    """``KEY=VALUE`` for ``kdkit train --set`` that parses back to ``value`` exactly."""
    from kdkit.config import parse_set

    if not _plain(value):  # a YAML date, !!binary or !!set: no config value, and no JSON for results.jsonl
        raise ConfigError(f"value of {key} ({value!r}) is a YAML date, binary or set, not a config value; "
                          "quote it to pass a string")

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[: -len("...")].strip()
    item = f"{key}={text}"
    try:
        ok = "\n" not in text and parse_set(item)[1] == value
    except ConfigError:
        ok = False
    if not ok:
        raise ConfigError(f"value of {key} ({value!r}) cannot be passed as --set {key}=...; use a simpler value")
    return item



def _short(text: str) -> str:
    return repr(text if len(text) <= 20 else text[:20] + "...")



def _check_length(name: str, what: str, source) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(_where(source, f"{what}: {_short(name)} is {len(name)} characters long; at most "
                                          f"{MAX_NAME_LENGTH} (it names a directory)"))



def _where(source, what: str) -> str:
    return f"{source}: {what}" if source else what



def _check_overrides(mapping, what: str, source, allow_refs: bool) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(_where(source, f"{what}: expected a mapping of dotted keys to values "
                                          f"(e.g. {{train.lr: 0.1}}), got {type(mapping).__name__}"))
    for key, value in mapping.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(_where(source, f"{what}: invalid key {key!r} (a dotted config key, e.g. train.lr)"))
        if key in _RESERVED or key.split(".")[0] in _RESERVED:
            raise ConfigError(_where(source, f"{what}.{key}: {key.split('.')[0]!r} cannot be set here "
                                              "(the sweep's `seeds` and each cell's `method` say it)"))
        if not allow_refs and _refs(value):
            raise ConfigError(_where(source, f"{what}.{key}: {{cell:NAME}} is only allowed in a cell's `set`"))
        _set_item(key, value)
    from kdkit.config import check_dotted_keys

    try:
        check_dotted_keys(mapping, what)
    except ConfigError as exc:
        raise ConfigError(_where(source, str(exc))) from None
    return dict(mapping)



def _refs(value) -> list:
    if isinstance(value, str):
        return _CELL_REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs(v)]
    return []



def _substitute(value, dirs: dict):
    if isinstance(value, str):
        return _CELL_REF.sub(lambda m: str(dirs[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, dirs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, dirs) for v in value]
    return value



def _unknown(keys, valid, what: str, source) -> None:
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ConfigError(_where(source, f"unknown key {bad[0]!r} in {what} (valid: {', '.join(valid)})"))



def parse_sweep(data, source: str | Path | None = None) -> Sweep:
    """Check a parsed sweep file and return the :class:`Sweep` (cells in run order)."""
    if not isinstance(data, dict):
        raise ConfigError(_where(source, f"a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}; "
                                          f"got {type(data).__name__}"))
    _unknown(data, SWEEP_KEYS, "the sweep file", source)
    name = data.get("name", Path(source).stem if source else "sweep")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(_where(source, f"name: expected a non-empty string, got {name!r}"))
    _check_length(name.strip(), "name", source)
    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ConfigError(_where(source, f"seeds: expected a non-empty list of integers >= 0 (e.g. [0, 1, 2]), "
                                          f"got {seeds!r}"))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(_where(source, f"seeds: {seeds!r} repeats a seed"))
    for s in seeds:
        if len(f"seed{s}") > MAX_NAME_LENGTH:
            raise ConfigError(_where(source, f"seeds: seed {str(s)[:20]}... has {len(str(s))} digits; at most "
                                              f"{MAX_NAME_LENGTH - len('seed')} (it names the directory seed<S>)"))
    base = _check_overrides(data.get("base"), "base", source, allow_refs=False)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(_where(source, f"grid: expected a mapping of dotted keys to lists, got {type(grid).__name__}"))
    _check_overrides(grid, "grid", source, allow_refs=False)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(_where(source, f"grid.{key}: expected a non-empty list of values, got {values!r}"))
        if len({canonical(v) for v in values}) != len(values):
            raise ConfigError(_where(source, f"grid.{key}: {values!r} repeats a value"))
        for v in values:
            _set_item(key, v)
        if key in base:
            raise ConfigError(_where(source, f"grid.{key}: also set in base (the grid would not vary it)"))
    cells_data = data.get("cells")
    if not isinstance(cells_data, list) or not cells_data:
        raise ConfigError(_where(source, "cells: expected a non-empty list of cells "
                                          "(each {name, method, set, rows})"))
    cells: list[Cell] = []
    row_owner: dict[str, str] = {}
    for i, c in enumerate(cells_data):
        what = f"cells[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(_where(source, f"{what}: expected a mapping with keys {', '.join(CELL_KEYS)}, "
                                              f"got {c!r}"))
        _unknown(c, CELL_KEYS, what, source)
        cname = c.get("name")
        if not isinstance(cname, str) or not _NAME_RE.match(cname):
            raise ConfigError(_where(source, f"{what}.name: expected a name of letters, digits, _ . - "
                                              f"(it names a directory), got {cname!r}"))
        _check_length(cname, f"{what}.name", source)
        what = f"cells[{i}] ({cname})"
        if any(x.name == cname for x in cells):
            raise ConfigError(_where(source, f"{what}: duplicate cell name {cname!r}"))
        # a case-insensitive file system (macOS, Windows) would give both cells one directory
        twin = next((x.name for x in cells if x.name.lower() == cname.lower()), None)
        if twin is not None:
            raise ConfigError(_where(source, f"{what}: cell name {cname!r} differs from {twin!r} only in case "
                                              "(the names are directories: rename one)"))
        method = c.get("method")
        if not isinstance(method, str) or not method.strip():
            raise ConfigError(_where(source, f"{what}.method: expected a method name (e.g. kd), got {method!r}"))
        sets = _check_overrides(c.get("set"), f"{what}.set", source, allow_refs=True)
        for key in sets:
            if key in grid:
                raise ConfigError(_where(source, f"{what}.set.{key}: the grid varies {key}; a cell cannot set it"))
        rows = c.get("rows", {cname: "student"})
        if not isinstance(rows, dict) or not rows:
            raise ConfigError(_where(source, f"{what}.rows: expected a non-empty mapping of row names to stage "
                                              f"names (e.g. {{{cname}: student}}), got {rows!r}"))
        for row, stage in rows.items():
            if not isinstance(row, str) or not row.strip():
                raise ConfigError(_where(source, f"{what}.rows: invalid row name {row!r}"))
            if not isinstance(stage, str) or not stage.strip():
                raise ConfigError(_where(source, f"{what}.rows.{row}: expected a stage name (e.g. student, "
                                                  f"baseline, teacher.convnet), got {stage!r}"))
            if row in row_owner:
                raise ConfigError(_where(source, f"{what}.rows.{row}: row name also used by cell "
                                                  f"{row_owner[row]!r} (row names are the table's rows)"))
            row_owner[row] = cname
        deps = tuple(dict.fromkeys(_refs(sets)))
        cells.append(Cell(cname, method.strip(), sets, dict(rows), deps, i))
    names = {c.name for c in cells}
    for c in cells:
        for d in c.deps:
            if d not in names:
                raise ConfigError(_where(source, f"cells[{c.index}] ({c.name}).set: {{cell:{d}}} names no cell "
                                                  f"(cells: {', '.join(sorted(names))})"))
    return Sweep(name.strip(), list(seeds), base, dict(grid), _run_order(cells, source), source=Path(source)
                 if source else None, data=copy.deepcopy(data))



def _run_order(cells: list, source) -> list:
    """Dependencies first, file order otherwise; a cycle is an error naming it."""
    by_name = {c.name: c for c in cells}
    order: list[Cell] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(c: Cell, path: list) -> None:
        if state.get(c.name) == 2:
            return
        if state.get(c.name) == 1:
            cycle = path[path.index(c.name):] + [c.name]
            raise ConfigError(_where(source, f"cells: dependency cycle {' -> '.join(cycle)} (through {{cell:NAME}})"))
        state[c.name] = 1
        for d in c.deps:
            visit(by_name[d], path + [c.name])
        state[c.name] = 2
        order.append(c)

    for c in cells:
        visit(c, [])
    return order



def load_sweep(path: str | Path) -> Sweep:
    from kdkit.config import load_yaml

    return parse_sweep(load_yaml(path), path)

