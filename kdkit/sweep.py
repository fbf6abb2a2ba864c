"""``kdkit sweep CONFIG``: a reproduction harness — cells x seeds x grid points, stored results,
mean ± std tables with a named checkpoint selection, resume, and a comparison with a stored table.

The sweep file (YAML, ``yaml.safe_load``)::

    name: fashion_mnist_methods     # optional (default: the file's stem); names the table
    seeds: [0, 1, 2]                # required: distinct integers >= 0; each run gets --set seed=S
    base:                           # optional: dotted key -> value, applied to every run (--set)
      data.name: fashion_mnist
      train.epochs: 15
    grid:                           # optional: dotted key -> non-empty list; the cartesian
      train.lr: [0.1, 0.05]         #   product of the lists is run for every cell and seed
    cells:                          # required, non-empty: a cell = one method + its overrides
      - name: kd                    # required, unique, [A-Za-z0-9][A-Za-z0-9_.-]* (a directory)
        method: kd                  # required: a name of the methods registry (--method)
        set: {baseline.enabled: true}          # optional: dotted key -> value (wins over base)
        rows:                       # optional: table row -> stage name (default {<name>: student})
          teacher: teacher.resnet14
          baseline: baseline
          kd: student
      - name: kd_frozen
        method: kd
        set:
          teachers.0.pretrained: "{cell:kd}/checkpoints/teacher.resnet14/best.pt"
          teachers.0.train: false

Overrides apply in the order ``base``, grid point, the cell's ``set``, then ``seed=S`` (a later one
wins).  ``seed`` and ``method`` cannot be set (``seeds`` / ``method`` say them); a grid key cannot
also be set by ``base`` or by a cell (the grid would not vary it).  Values are YAML values, passed
to ``kdkit train --set KEY=VALUE`` unchanged.  ``{cell:NAME}`` in a string value of a cell's
``set`` is replaced by the run directory (absolute) of cell ``NAME`` at the same seed and grid
point, and makes ``NAME`` run first (unknown names and cycles are errors).  Row names are the
table's rows and are unique across the sweep.

Everything is checked before anything runs: the file's keys and values, then every run's config
with :func:`kdkit.config.resolve_method_config` (unknown keys, types, the method's own rules —
no run directory is created), and a config whose ``checkpoint.select_on`` is ``test`` is refused
(a sweep table never selects on the test split).  Errors are one line (exit 2).

Runs: each run is ``python -m kdkit --plugins-module kdkit.sweep train --method METHOD --out
OUT/runs/<cell>/<grid-id>/seed<S> --set ...`` in a subprocess (a crashed run does not stop the
sweep; the tail of its output goes into ``OUT/sweep.log``, its dependents are skipped, and the
sweep exits 3 at the end naming the failed runs).  ``<grid-id>`` is ``default`` without a grid,
else ``g<i>-<key=value,...>``.  The child's output is in ``OUT/logs/<cell>/<grid-id>/seed<S>.log``.

Resume: running the same command again skips every run whose directory holds a ``summary.json``
(``done, skipped``), continues a run killed mid-way with ``kdkit train --resume`` (it has a
``checkpoints/<stage>/last.pt``) and restarts a run that has no checkpoint yet from an empty
directory.  The sweep file is copied to ``OUT/sweep.yaml``; a different sweep file (as parsed:
comments and layout do not count) is refused for an existing ``OUT``.  ``--cells`` / ``--seeds``
run a slice (a cell's dependencies come with it).

Last-epoch test top-1: the trainer evaluates the test split once per stage, with the best epoch's
weights, and a finished stage's ``last.pt`` holds those best weights too — the last epoch's
weights are gone when the stage ends.  So the runs load this module as a plugin:
:func:`kdkit_after_evaluation` evaluates the stage's test data with the weights of its last epoch,
right after that epoch's validation and before its checkpoint (so it is kept exactly on resume,
and nothing selects on it), restores the RNG state it found, and appends
``{"stage", "epoch", "step", "split": "test@last", "test.top1", ...}`` to ``metrics.jsonl``.
A stage without validation (``checkpoint.select_on: last``) selects its last epoch, whose test
record is the trainer's own.

Outputs in ``OUT``: ``results.jsonl`` (one record per run x row: ``sweep, cell, method, row, stage,
kind, grid, grid_id, seed, run_dir, select_on, best_epoch, test_top1_best, val_top1_best,
last_epoch, test_top1_last, val_top1_last, wall_s``; epochs 0-based as in ``metrics.jsonl``;
``wall_s`` the seconds of the sweep's attempts that ran to their end), ``table.json`` /
``table.md`` (per row and grid point: mean ± sample standard deviation over seeds of the test
top-1 at the validation-best epoch and at the last epoch, n seeds) and ``table.png``.

``--compare REF.json --tolerance T``: rows present in both tables are compared; a row whose mean
(at either selection) is more than ``T`` points from the reference's leaves its band — one line
each, exit 3.  Reference rows not in this sweep are listed as not compared.  ``--no-run``
aggregates (and compares) an existing ``OUT`` without running anything.

Importing this module does not import torch.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import yaml

from kdkit.errors import ConfigError, KdkitError
from kdkit.hookspecs import hookimpl
from kdkit.paths import lock_directory

__all__ = ["Sweep", "Cell", "GridPoint", "RunSpec", "load_sweep", "parse_sweep", "plan", "check_configs",
           "run_status", "stage_metrics", "collect", "make_table", "format_table", "compare_tables",
           "run_sweep", "LAST_EPOCH_SPLIT", "SWEEP_FILE"]

#: ``split`` of the metrics.jsonl record holding a stage's test metrics at its last epoch.
LAST_EPOCH_SPLIT = "test@last"
#: exit status of a sweep that ran but has failed runs or rows out of band: a result, neither a
#: user error (2) nor a kdkit bug (1)
RESULTS_FAILED = 3
#: the copy of the sweep file kept in OUT.
SWEEP_FILE = "sweep.yaml"

SWEEP_KEYS = ("name", "seeds", "base", "grid", "cells")
CELL_KEYS = ("name", "method", "set", "rows")
_RESERVED = ("seed", "method")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CELL_REF = re.compile(r"\{cell:([^}]*)\}")


# --- the sweep file ------------------------------------------------------------------------

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

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)

    @property
    def file_order(self) -> list:
        return sorted(self.cells, key=lambda c: c.index)

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


def _set_item(key: str, value) -> str:
    """``KEY=VALUE`` for ``kdkit train --set`` that parses back to ``value`` exactly."""
    from kdkit.config import parse_set

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
    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ConfigError(_where(source, f"seeds: expected a non-empty list of integers >= 0 (e.g. [0, 1, 2]), "
                                          f"got {seeds!r}"))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(_where(source, f"seeds: {seeds!r} repeats a seed"))
    base = _check_overrides(data.get("base"), "base", source, allow_refs=False)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(_where(source, f"grid: expected a mapping of dotted keys to lists, got {type(grid).__name__}"))
    _check_overrides(grid, "grid", source, allow_refs=False)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(_where(source, f"grid.{key}: expected a non-empty list of values, got {values!r}"))
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
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
        what = f"cells[{i}] ({cname})"
        if any(x.name == cname for x in cells):
            raise ConfigError(_where(source, f"{what}: duplicate cell name {cname!r}"))
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


# --- runs ----------------------------------------------------------------------------------

@dataclass
class RunSpec:
    cell: Cell
    point: GridPoint
    seed: int
    run_dir: Path
    sets: list  # --set items (base, grid point, cell, seed), {cell:NAME} substituted

    @property
    def key(self) -> tuple:
        return (self.cell.name, self.point.id, self.seed)

    @property
    def label(self) -> str:
        return f"{self.cell.name} seed={self.seed}" + (f" {self.point.label}" if self.point.label else "")


def run_dir_of(out: Path, cell: str, point: GridPoint, seed: int) -> Path:
    return Path(out).resolve() / "runs" / cell / point.id / f"seed{seed}"


def plan(sweep: Sweep, out: str | Path, cells: Iterable[str] | None = None,
         seeds: Iterable[int] | None = None) -> list:
    """The runs of the sweep (or of a slice), in run order: cell (dependencies first), grid point, seed.

    ``cells`` selects cells by name (their dependencies are added); ``seeds`` a subset of the seeds.
    """
    names = [c.name for c in sweep.cells]
    wanted = set(names)
    if cells is not None:
        cells = list(cells)
        bad = [c for c in cells if c not in names]
        if bad:
            raise ConfigError(f"--cells: no cell {bad[0]!r} in the sweep (cells: {', '.join(names)})")
        wanted = set()
        todo = list(cells)
        while todo:
            n = todo.pop()
            if n not in wanted:
                wanted.add(n)
                todo.extend(sweep.cell(n).deps)
    seed_list = list(sweep.seeds)
    if seeds is not None:
        seeds = list(seeds)
        bad = [s for s in seeds if s not in sweep.seeds]
        if bad:
            raise ConfigError(f"--seeds: seed {bad[0]} is not in the sweep (seeds: {sweep.seeds})")
        seed_list = [s for s in sweep.seeds if s in seeds]
    runs = []
    for cell in sweep.cells:
        if cell.name not in wanted:
            continue
        for point in sweep.grid_points():
            for seed in seed_list:
                dirs = {d: run_dir_of(out, d, point, seed) for d in cell.deps}
                values = {**sweep.base, **point.values, **_substitute(cell.sets, dirs)}
                items = [_set_item(k, v) for k, v in values.items()] + [f"seed={seed}"]
                runs.append(RunSpec(cell, point, seed, run_dir_of(out, cell.name, point, seed), items))
    return runs


def check_configs(runs: list, manager=None) -> dict:
    """Resolve every run's config (:func:`kdkit.config.resolve_method_config`: keys, types, the
    method's rules; no run directory is created).  Returns ``{run.key: config}``."""
    from kdkit.config import get_path, resolve_method_config

    configs = {}
    for run in runs:
        try:
            # weights named by {cell:NAME} appear when that cell has run: checked when this run starts
            config = resolve_method_config(run.cell.method, None, run.sets, manager, check_files=not run.cell.deps)
        except KdkitError as exc:
            raise type(exc)(f"cell {run.cell.name} ({run.label}): {exc}") from None
        if get_path(config, "checkpoint.select_on", "val") == "test":
            raise ConfigError(f"cell {run.cell.name}: checkpoint.select_on=test selects checkpoints on the test "
                              "split; a sweep table never does (use val, the default, or last)")
        configs[run.key] = config
    return configs


