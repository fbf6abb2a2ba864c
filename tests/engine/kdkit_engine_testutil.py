"""Shared helpers of the engine and method tests (a uniquely named module, not conftest)."""
from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: tiny kd runs: 10 classes x 8 training images (72 train / 8 val), convnet width 4 teacher + student
TINY = [
    "data.name=shapes", "baseline.enabled=false",
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


def finishes_soon(fn, fifo, timeout: float = 30):
    """``(result, exception)`` of ``fn()``; a call still blocked after ``timeout`` s (opening ``fifo``) is
    released by opening the FIFO's other end, and fails the test."""
    import threading

    import pytest

    box = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the caller checks which
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():  # release the reader blocked in open() so that the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"blocked on the FIFO {fifo} for {timeout} s")
    return box.get("result"), box.get("exc")


def testing_manager():
    """kdkit's internal plugins + the engine test plugin + kdkit_tensorboard (a context manager)."""
    import kdkit_engine_testplugin
    import kdkit_tensorboard

    from kdkit.plugins import plugin_manager_for_testing

    return plugin_manager_for_testing(kdkit_engine_testplugin, kdkit_tensorboard)


def kdkit_cli(args, nproc: int = 1, timeout: int = 300, **env):
    """``python -m kdkit ARGS`` in a process of its own (forked from a prestarted one:
    :mod:`kdkit_prestarted`), under torchrun with ``nproc`` > 1 (gloo on CPU)."""
    import sys

    import kdkit_prestarted

    command = [sys.executable, "-m", "kdkit"]
    env = subprocess_env(**env)
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if kdkit_prestarted.fresh_only():
            command += ["-m", "kdkit"]
        else:  # the workers: the shell-level kdkit of kdkit_prestarted, forked too
            command += ["--no-python", "kdkit"]
            env["PATH"] = os.pathsep.join([kdkit_prestarted.bin_directory(), env.get("PATH", "")])
    return kdkit_prestarted.run([*command, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_trajectory(one: Path, two: Path, stages, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Weights dumped by ``KDTEST_DUMP`` after every epoch: both ranks of the 2-process run hold the
    same weights (DDP kept them in sync) and follow the 1-process run up to float summation order."""
    import torch

    for stage in stages:
        epochs = sorted(p.name for p in (one / "rank0" / stage).glob("*.pt"))
        assert epochs, f"no weights dumped for stage {stage}"
        assert sorted(p.name for p in (two / "rank1" / stage).glob("*.pt")) == epochs, stage
        for name in epochs:
            ref = torch.load(one / "rank0" / stage / name, weights_only=True)
            r0 = torch.load(two / "rank0" / stage / name, weights_only=True)
            r1 = torch.load(two / "rank1" / stage / name, weights_only=True)
            for key in ref:
                assert torch.equal(r0[key], r1[key]), f"ranks diverged: {stage} epoch {name} {key}"
                torch.testing.assert_close(r0[key], ref[key], rtol=rtol, atol=atol,
                                           msg=lambda m: f"{stage} epoch {name} {key}: {m}")
