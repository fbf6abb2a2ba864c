"""Shared helpers of the engine and method tests (a uniquely named module, not conftest)."""
from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: tiny kd runs: 10 classes x 8 training images (72 train / 8 val), convnet width 4 teacher + student
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
    env["KDKIT_BLOCK_PLUGINS"] = "soda,wordnet_relax"  # other methods' plugins: not under test here
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def testing_manager():
    """kdkit's internal plugins + the engine test plugin + kdkit_tensorboard (a context manager)."""
    import kdkit_engine_testplugin
    import kdkit_tensorboard

    from kdkit.plugins import plugin_manager_for_testing

    return plugin_manager_for_testing(kdkit_engine_testplugin, kdkit_tensorboard)
