"""``kdkit train``: run a distillation method.

Exit status (besides the CLI's 0 / 1 / 2): :data:`EXIT_DIVERGED` when a non-finite loss stopped the
run — a result, not an error: ``RUN_DIR/diverged.json`` records it and the last good checkpoint is
kept; ``--resume`` of such a run reports the divergence again (same status) instead of training into it.
"""
from __future__ import annotations

import argparse
import sys

#: exit status of a run stopped by a non-finite loss (recorded in RUN_DIR/diverged.json)
EXIT_DIVERGED = 4

EPILOG = (f"Exit status: 0 trained; {EXIT_DIVERGED} diverged (a non-finite loss stopped the run: one line "
          "'kdkit: diverged: ...', the record in RUN_DIR/diverged.json, the last good checkpoint kept; --resume "
          "of that run reports it again instead of training into it — delete diverged.json to retry); "
          "2 a user error; 1 a bug.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--method", metavar="NAME", default=None,
                        help="the method to run (default: kd; with --resume, the run's own method)")
    parser.add_argument("--plugin", metavar="NAME", default=None, dest="plugin_alias",
                        help="deprecated alias of --method NAME")
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


def _chosen_method(args: argparse.Namespace) -> str | None:
    """The method named by ``--method`` (or its deprecated alias ``--plugin``, which warns once on stderr)."""
    chosen = args.method
    if args.plugin_alias is not None:
        print(f"kdkit: warning: --plugin {args.plugin_alias} is deprecated; use --method {args.plugin_alias}",
              file=sys.stderr)
        if chosen is not None and chosen != args.plugin_alias:
            from kdkit.errors import KdkitError

            raise KdkitError(f"--method {chosen} and --plugin {args.plugin_alias} name different methods: "
                             f"give only --method NAME")
        chosen = args.plugin_alias
    return chosen


def run(args: argparse.Namespace) -> int:
    chosen = _chosen_method(args)
    method = chosen if (chosen is not None or args.resume) else "kd"  # --method '' names no method
    if args.help_config:
        if args.resume:
            from kdkit.errors import ConfigError

            raise ConfigError("--help-config lists a method's keys: use it with --method NAME, not --resume")
        from kdkit.config import method_config_help

        print(method_config_help(method, args.config, args.sets), end="")
        return 0
    from kdkit.engine import train

    if args.accept_config_change and not args.resume:
        from kdkit.errors import KdkitError

        raise KdkitError("--accept-config-change only applies to --resume RUN_DIR")
    from kdkit.engine.trainer import DivergedError

    try:
        result = train(method=method, config_file=args.config, sets=args.sets, out=args.out, resume=args.resume,
                       print_config=args.print_config, accept_config_change=args.accept_config_change)
    except DivergedError as exc:
        print(f"kdkit: diverged: {exc}".replace("\n", "\\n"), file=sys.stderr)
        return EXIT_DIVERGED
    if args.print_config:
        print(result, end="")
    return 0
