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


def run(args: argparse.Namespace) -> int:
    from kdkit.sweep import run_sweep

    if args.tolerance < 0:
        raise KdkitError(f"--tolerance must be >= 0, got {args.tolerance}")
    return run_sweep(args.config, args.out, cells=args.cells, seeds=args.seeds, compare=args.compare,
                     tolerance=args.tolerance, no_run=args.no_run, plugin_modules=args.plugins_module or ())
