"""Fixtures of the wordnet_relax plugin tests: tiny CLIP, tiny data, no downloads, private caches."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wr_helpers import POOL_WORDS, TINY  # noqa: E402,F401  (also makes the plugin importable)


@pytest.fixture(scope="session")
def wordnet_cache(tmp_path_factory):
    """A session-wide kdkit cache for the assembled WordNet corpus."""
    return tmp_path_factory.mktemp("kdkit-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, wordnet_cache):
    """No downloads, caches under the session's temp dir, one torch thread."""
    monkeypatch.setenv("KDKIT_OFFLINE", "1")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(wordnet_cache))
    monkeypatch.setenv("KDKIT_BLOCK_PLUGINS", "soda")
    from kdkit import clip, plugins

    clip.reset_warnings()
    had_manager = plugins._manager is not None
    yield
    # a process-wide manager built while soda was blocked would hide soda from later tests
    if not had_manager:
        plugins.reset_plugin_manager()


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.txt"
    path.write_text("\n".join(POOL_WORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def manager():
    """kdkit's internal plugins + this plugin, process-wide for the test."""
    import kdkit_wordnet_relax

    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_wordnet_relax) as pm:
        yield pm


@pytest.fixture
def tiny(pool_file, tmp_path):
    """The TINY overrides plus the pool file and a private relax cache."""
    return TINY + [f"relax.pool_file={pool_file}", f"relax.cache_dir={tmp_path / 'relax-cache'}"]


@pytest.fixture
def micro_clip():
    import warnings

    from kdkit import build_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_clip({"model": "kdkit-micro"}, log_fn=lambda m: None)


if os.environ.get("OMP_NUM_THREADS") is None:  # tiny models: threads only add overhead
    import torch

    torch.set_num_threads(1)
