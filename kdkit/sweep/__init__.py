"""``kdkit sweep CONFIG``: a reproduction harness — cells x seeds x grid points, stored results,
mean ± std tables with a named checkpoint selection, resume, and a comparison with a stored table.

The sweep file (YAML, read by :func:`kdkit.config.files.load_yaml`: safe loading, no duplicate keys)::

    name: fashion_mnist_methods     # optional (default: the file's stem); names the table
    seeds: [0, 1, 2]                # required: distinct integers >= 0; each run gets --set seed=S
    base:                           # optional: dotted key -> value, applied to every run (--set)
      data.name: fashion_mnist
      train.epochs: 15
    grid:                           # optional: dotted key -> non-empty list; the cartesian
      train.lr: [0.1, 0.05]         #   product of the lists is run for every cell and seed
    cells:                          # required, non-empty: a cell = one method + its overrides
      - name: kd                    # required, unique, [A-Za-z0-9][A-Za-z0-9_.-]*, at most 100
                                    #   characters, unique ignoring case (a directory)
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
also be set by ``base`` or by a cell (the grid would not vary it).  Values are plain YAML values (no
date, ``!!binary`` or ``!!set``), passed to ``kdkit train --set KEY=VALUE`` unchanged.  ``{cell:NAME}`` in a string value of a cell's
``set`` is replaced by the run directory (absolute) of cell ``NAME`` at the same seed and grid
point, and makes ``NAME`` run first (unknown names and cycles are errors).  Row names are the
table's rows and are unique across the sweep.

Everything is checked before anything runs: the file's keys and values, then every run's config
with :func:`kdkit.config.resolve_method_config` (unknown keys, types, the method's own rules —
no run directory is created), and a config whose ``checkpoint.select_on`` is ``test`` is refused
(a sweep table never selects on the test split).  Errors are one line (exit 2).  The size
(cells x grid points x seeds) is printed first, before planning; a file of more than
:data:`kdkit.sweep.runner.MAX_RUNS_WITHOUT_YES` (1000) runs is refused unless ``--yes``.

Runs: each run is ``python -m kdkit --plugins-module kdkit.sweep train --method METHOD --out
OUT/runs/<cell>/<grid-id>/seed<S> --set ...`` in a subprocess, or a submitit job
(``--executor submitit``, :mod:`kdkit.sweep.executors`), up to ``--jobs N`` at once, each after the
runs it depends on; every run gets ``--threads`` torch threads (default 1: a run's numbers depend on
its thread count, ``--jobs`` must not change them).  A run ends *trained* (``summary.json``),
*diverged* (a non-finite loss stopped it: ``diverged.json``, ``kdkit train`` exit 4 — a result) or
*failed* (anything else: the tail of its output goes into ``OUT/sweep.log``, its dependents are
skipped, and the sweep exits 3 at the end naming the failed runs; it exits 0 when every run trained
or diverged).  ``<grid-id>`` is ``default`` without a grid, else ``g<i>-<key=value,...>``.  The
child's output is in ``OUT/logs/<cell>/<grid-id>/seed<S>.log``, its wall time and last failure in
``seed<S>.json`` beside it.

Resume: running the same command again skips every run whose directory holds a ``summary.json``
(``done, skipped``) or a ``diverged.json`` (``diverged (epoch e/E), skipped``), continues a run
killed mid-way with ``kdkit train --resume`` (it has a ``checkpoints/<stage>/last.pt``) and restarts
a run that has no checkpoint yet from an empty directory.  The sweep file is copied to ``OUT/sweep.yaml`` under OUT's lock; a different sweep file (as parsed:
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

Outputs in ``OUT``: ``results.jsonl`` (one record per run x row of every run that ended, in run
order whatever ``--jobs``: ``sweep, cell, method, row, stage, kind, grid, grid_id, seed, run_dir,
select_on, status, diverged, error, best_epoch, test_top1_best, val_top1_best, last_epoch,
test_top1_last, val_top1_last, wall_s``; ``status`` ``trained`` / ``diverged`` (``diverged``:
stage, epoch, epochs, step, loss) / ``failed`` (``error``); epochs 0-based as in ``metrics.jsonl``;
``wall_s`` the seconds of the sweep's attempts that ran to their end), ``table.json`` /
``table.md`` (per row and grid point: mean ± sample standard deviation over the seeds that trained
of the test top-1 at the validation-best epoch and at the last epoch, n seeds, and the seeds that
diverged — ``diverged (epoch e/E)`` in ``table.md`` — or failed) and ``table.png``.

``--compare REF.json --tolerance T``: rows present in both tables are compared; a row whose mean
(at either selection) is more than ``T`` points from the reference's leaves its band — one line
each, exit 3; so does a row where a seed diverged in one table and not in the other (seeds both
tables know); a row whose compared seeds diverged in both is ``ok``.  Reference rows not in this sweep are listed as not compared;
no row compared at all exits 3.  The reference's structure is checked when it is loaded, before
anything runs (:func:`kdkit.sweep.tables.load_table`: no rows, no row in common with this sweep, a
repeated row, a mean that is not a finite number or null are one-line errors).  ``--no-run``
aggregates (and compares) an existing ``OUT`` without running anything.

The package, one module per concern: :mod:`kdkit.sweep.spec` (the sweep file),
:mod:`kdkit.sweep.runs` (the plan, config checks, run status), :mod:`kdkit.sweep.runner` (the
scheduler, locking, resume), :mod:`kdkit.sweep.executors` (local subprocesses, submitit jobs), :mod:`kdkit.sweep.tables` (results, tables, comparison),
:mod:`kdkit.sweep.plots` (``table.png``) and :mod:`kdkit.sweep.hook` (the plugin of the runs,
re-exported here because the runs register this module).

Importing this package does not import torch.
"""
from __future__ import annotations

