"""The reported test figures come from the weights of the reported best epoch — for every
``checkpoint.select_on`` and with ``checkpoint.save_best`` on and off.

A recorder plugin keeps every stage's weights after every epoch; the test then evaluates the
weights of the epoch the run reports as best on the test split and demands exactly the figures the
run reported (summary.json and the ``test.*`` line of metrics.jsonl).
"""
from __future__ import annotations

import copy
import json

import kdkit_prestarted
import pytest

import kdkit
from kdkit_engine_testutil import TINY

SETS = [s for s in TINY if not s.startswith(("train.epochs", "teacher_train.epochs"))] + [
    "train.epochs=4", "teacher_train.epochs=3", "train.lr=0.2", "teacher_train.lr=0.2", "train.scheduler=none",
    "teacher_train.scheduler=none",
]


class EpochWeights:
    def __init__(self):
        self.weights: dict = {}

    @kdkit.hookimpl
    def kdkit_after_epoch(self, trainer, epoch, metrics):
        self.weights[(trainer.stage.name, epoch)] = copy.deepcopy(trainer.model.state_dict())


@pytest.mark.parametrize("select_on", ["val", "test", "last"])
@pytest.mark.parametrize("save_best", [True, False])
def test_test_figures_are_the_best_epochs(tmp_path, select_on, save_best):
    import kdkit_engine_testplugin

    from kdkit.engine import open_run, train
    from kdkit.plugins import plugin_manager_for_testing

    recorder = EpochWeights()
    with plugin_manager_for_testing(kdkit_engine_testplugin, recorder) as pm:
        sets = SETS + [f"checkpoint.select_on={select_on}", f"checkpoint.save_best={str(save_best).lower()}"]
        summary = train("kd", sets=sets, out=tmp_path / "run", manager=pm)
        ctx, _ = open_run(tmp_path / "run", pm)
        test = ctx.build_dataset(None, "test")
        lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        reported = {"teacher.convnet": summary["teachers"]["teacher.convnet"], "student": summary["student"]}
        for stage, s in reported.items():
            epochs = 3 if stage.startswith("teacher") else 4
            best = s["best_epoch"]
            if select_on == "last":
                assert best == epochs - 1
            else:  # the epoch with the best validation top-1 (first one on ties)
                vals = [x["val.top1"] for x in lines if x["stage"] == stage and "val.top1" in x]
                assert best == vals.index(max(vals))
            section = ctx.config["student"] if stage == "student" else ctx.config["teachers"][0]
            model = ctx.build_model("students" if stage == "student" else "teachers", section, 10)
            model.load_state_dict(recorder.weights[(stage, best)])
            metrics = ctx.evaluate(model, test)
            test_line = next(x for x in lines if x["stage"] == stage and x.get("split") == "test")
            assert test_line["epoch"] == best
            assert metrics["top1"] == s["top1"] == test_line["test.top1"], (stage, best, metrics, s)
            assert metrics["loss"] == pytest.approx(test_line["test.loss"], rel=1e-6)
        assert (tmp_path / "run" / "checkpoints" / "student" / "best.pt").exists() == (save_best or select_on == "last")
        if select_on == "val" and not save_best:
            # the configuration the bug lived in: make sure it is exercised (best != last epoch)
            assert summary["student"]["best_epoch"] != 3 and summary["teachers"]["teacher.convnet"]["best_epoch"] != 2


def test_kill_after_the_best_epoch_without_best_pt_resumes_with_the_best_weights(tmp_path):
    """The kept best weights travel in last.pt: killed in the teacher's last epoch (after its best
    one) and resumed, the teacher's test figures and the student distilled from it are those of the
    uninterrupted run, which the test above shows to be the best epoch's."""
    import sys

    from kdkit_engine_testutil import subprocess_env

    args = ["--plugins-module", "kdkit_engine_testplugin", "train", "--plugin", "kd"]
    for item in SETS + ["checkpoint.save_best=false"]:
        args += ["--set", item]

    def kdkit(extra, **env):
        return kdkit_prestarted.run([sys.executable, "-m", "kdkit", *extra], env=subprocess_env(**env),
                                    capture_output=True, text=True, timeout=300)

    ref = kdkit(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert ref_summary["teachers"]["teacher.convnet"]["best_epoch"] != 2  # best != last: the case that matters
    killed = kdkit(args + ["--out", str(tmp_path / "run")], KDTEST_KILL="before_epoch:teacher.convnet:2")
    assert killed.returncode < 0
    resumed = kdkit(["--plugins-module", "kdkit_engine_testplugin", "train", "--resume", str(tmp_path / "run")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch 3/3" in resumed.stderr
    assert (tmp_path / "run" / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()
