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
    parser.add_argument("--accept-config-change", action="store_true",
                        help="with --resume: continue even though RUN_DIR/config.yaml was edited since the run "
                             "started (the rest of the run uses the edited config)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("--help-config", action="store_true",
                        help="list the method's config keys (what each allows, its value, a one-line help) and exit")


def run(args: argparse.Namespace) -> int:
    method = args.plugin if (args.plugin is not None or args.resume) else "kd"  # --plugin '' names no method
    if args.help_config:
        if args.resume:
            from kdkit.errors import ConfigError

            raise ConfigError("--help-config lists a method's keys: use it with --plugin NAME, not --resume")
        from kdkit.config import method_config_help

        print(method_config_help(method, args.config, args.sets), end="")
        return 0
    from kdkit.engine import train

    if args.accept_config_change and not args.resume:
        from kdkit.errors import KdkitError

        raise KdkitError("--accept-config-change only applies to --resume RUN_DIR")
    result = train(method=method, config_file=args.config, sets=args.sets, out=args.out, resume=args.resume,
                   print_config=args.print_config, accept_config_change=args.accept_config_change)
    if args.print_config:
        print(result, end="")
    return 0
