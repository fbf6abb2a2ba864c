from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(HERE), str(ROOT / "plugins")):
    if p not in sys.path:
        sys.path.insert(0, p)

#: tiny kd runs: 10 classes x 8 training images, convnet teacher + student
TINY = [
    "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
    "teachers=[{name: convnet, width: 4}]", "student.name=convnet", "student.width=4",
    "teacher_train.epochs=1", "train.epochs=2", "train.batch_size=16", "teacher_train.batch_size=16",
    "logging.progress=false",
]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    paths = [str(HERE), str(ROOT / "plugins"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["KDKIT_BLOCK_PLUGINS"] = "soda,wordnet_relax"  # other engineers' plugins: not under test here
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def manager():
    """kdkit's internal plugins + the engine test plugin + kdkit_tensorboard, process-wide for the test."""
    import kdkit_engine_testplugin
    import kdkit_tensorboard

    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_engine_testplugin, kdkit_tensorboard) as pm:
        yield pm