# Every name kdkit.sweep had as one module stays importable from here; those outside __all__ are
# re-exported as "X as X".  kdkit_after_evaluation must be an attribute of this module: the runs
# register kdkit.sweep itself (--plugins-module kdkit.sweep).
from kdkit.errors import ConfigError as ConfigError
from kdkit.errors import KdkitError as KdkitError
from kdkit.sweep.hook import LAST_EPOCH_SPLIT
from kdkit.sweep.hook import kdkit_after_evaluation as kdkit_after_evaluation
from kdkit.sweep.plots import plot_table as plot_table
from kdkit.sweep.runner import RESULTS_FAILED as RESULTS_FAILED
from kdkit.sweep.runner import SWEEP_FILE, run_sweep
from kdkit.sweep.runs import RunSpec, check_configs, plan, run_status
from kdkit.sweep.runs import run_dir_of as run_dir_of
from kdkit.sweep.spec import CELL_KEYS as CELL_KEYS
from kdkit.sweep.spec import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from kdkit.sweep.spec import SWEEP_KEYS as SWEEP_KEYS
from kdkit.sweep.spec import Cell, GridPoint, Sweep, load_sweep, parse_sweep
from kdkit.sweep.spec import _set_item as _set_item
from kdkit.sweep.tables import (
    check_common_rows,
    collect,
    compare_tables,
    format_table,
    make_table,
    stage_metrics,
)
from kdkit.sweep.tables import load_table as load_table
from kdkit.sweep.tables import row_id as row_id
from kdkit.sweep.tables import row_kind as row_kind

__all__ = [
    "LAST_EPOCH_SPLIT",
    "SWEEP_FILE",
    "Cell",
    "GridPoint",
    "RunSpec",
    "Sweep",
    "check_common_rows",
    "check_configs",
    "collect",
    "compare_tables",
    "format_table",
    "load_sweep",
    "make_table",
    "parse_sweep",
    "plan",
    "run_status",
    "run_sweep",
    "stage_metrics",
]
