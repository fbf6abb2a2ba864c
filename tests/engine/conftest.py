from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parents[1] / "plugins")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def manager():
    """A process-wide plugin manager with the engine test plugin and kdkit_tensorboard."""
    from kdkit_engine_testutil import testing_manager

    with testing_manager() as pm:
        yield pm
