"""``kdkit sweep CONFIG``: run a sweep file (cells x seeds x grid points) into ``--out DIR``, write
``results.jsonl``, ``table.md`` / ``table.json`` / ``table.png`` and optionally compare the table
with a stored one.  The sweep file and everything else are documented in :mod:`kdkit.sweep`."""
from __future__ import annotations

import argparse

from kdkit.errors import KdkitError


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="the sweep file (YAML; see kdkit.sweep)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="sweep directory (default: sweeps/<name>); run the same command again to resume")
    parser.add_argument("--cells", metavar="A,B", type=_names, default=None,
                        help="run only these cells (and the cells they depend on)")
    parser.add_argument("--seeds", metavar="S,T", type=_seeds, default=None, help="run only these seeds")
    parser.add_argument("--compare", metavar="REF.json", default=None,
                        help="compare the table with a stored table.json; exit 3 when a row leaves its band")
    parser.add_argument("--tolerance", metavar="T", type=float, default=1.0,
                        help="band of --compare: |mean - reference mean| <= T points of top-1 (default 1.0)")
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing: tabulate (and compare) the finished runs of an existing --out")
    parser.add_argument("--yes", action="store_true",
                        # 1000: kdkit.sweep.runner.MAX_RUNS_WITHOUT_YES (not imported here: kdkit --help stays quick)
                        help="run a sweep file of more than 1000 runs (cells x grid points x seeds; "
                             "without it such a sweep is refused before anything is planned)")
    parser.add_argument("--jobs", metavar="N", type=_positive, default=1,
                        help="runs in flight at once (default 1); a run waits for the runs it depends on "
                             "({cell:NAME}); results.jsonl is the same for any N")
    parser.add_argument("--threads", metavar="T", type=_positive, default=None,
                        help="torch CPU threads of each run (OMP_NUM_THREADS; default: what kdkit train uses "
                             "here) — a run's numbers depend on it, --jobs does not change them")
    parser.add_argument("--executor", choices=["local", "submitit"], default="local",
                        help="where runs execute: local subprocesses (default), or submitit jobs — Slurm where "
                             "sbatch exists (pip install 'kdkit[cluster]'); see docs/sweep.md")
    parser.add_argument("--executor-opt", metavar="KEY=VALUE", action="append", default=[], dest="executor_opts",
                        help="a submitit parameter for every run's job (repeatable), e.g. slurm_partition=gpu "
                             "timeout_min=240 gpus_per_node=1 cpus_per_task=8; cluster=local runs the jobs here")
    parser.epilog = ("Exit status: 0 every run trained or diverged (a non-finite loss: shown as 'diverged (epoch "
                     "e/E)' in the table, not in the means); 3 a run failed or a row left its --compare band; "
                     "2 a user error; 130/143 stopped by SIGINT/SIGTERM (passed on to the running runs, "
                     "which are resumed next time).")


def run(args: argparse.Namespace) -> int:
    from kdkit.sweep import run_sweep

    if args.tolerance < 0:
        raise KdkitError(f"--tolerance must be >= 0, got {args.tolerance}")
    from kdkit.sweep.executors import parse_executor_opts

    if args.executor_opts and args.executor != "submitit":
        raise KdkitError("--executor-opt only applies to --executor submitit")
    return run_sweep(args.config, args.out, cells=args.cells, seeds=args.seeds, compare=args.compare,
                     tolerance=args.tolerance, no_run=args.no_run, plugin_modules=args.plugins_module or (),
                     jobs=args.jobs, threads=args.threads if args.threads is not None else "auto",
                     executor=args.executor, executor_opts=parse_executor_opts(args.executor_opts),
                     yes=args.yes)
