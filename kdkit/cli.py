"""The ``kdkit`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; only the module of the command being run is imported, so
``kdkit --help`` imports neither torch nor any plugin.

Exit status: 0 success; 2 user error or usage error (one line ``kdkit: error: ...`` on stderr,
traceback only with ``--debug``): a :class:`~kdkit.errors.KdkitError`, a bad command line, or an
``OSError`` of the environment (missing file, permission, disk full); 1 a bug in kdkit or a plugin
(its traceback and a "please report" line); 130 interrupted; 141 stdout closed early (``| head``).
A command may return another status of its own (``kdkit sweep``: 3 when a run failed or a row left its band;
``kdkit train``: 4 when a non-finite loss stopped the run, recorded in its ``diverged.json``).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from typing import Sequence

PROG = "kdkit"

#: subcommand -> (module, one-line help).  Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kdkit.commands.train", "train a distillation method (--method NAME selects it)"),
    "eval": ("kdkit.commands.eval", "evaluate the checkpoints of a run directory"),
    "plot": ("kdkit.commands.plot", "write PNG training curves of a run directory"),
    "plugins": ("kdkit.commands.plugins", "list the installed plugins, their hooks and components"),
    "info": ("kdkit.commands.info", "show versions, the compiled extension, devices and plugins"),
    "bench": ("kdkit.bench", "benchmark the compiled ops"),
    "encode": ("kdkit.commands.encode", "encode images or texts of a trained hashing run into packed codes"),
    "search": ("kdkit.commands.search", "batched Hamming top-k over a packed code database"),
    "sweep": ("kdkit.commands.sweep", "run a reproduction sweep (cells x seeds) and tabulate mean ± std"),
    "layers": ("kdkit.commands.layers", "list the module paths of a model a feature term can tap, with their shapes"),
    "export": ("kdkit.commands.export", "write a trained stage of a run as a state dict, TorchScript or ONNX file"),
}

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away

BUG_REPORT = (f"{PROG}: internal error: this is a bug in kdkit or a plugin; please report it with the "
              "traceback above")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line pointing at --help (the usage text would bury the problem)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--debug / --plugins-module, accepted before and after the subcommand name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--debug", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="show full tracebacks for errors")
    parser.add_argument("--plugins-module", metavar="MOD", action="append",
                        default=default, dest="plugins_module",
                        help="also load the module MOD (dotted path, importable) as a plugin; "
                             "repeatable; env KDKIT_PLUGINS=mod1,mod2 does the same")


def _selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (skipping global options), before full parsing."""
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--plugins-module":
            skip = True
            continue
        if token == "--":
            return None
        if token.startswith("-"):
            continue
        return token if token in COMMANDS else None
    return None


def _version() -> str:
    from kdkit import __version__

    return __version__


def _import_command(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            from kdkit.errors import KdkitError

            raise KdkitError(f"command {name!r} is not available in this installation "
                             f"(module {module_name} is missing)") from exc
        raise


def build_parser(argv: Sequence[str] = ()) -> tuple[argparse.ArgumentParser, object | None]:
    """The parser; only the subcommand named in ``argv`` gets its full arguments."""
    parser = _Parser(
        prog=PROG,
        description="kdkit: plugin-based knowledge distillation for PyTorch.",
        epilog="Run 'kdkit COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)

    selected = _selected_command(argv)
    module = None
    for name, (_, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text[:1].upper()
                                    + help_text[1:] + ".", parents=[common])
        if name == selected:
            module = _import_command(name)
            module.add_arguments(sub)
    return parser, module


def _user_error(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    # one line even when a file name or a quoted value holds a line break
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _os_error_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        name = exc.filename
        extra = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.strerror}: {name}{extra}"
    return str(exc) or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kdkit`` command line; returns the exit status."""
    from kdkit.errors import KdkitError

    # Before torch loads: how OpenMP threads wait between parallel regions, and glibc's malloc
    # (kdkit.runtime says why and what was measured)
    from kdkit.runtime import configure

    configure()

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser, module = build_parser(argv)
        try:
            args, unknown = parser.parse_known_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors (status 2)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
        if unknown:  # named against the subcommand whose --help lists the valid options
            prog = f"{PROG} {args.command}" if getattr(args, "command", None) else PROG
            print(f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')",
                  file=sys.stderr)
            return EXIT_USAGE
        debug = bool(getattr(args, "debug", False))
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.plugins_module:
            from kdkit.plugins import add_plugin_modules

            add_plugin_modules(args.plugins_module)
        status = module.run(args)
        return 0 if status is None else int(status)
    except KdkitError as exc:
        return _user_error(str(exc), debug)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        return _user_error(_os_error_message(exc), debug)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `kdkit plugins | head -1`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # the environment (disk full, read-only file system), not kdkit
        return _user_error(_os_error_message(exc), debug)
    except Exception:  # noqa: BLE001 - anything else is a bug: its traceback, and who to tell
        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
