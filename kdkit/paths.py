"""Where kdkit keeps files that outlive a run: one place, so every component shares one cache."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """kdkit's cache directory: ``$KDKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdkit``, else ``~/.cache/kdkit``.

    Cached artefacts (CLIP features, noun embeddings, assembled WordNet data) are keyed by a digest
    of everything they depend on, so runs can share them safely.
    """
    env = os.environ.get("KDKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "kdkit"
    return Path.home() / ".cache" / "kdkit"
