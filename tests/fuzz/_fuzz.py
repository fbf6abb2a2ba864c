"""Shared settings for the fuzz targets: `from _fuzz import fuzz_settings`.

The budget comes from KDKIT_FUZZ_EXAMPLES (default 200, a few seconds per target, so CI stays
quick); `KDKIT_FUZZ_EXAMPLES=10000 pytest -m fuzz tests/fuzz` is the long run.
"""
import os

from hypothesis import HealthCheck, settings

DEFAULT_FUZZ_EXAMPLES = 200


def fuzz_examples() -> int:
    return int(os.environ.get("KDKIT_FUZZ_EXAMPLES", DEFAULT_FUZZ_EXAMPLES))


def fuzz_settings(**overrides) -> settings:
    """Hypothesis settings for one fuzz target; keyword arguments override the defaults."""
    options = dict(
        max_examples=fuzz_examples(),
        deadline=None,
        # No .hypothesis directory in the tree; CI replays the same inputs on every run.
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    options.update(overrides)
    return settings(**options)
