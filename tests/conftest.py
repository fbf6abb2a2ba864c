"""Suite-wide set-up: caches out of the user's home, and the engine's test helpers."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
# kdkit_engine_testutil / kdkit_engine_testplugin (tests/engine) serve the engine and method tests;
# plugins/ makes the built-in plugins importable even from an install that predates them.
for _p in (str(_TESTS / "engine"), str(_TESTS.parent / "plugins")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_configure(config):
    # Set before any test (and inherited by the CLI subprocesses tests start); tests that need a
    # cache of their own still override it with monkeypatch.
    if "KDKIT_CACHE_DIR" not in os.environ:
        os.environ["KDKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdkit-test-cache-")


@pytest.fixture
def manager():
    """A process-wide plugin manager with the engine test plugin and kdkit_tensorboard."""
    from kdkit_engine_testutil import testing_manager

    with testing_manager() as pm:
        yield pm