def run_status(run_dir: Path) -> str:
    """``done`` (a complete summary.json), ``resume`` (a checkpoint to continue from), ``restart``
    (a directory without checkpoint) or ``new``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    try:
        if isinstance(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")), dict):
            return "done"
    except (OSError, ValueError):
        pass
    if (run_dir / "config.yaml").is_file() and any((run_dir / "checkpoints").glob("*/last.pt")):
        return "resume"
    return "restart"


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Log:
    """Progress lines: stderr (flushed) and OUT/sweep.log (timestamped)."""

    def __init__(self, path: Path | None, echo: Callable[[str], None] | None = None):
        self.path = path
        self.echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))

    def __call__(self, msg: str) -> None:
        self.echo(msg)
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(f"{stamp} {line}\n" for line in msg.splitlines() or [""])


def _child_log(out: Path, run: RunSpec) -> Path:
    return Path(out) / "logs" / run.cell.name / run.point.id / f"seed{run.seed}.log"


def _wall_file(out: Path, run: RunSpec) -> Path:
    return _child_log(out, run).with_suffix(".json")


def _read_wall(out: Path, run: RunSpec):
    try:
        return float(json.loads(_wall_file(out, run).read_text(encoding="utf-8"))["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _add_wall(out: Path, run: RunSpec, seconds: float) -> None:
    from kdkit.engine.checkpoint import atomic_write_text

    previous = _read_wall(out, run) or 0.0
    atomic_write_text(_wall_file(out, run), json.dumps({"wall_s": previous + seconds}) + "\n")


def _tail(path: Path, start: int, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run_child(run: RunSpec, status: str, out: Path, plugin_modules: list) -> tuple[int, float, str]:
    """Run (or resume) one run in a subprocess; returns (exit status, seconds, output tail)."""
    cmd = [sys.executable, "-m", "kdkit"]
    for module in ["kdkit.sweep", *plugin_modules]:
        cmd += ["--plugins-module", module]
    if status == "resume":
        cmd += ["train", "--resume", str(run.run_dir)]
    else:
        if status == "restart":
            shutil.rmtree(run.run_dir)
        run.run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["train", "--method", run.cell.method, "--out", str(run.run_dir)]
        for item in run.sets:
            cmd += ["--set", item]
    log_path = _child_log(out, run)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log_path, "ab") as fh:
        start = fh.tell()
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            code = proc.wait()
        except BaseException:  # KeyboardInterrupt: stop the child too, its run is resumed next time
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        seconds = time.perf_counter() - t0
    return code, seconds, _tail(log_path, start) if code else ""


# --- results -------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise KdkitError(f"{path}: a line is not JSON: {line[:80]!r}") from None
    return out


def stage_metrics(run_dir: Path, stage: str, records: list | None = None) -> dict:
    """The numbers of one stage of a finished run, from its ``metrics.jsonl``: ``best_epoch``
    (the trainer's selection), ``test_top1_best``, ``val_top1_best``, ``last_epoch``,
    ``test_top1_last``, ``val_top1_last`` (``None`` where the run has no such value)."""
    records = _read_jsonl(Path(run_dir) / "metrics.jsonl") if records is None else records
    mine = [r for r in records if r.get("stage") == stage]
    epochs = [r for r in mine if "split" not in r]
    tests = [r for r in mine if r.get("split") == "test"]
    lasts = [r for r in mine if r.get("split") == LAST_EPOCH_SPLIT]
    if not epochs and not tests:
        stages = ", ".join(dict.fromkeys(str(r.get("stage")) for r in records)) or "none"
        raise KdkitError(f"{run_dir}: stage {stage!r} is not in metrics.jsonl (stages: {stages})")
    best = tests[-1] if tests else None
    best_epoch = int(best["epoch"]) if best is not None else None
    last_epoch = max(int(r["epoch"]) for r in epochs) if epochs else best_epoch
    by_epoch = {int(r["epoch"]): r for r in epochs}
    test_last = None
    if lasts and int(lasts[-1]["epoch"]) == last_epoch:
        test_last = lasts[-1].get("test.top1")
    elif best is not None and best_epoch == last_epoch:
        test_last = best.get("test.top1")
    return {"best_epoch": best_epoch, "test_top1_best": best.get("test.top1") if best else None,
            "val_top1_best": by_epoch.get(best_epoch, {}).get("val.top1"), "last_epoch": last_epoch,
            "test_top1_last": test_last, "val_top1_last": by_epoch.get(last_epoch, {}).get("val.top1")}


def row_kind(stage: str) -> str:
    if stage.startswith("teacher"):
        return "teacher"
    if stage == "baseline":
        return "baseline"
    return "method"


def collect(sweep: Sweep, runs: list, out: Path) -> tuple[list, list]:
    """``(records, problems)`` for the finished runs: one record per run x row."""
    from kdkit.config import get_path

    records, problems = [], []
    for run in runs:
        if run_status(run.run_dir) != "done":
            continue
        metrics = _read_jsonl(run.run_dir / "metrics.jsonl")
        try:
            config = yaml.safe_load((run.run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        for row, stage in run.cell.rows.items():
            try:
                m = stage_metrics(run.run_dir, stage, metrics)
            except KdkitError as exc:
                problems.append(f"{run.label} row {row}: {exc}")
                continue
            records.append({
                "sweep": sweep.name, "cell": run.cell.name, "method": run.cell.method, "row": row,
                "stage": stage, "kind": row_kind(stage), "grid": dict(run.point.values), "grid_id": run.point.id,
                "seed": run.seed, "run_dir": os.path.relpath(run.run_dir, Path(out).resolve()),
                "select_on": get_path(config, "checkpoint.select_on", "val"), **m,
                "wall_s": _read_wall(out, run)})
    return records, problems


def _stats(values: list) -> dict:
    values = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}


def row_id(row: str, point_label: str) -> str:
    return f"{row} [{point_label}]" if point_label else row


def make_table(sweep: Sweep, records: list, runs: list) -> dict:
    """``table.json``: per row and grid point, mean ± sample std over seeds of the test top-1 at the
    validation-best epoch (``best``) and at the last epoch (``last``), and the validation top-1."""
    points = {p.id: p for p in sweep.grid_points()}
    selected = {r.cell.name for r in runs}
    ran_cells = [c.name for c in sweep.file_order if c.name in selected]
    rows = []
    for cell in sweep.file_order:
        if cell.name not in ran_cells:
            continue
        for row, stage in cell.rows.items():
            for point in points.values():
                recs = [r for r in records if r["cell"] == cell.name and r["row"] == row and r["grid_id"] == point.id]
                select_on = sorted({r["select_on"] for r in recs}) or ["val"]
                rows.append({
                    "id": row_id(row, point.label), "row": row, "cell": cell.name, "method": cell.method,
                    "stage": stage, "kind": row_kind(stage), "grid": dict(point.values),
                    "select_on": "/".join(select_on), "seeds": [r["seed"] for r in recs],
                    "best": _stats([r["test_top1_best"] for r in recs]),
                    "last": _stats([r["test_top1_last"] for r in recs]),
                    "val_best": _stats([r["val_top1_best"] for r in recs]),
                    # per seed, so that a slice of the seeds can be compared with this table
                    "per_seed": {str(r["seed"]): {"best": r["test_top1_best"], "last": r["test_top1_last"]}
                                 for r in recs}})
    _add_paired_gains(rows)
    return {
        "sweep": sweep.name, "metric": "test top-1 (%)",
        "selections": {"best": "test top-1 at the epoch with the best validation top-1 (checkpoint.select_on; "
                               "'last' where a run has no validation) — never selected on test",
                       "last": "test top-1 at the last epoch"},
        "std": "sample standard deviation over seeds (n-1); null for one seed",
        "cells": ran_cells, "seeds": sorted({r.seed for r in runs}), "rows": rows}


def _add_paired_gains(rows: list) -> None:
    """Each method row's gain over the baseline row of its grid point, paired by seed (the baseline and
    the distilled student of one seed share the data split and the initial weights, so the paired
    difference is the spread that matters): ``gain`` = stats of ``method - baseline`` at val-best, plus
    ``wins`` (seeds where the method is ahead).  Only when the grid point has exactly one baseline row."""
    by_point: dict = {}
    for r in rows:
        by_point.setdefault(json.dumps(r["grid"], sort_keys=True), []).append(r)
    for group in by_point.values():
        baselines = [r for r in group if r["kind"] == "baseline"]
        if len(baselines) != 1:
            continue
        base = baselines[0]["per_seed"]
        for r in group:
            if r["kind"] != "method":
                continue
            diffs = [v["best"] - base[s]["best"] for s, v in r["per_seed"].items()
                     if s in base and v["best"] is not None and base[s]["best"] is not None]
            r["gain"] = {**_stats(diffs), "wins": sum(d > 0 for d in diffs), "baseline": baselines[0]["id"]}


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:.2f}"


def format_table(table: dict) -> str:
    lines = [f"# {table['sweep']}: {table['metric']}", "",
             ("Mean ± sample std over seeds.  **val-best**: the epoch with the best validation top-1 "
              "(checkpoint.select_on=val); **last**: the last epoch.  No number is selected on the test split."), "",
             "| row | cell | method | test top-1 @ val-best | test top-1 @ last | val top-1 @ val-best "
             "| gain over baseline (paired) | n seeds |",
             "|---|---|---|---|---|---|---|---|"]
    notes = set()
    for r in table["rows"]:
        name = r["id"]
        if r["select_on"] != "val":
            name += " †"
            notes.add("† checkpoint.select_on=last: no validation split, the selected epoch is the last one.")
        n = str(r["best"]["n"]) + (f" (last: {r['last']['n']})" if r["last"]["n"] != r["best"]["n"] else "")
        gain = r.get("gain")
        gain_text = "-" if not gain or gain["mean"] is None else (
            f"{gain['mean']:+.2f}" + (f" ± {gain['std']:.2f}" if gain["std"] is not None else "")
            + f" ({gain['wins']}/{gain['n']})")
        lines.append(f"| {name} | {r['cell']} | {r['method']} | {_pm(r['best'])} | {_pm(r['last'])} | "
                     f"{_pm(r['val_best'])} | {gain_text} | {n} |")
    if any(r.get("gain") for r in table["rows"]):
        notes.add("gain over baseline (paired): mean ± std over seeds of (method - baseline) at val-best, each "
                  "seed's student against the same seed's baseline; (k/n): seeds where the method is ahead.")
    lines += [""] + sorted(notes) + ([""] if notes else [])
    lines.append(f"seeds: {', '.join(map(str, table['seeds']))}; cells: {', '.join(table['cells'])}")
    return "\n".join(lines) + "\n"


def plot_table(table: dict, path: Path) -> Path | None:
    """``table.png``: one line per row, sorted by mean; filled = val-best, hollow = last epoch; error
    bars ± std; teachers, baselines and methods in distinct colours and markers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return None
    rows = [r for r in table["rows"] if r["best"]["mean"] is not None or r["last"]["mean"] is not None]
    rows.sort(key=lambda r: (r["best"]["mean"] if r["best"]["mean"] is not None else -math.inf))
    style = {"teacher": ("tab:gray", "s"), "baseline": ("tab:orange", "D"), "method": ("tab:blue", "o")}
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.42 * max(len(rows), 1)))
    for y, r in enumerate(rows):
        color, marker = style[r["kind"]]
        for sel, dy, face in (("best", 0.12, color), ("last", -0.12, "none")):
            s = r[sel]
            if s["mean"] is not None:
                ax.errorbar(s["mean"], y + dy, xerr=s["std"] or 0.0, fmt=marker, color=color, mfc=face,
                            capsize=3, markersize=6)
    ax.set_yticks(range(len(rows)), [r["id"] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"{table['metric']}, mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=k) for k, (c, m) in style.items()
               if any(r["kind"] == k for r in rows)]
    handles += [Line2D([], [], color="k", marker="o", linestyle="", label="val-best epoch"),
                Line2D([], [], color="k", marker="o", mfc="none", linestyle="", label="last epoch")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(f"{table['sweep']} (seeds {', '.join(map(str, table['seeds']))})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_table(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--compare: reference table not found: {path}")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"--compare {path}: not JSON ({exc})") from None
    if (not isinstance(table, dict) or not isinstance(table.get("rows"), list)
            or not all(isinstance(r, dict) and "id" in r and isinstance(r.get("best"), dict) for r in table["rows"])):
        raise ConfigError(f"--compare {path}: not a kdkit sweep table.json (no rows with id and best)")
    return table


def _reference_mean(ref: dict, sel: str, seeds: list):
    """The reference's mean of ``sel`` over ``seeds`` — the seeds this run has — when it stores per-seed
    values for all of them (a slice of the seeds is compared seed for seed), else its mean over its own."""
    per_seed = ref.get("per_seed") or {}
    values = [(per_seed.get(str(s)) or {}).get(sel) for s in seeds]
    if seeds and sorted(seeds) != sorted(ref.get("seeds") or []) and all(v is not None for v in values):
        return statistics.fmean(float(v) for v in values)
    return (ref.get(sel) or {}).get("mean")


def compare_tables(table: dict, reference: dict, tolerance: float) -> tuple[list, int]:
    """Lines of a comparison and the number of rows outside ``|mean - ref_mean| <= tolerance``; the
    reference mean is taken over the seeds this table has where the reference stores them per seed."""
    ours = {r["id"]: r for r in table["rows"]}
    lines, failed, ok, skipped = [], 0, 0, []
    for ref in reference["rows"]:
        rid = ref["id"]
        mine = ours.get(rid)
        if mine is None:
            skipped.append(f"{rid} (not run)")
            continue
        parts, bad = [], False
        for sel, title in (("best", "val-best"), ("last", "last")):
            rm, m = _reference_mean(ref, sel, mine.get("seeds") or []), (mine.get(sel) or {}).get("mean")
            if rm is None or m is None:
                continue
            diff = m - rm
            out = abs(diff) > tolerance
            bad |= out
            parts.append(f"@{title} {m:.2f} vs {rm:.2f} ({diff:+.2f}{' > ' if out else ' <= '}{tolerance:g})")
        if not parts:
            skipped.append(f"{rid} (no results)")
            continue
        failed += bad
        ok += not bad
        lines.append(f"  {'OUT OF BAND' if bad else 'ok'}: {rid}: " + "; ".join(parts))
    if skipped:
        lines.append(f"  not compared: {', '.join(skipped)}")
    new = [rid for rid in ours if rid not in {r['id'] for r in reference['rows']}]
    if new:
        lines.append(f"  not in the reference: {', '.join(new)}")
    lines.append(f"compare: {ok} row(s) within ±{tolerance:g} points, {failed} outside")
    return lines, failed


# --- the sweep -----------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    from kdkit.engine.checkpoint import atomic_write_text

    atomic_write_text(Path(path), text)


def _prepare_out(sweep: Sweep, out: Path, create: bool) -> None:
    """Copy the sweep file into OUT; refuse an OUT that holds another sweep."""
    copy_path = out / SWEEP_FILE
    if copy_path.is_file():
        try:
            stored = yaml.safe_load(copy_path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            stored = None
        if stored != sweep.data:
            raise KdkitError(f"--out {out} holds a sweep with a different config ({copy_path}); "
                             "run this one with --out elsewhere (or restore that file)")
        return
    if not create:
        raise KdkitError(f"--no-run: {out} holds no sweep ({copy_path} is missing)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KdkitError(f"--out {out} exists and is not a kdkit sweep directory (no {SWEEP_FILE}); "
                         "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    text = (sweep.source.read_text(encoding="utf-8") if sweep.source is not None
            else yaml.safe_dump(sweep.data, sort_keys=False))
    _write_text(copy_path, text)


def _write_results(out: Path, records: list) -> None:
    _write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def run_sweep(config: str | Path, out: str | Path | None = None, cells: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, compare: str | Path | None = None, tolerance: float = 1.0,
              no_run: bool = False, plugin_modules: Iterable[str] = (), manager=None,
              echo: Callable[[str], None] | None = None, stdout: Callable[[str], None] | None = None) -> int:
    """``kdkit sweep``; returns the exit status (0, or :data:`RESULTS_FAILED` for failed runs / rows out of band)."""
    stdout = stdout or (lambda m: print(m, flush=True))
    if tolerance is None or not tolerance >= 0:
        raise ConfigError(f"--tolerance must be a number >= 0 (points of top-1), got {tolerance}")
    sweep = load_sweep(config)
    out = Path(out) if out is not None else Path("sweeps") / re.sub(r"[^A-Za-z0-9_.-]", "_", sweep.name)
    reference = load_table(compare) if compare is not None else None
    runs = plan(sweep, out, cells, seeds)
    # the whole file is checked, not only the slice: a typo in any cell fails before anything runs
    check_configs(plan(sweep, out), manager)
    _prepare_out(sweep, out, create=not no_run)
    log = _Log(out / "sweep.log", echo)
    with lock_directory(out, f"sweep directory {out}", "wait for it to finish or choose another --out"):
        return _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, list(plugin_modules))


def _execute(sweep, runs, out, log, stdout, reference, tolerance, no_run, plugin_modules) -> int:
    total = len(runs)
    status = {r.key: run_status(r.run_dir) for r in runs}
    todo = sum(s != "done" for s in status.values())
    log(f"kdkit sweep {sweep.name}: {total} run(s) in {out} ({total - todo} done, {todo} to run"
        + (", --no-run" if no_run else "") + ")")
    failed: dict[tuple, str] = {}
    ran_times: list[float] = []
    t_start = time.perf_counter()
    left = todo
    records: list = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{total}] {run.label}"
        st = status[run.key]
        if st == "done":
            log(f"{head}: done, skipped ({os.path.relpath(run.run_dir, out.resolve())})")
            continue
        if no_run:
            log(f"{head}: not run ({st}; --no-run)")
            continue
        broken = [d for d in run.cell.deps if (d, run.point.id, run.seed) in failed
                  or run_status(run_dir_of(out, d, run.point, run.seed)) != "done"]
        if broken:
            failed[run.key] = f"needs cell {broken[0]} (same seed and grid point), which did not finish"
            log(f"{head}: SKIPPED: {failed[run.key]}")
            left -= 1
            continue
        how = {"new": "running", "restart": "restarting (its directory had no checkpoint)",
               "resume": "resuming (kdkit train --resume)"}[st]
        log(f"{head}: {how}")
        code, seconds, tail = _run_child(run, st, out, plugin_modules)
        _add_wall(out, run, seconds)
        left -= 1
        ran_times.append(seconds)
        eta = statistics.fmean(ran_times) * left
        timing = f"elapsed {_fmt_time(time.perf_counter() - t_start)}, ~{_fmt_time(eta)} left ({left} run(s))"
        if code == 0 and run_status(run.run_dir) == "done":
            log(f"{head}: finished in {seconds:.1f}s; {timing}")
        else:
            last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
            failed[run.key] = f"exit {code}: {last}"
            log(f"{head}: FAILED (exit {code}) after {seconds:.1f}s; {timing}; its last output lines "
                f"({_child_log(out, run)}):\n" + "\n".join("    " + ln for ln in tail.splitlines()))
        records, _ = collect(sweep, runs, out)
        _write_results(out, records)

    records, problems = collect(sweep, runs, out)
    _write_results(out, records)
    table = make_table(sweep, records, runs)
    _write_text(out / "table.json", json.dumps(table, indent=2) + "\n")
    text = format_table(table)
    _write_text(out / "table.md", text)
    png = plot_table(table, out / "table.png")
    if png is None:
        log("kdkit sweep: matplotlib is missing, no table.png (pip install kdkit[plot])")
    stdout(text.rstrip("\n"))
    status_code = 0
    for p in problems:
        log(f"kdkit sweep: {p}")
    if problems:
        status_code = RESULTS_FAILED
    if failed:
        names = "; ".join(f"{k[0]} seed={k[2]}" + (f" {k[1]}" if k[1] != "default" else "") + f" ({v})"
                          for k, v in failed.items())
        log(f"kdkit sweep: {len(failed)} of {total} run(s) failed: {names}")
        status_code = RESULTS_FAILED
    if reference is not None:
        lines, out_of_band = compare_tables(table, reference, tolerance)
        for line in lines:
            stdout(line)
        if out_of_band:
            status_code = RESULTS_FAILED
    done = sum(run_status(r.run_dir) == "done" for r in runs)
    log(f"kdkit sweep: {done}/{total} run(s) done in {_fmt_time(time.perf_counter() - t_start)}; "
        f"results in {out / 'results.jsonl'}, table in {out / 'table.md'}")
    return status_code


# --- the plugin the runs load: test top-1 at the last epoch ----------------------------------

@hookimpl
def kdkit_after_evaluation(trainer, epoch, metrics):
    """At a stage's last epoch, the test split with that epoch's weights (see the module docs)."""
    stage = trainer.stage
    if stage.test_data is None or epoch != trainer.epochs - 1:
        return
    from kdkit.engine.checkpoint import capture_rng_state, restore_rng_state

    rng = capture_rng_state()
    try:
        test = trainer.evaluate(stage.test_data)
    finally:
        restore_rng_state(rng)
    record = {"stage": stage.name, "epoch": epoch, "step": trainer.step, "split": LAST_EPOCH_SPLIT}
    record.update({f"test.{k}": v for k, v in test.items()})
    trainer.ctx.append_metrics(record)
