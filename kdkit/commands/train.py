"""``kdkit train``: run a distillation method."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", metavar="NAME", default=None,
                        help="the method to run (default: kd; with --resume, the run's own method)")
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML config file (safe_load)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="override one config value, dotted key, YAML value (repeatable; wins over --config)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory (default: runs/<method>-<timestamp>)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run in place, with its saved config")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")


def run(args: argparse.Namespace) -> int:
    from kdkit.engine import train

    method = args.plugin if (args.plugin or args.resume) else "kd"
    result = train(method=method, config_file=args.config, sets=args.sets, out=args.out, resume=args.resume,
                   print_config=args.print_config)
    if args.print_config:
        print(result, end="")
    return 0
