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
    # Python's compiled modules written (to the gitignored __pycache__ folders, as Python does by default): with
    # PYTHONDONTWRITEBYTECODE set (as some machines' environments have), each of the suite's hundreds of kdkit
    # commands compiled every kdkit module it imports from source again, 0.1-0.2 s of CPU each, and each worker
    # rewrote and compiled every test module.  Not a session-private PYTHONPYCACHEPREFIX: under one, the pip-
    # compiled modules of torch, torchvision and the rest are not found either, and every worker compiled them
    # again (a fresh clone's collection 17.4 s -> 9.1 s on 2 cores, 5.6 s on the next run).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    _short_openmp_spin(config)


def _short_openmp_spin(config):
    """The tests that train in pytest's own processes get the OpenMP spin kdkit's CLI sets (kdkit.runtime):
    with libgomp's default spin, the threads of one pytest worker's torch spun for a millisecond on every
    wait, while the other worker needed the core.  Set only while torch loads its libgomp (which reads it
    then), so the commands the tests start still get the environment the test gives them."""
    in_a_test_process = hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)
    if not in_a_test_process or {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ) or "torch" in sys.modules:
        return
    from kdkit.runtime import OPENMP_SPIN

    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN
    try:
        import torch  # noqa: F401 - loads libgomp with the spin count above
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def pytest_collection_modifyitems(config, items):
    # The end-to-end runs (marked slow) first, longest first where the marker estimates its seconds
    # (`pytest.mark.slow(seconds=N)`), so that under pytest-xdist (which hands out whole files, in the order
    # their first test comes here) the longest start while the others fill the remaining workers, instead of
    # one of them starting last and the suite waiting on it; otherwise the collection order.
    def longest_first(item):
        slow = item.get_closest_marker("slow")
        return (slow is None, -(slow.kwargs.get("seconds", 0) if slow else 0))

    items.sort(key=longest_first)


@pytest.fixture(autouse=True, scope="session")
def sweep_runs_from_a_prestarted_process():
    """A sweep a test runs in process starts its runs from kdkit_prestarted's process, which has already
    imported torch (3-5 s of CPU less per run); they are still processes of their own."""
    import kdkit_prestarted

    from kdkit.sweep.executors import LocalExecutor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalExecutor, "popen", staticmethod(kdkit_prestarted.Popen))
        yield


@pytest.fixture
def manager():
    """A process-wide plugin manager with the engine test plugin and kdkit_tensorboard."""
    from kdkit_engine_testutil import testing_manager

    with testing_manager() as pm:
        yield pm


@pytest.fixture
def clean_plugin_manager(monkeypatch):
    """The process-wide plugin manager built anew for the test, with no plugin environment variable
    set (KDKIT_PLUGINS, KDKIT_BLOCK_PLUGINS, ...), and dropped after it: what a test's CLI call or
    --plugins-module loads does not leak into the next test."""
    from kdkit import plugins as kp

    for var in (kp.ENV_DISABLE_AUTOLOAD, kp.ENV_BLOCK, kp.ENV_STRICT, kp.ENV_MODULES):
        monkeypatch.delenv(var, raising=False)
    kp.reset_plugin_manager()
    yield
    kp.reset_plugin_manager()


@pytest.fixture
def lean_plugin_manager(monkeypatch):
    """Like :func:`clean_plugin_manager`, with soda and wordnet_relax blocked (faster start-up where
    the test needs neither)."""
    from kdkit import plugins as kp

    monkeypatch.setenv(kp.ENV_BLOCK, "soda,wordnet_relax")
    kp.reset_plugin_manager()
    yield
    kp.reset_plugin_manager()
