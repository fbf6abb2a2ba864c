"""Suite-wide set-up: keep every cache the tests create out of the user's home."""
import os
import tempfile


def pytest_configure(config):
    # Set before any test (and inherited by the CLI subprocesses tests start); tests that need a
    # cache of their own still override it with monkeypatch.
    if "KDKIT_CACHE_DIR" not in os.environ:
        os.environ["KDKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdkit-test-cache-")

