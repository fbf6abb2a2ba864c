"""Exceptions that mean "the user asked for something wrong".

The CLI prints a :class:`KdkitError` as one line and exits with status 2; any other
exception is a bug in kdkit or a plugin and keeps its traceback.
"""


class KdkitError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""


class ConfigError(KdkitError, ValueError):
    """An unknown config key, a value of the wrong type, or unreadable YAML."""


class PluginError(KdkitError):
    """A plugin failed to load, or two plugins registered the same component name."""


class UnknownComponentError(KdkitError, KeyError):
    """A component name that no plugin registered; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(KdkitError):
    """A missing, corrupt or inconsistent dataset file."""
