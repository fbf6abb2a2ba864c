"""``kdkit`` subcommands: each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.

:data:`kdkit.cli.COMMANDS` maps command names to modules, imported only when that command runs.
"""
