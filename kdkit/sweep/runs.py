"""The runs of a sweep: :func:`plan` (cell x grid point x seed, each with its ``--set`` items and run
directory), :func:`check_configs` (every run's config resolved before anything runs),
:func:`run_status` (done / resume / restart / new) and the files the sweep keeps per run (the child's
log and its wall time)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kdkit.errors import ConfigError, KdkitError
from kdkit.sweep.spec import Cell, GridPoint, Sweep, _set_item, _substitute


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



def select(sweep: Sweep, cells: Iterable[str] | None = None, seeds: Iterable[int] | None = None) -> tuple:
    """``(cell names, seeds)`` of a slice: ``cells`` by name with their dependencies, ``seeds`` a subset
    of the sweep's (``None``: all); an unknown name or seed is an error."""
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
    return wanted, seed_list



def plan(sweep: Sweep, out: str | Path, cells: Iterable[str] | None = None,
         seeds: Iterable[int] | None = None) -> list:
    """The runs of the sweep (or of a slice), in run order: cell (dependencies first), grid point, seed.

    ``cells`` selects cells by name (their dependencies are added); ``seeds`` a subset of the seeds.
    """
    wanted, seed_list = select(sweep, cells, seeds)
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
    method's rules; no run directory is created) and check its cell's rows against the stages the
    method declares for it (:meth:`kdkit.Method.stages`).  Returns ``{run.key: config}``."""
    import kdkit
    from kdkit.config import resolve_method_config
    from kdkit.config.view import freeze_config
    from kdkit.methodspec import declared_stages

    manager = manager or kdkit.get_plugin_manager()
    configs = {}
    for run in runs:
        try:
            # weights named by {cell:NAME} appear when that cell has run: checked when this run starts
            config = resolve_method_config(run.cell.method, None, run.sets, manager, check_files=not run.cell.deps)
        except KdkitError as exc:
            raise type(exc)(f"cell {run.cell.name} ({run.label}): {exc}") from None
        if config["checkpoint"]["select_on"] == "test":
            raise ConfigError(f"cell {run.cell.name}: checkpoint.select_on=test selects checkpoints on the test "
                              "split; a sweep table never does (use val, the default, or last)")
        stages = declared_stages(manager.registry("methods").get(run.cell.method).factory, freeze_config(config))
        for row, stage in run.cell.rows.items():
            if stages is not None and stage not in stages:
                raise ConfigError(f"cell {run.cell.name} ({run.label}): row {row!r} reads stage {stage!r}, which "
                                  f"method {run.cell.method} does not train with this config (its stages: "
                                  f"{', '.join(stages)})")
        configs[run.key] = config
    return configs



def run_status(run_dir: Path) -> str:
    """``done`` (a complete summary.json), ``diverged`` (a non-finite loss stopped it: its
    ``diverged.json``; a result, not run again), ``resume`` (a checkpoint to continue from),
    ``restart`` (a directory without checkpoint) or ``new``."""
    from kdkit.engine.rundir import check_run_files

    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    check_run_files(run_dir)  # a FIFO summary.json blocked the sweep for ever
    try:
        if isinstance(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")), dict):
            return "done"
    except (OSError, ValueError):
        pass
    if divergence(run_dir) is not None:
        return "diverged"
    if (run_dir / "config.yaml").is_file() and any((run_dir / "checkpoints").glob("*/last.pt")):
        return "resume"
    return "restart"



def divergence(run_dir: Path) -> dict | None:
    """The run's divergence record (:data:`kdkit.engine.trainer.DIVERGED_FILE`), or ``None``."""
    from kdkit.engine.trainer import read_divergence

    return read_divergence(run_dir)



def diverged_at(record: dict) -> str:
    """``"epoch 2/10"`` (1-based, as train.log counts) of a divergence record."""
    epoch, epochs = record.get("epoch"), record.get("epochs")
    if not isinstance(epoch, int):
        return "epoch ?"
    return f"epoch {epoch + 1}" + (f"/{epochs}" if isinstance(epochs, int) else "")



def _child_log(out: Path, run: RunSpec) -> Path:
    return Path(out) / "logs" / run.cell.name / run.point.id / f"seed{run.seed}.log"



def _wall_file(out: Path, run: RunSpec) -> Path:
    return _child_log(out, run).with_suffix(".json")



def _read_attempts(out: Path, run: RunSpec) -> dict:
    """``logs/<cell>/<grid-id>/seed<S>.json``: ``{"wall_s": seconds of the attempts that ran to their
    end, "failed": why the last attempt failed (or null)}``."""
    try:
        data = json.loads(_wall_file(out, run).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}



def _read_wall(out: Path, run: RunSpec):
    try:
        return float(_read_attempts(out, run)["wall_s"])
    except (KeyError, TypeError, ValueError):
        return None



def _read_failure(out: Path, run: RunSpec) -> str | None:
    failed = _read_attempts(out, run).get("failed")
    return failed if isinstance(failed, str) else None



def _add_wall(out: Path, run: RunSpec, seconds: float, failed: str | None = None) -> None:
    """Add an attempt's seconds and say whether it failed (``failed``: why; ``None``: it did not)."""
    from kdkit.files import atomic_write_text

    previous = _read_wall(out, run) or 0.0
    path = _wall_file(out, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"wall_s": previous + seconds, "failed": failed}) + "\n")

