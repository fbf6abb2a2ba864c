"""DDP through torchrun: 2 CPU processes (gloo) against 1 process.

What "compares" means here: with a fixed *global* batch (``train.batch_size`` = 16; each of the
2 ranks gets 8), the same seeded ``DistributedSampler`` permutation (the single process uses it
too, with one replica) and no augmentation, the union of the per-rank batches equals the
single-process batch and DDP's gradient average equals the single-process gradient.  With a
BatchNorm-free model (BatchNorm statistics are per rank, and SyncBatchNorm needs a GPU) the two
runs then follow the same trajectory up to float summation order: weights agree to 1e-5 and the
evaluation metrics (done on rank 0 and broadcast) are equal.  A second test runs a BatchNorm model
under torchrun to check that it trains and that only rank 0 writes files.
"""
from __future__ import annotations

import json

import pytest
import torch

from kdkit_engine_testutil import TINY, assert_same_trajectory, kdkit_cli

pytestmark = pytest.mark.slow

PLUGIN = "kdkit_engine_testplugin"
SETS = [s for s in TINY if not s.startswith(("teachers=", "student."))] + [
    "teachers=[{name: mlp}]", "student.name=mlp", "train.epochs=2", "teacher_train.epochs=2",
]


def _args(out, sets):
    args = ["--plugins-module", PLUGIN, "train", "--plugin", "kd", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args


def _torchrun(out, sets, nproc=2):
    return kdkit_cli(_args(out, sets), nproc=nproc)


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cache", ["auto", "disk"])
def test_two_gloo_processes_match_one_process(tmp_path, cache):
    """Per epoch and per rank (before any best.pt is reloaded), with the teacher-logit cache (an
    index lookup: in memory, or in the disk store that rank 0 builds while rank 1 waits, each rank then
    reading its own rows) and an oracle teacher whose agreement with the labels must stay 100 %."""
    sets = [s for s in SETS if not s.startswith("teachers=")] + ["teachers=[{name: mlp}, {name: oracle_label}]",
                                                                 "data.name=tagged_shapes",
                                                                 f"distill.teacher_cache={cache}"]
    oracle = ["--plugins-module", "kdkit_oracle_testplugin"]
    one = kdkit_cli(oracle + _args(tmp_path / "one", sets), KDTEST_DUMP=tmp_path / "w1",
                    KDKIT_CACHE_DIR=tmp_path / "cache1")
    assert one.returncode == 0, one.stderr
    two = kdkit_cli(oracle + _args(tmp_path / "two", sets), nproc=2, KDTEST_DUMP=tmp_path / "w2",
                    KDKIT_CACHE_DIR=tmp_path / "cache2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    if cache == "disk":  # each run built its own stores, one per teacher, once (rank 0 logs)
        for run, store in (("one", "cache1"), ("two", "cache2")):
            log = (tmp_path / run / "train.log").read_text()
            assert log.count("teacher store of 2 teacher(s)") == 1 and log.count(" built") == 2
            assert len(list((tmp_path / store / "teacher-store").glob("*/manifest.json"))) == 2
    assert_same_trajectory(tmp_path / "w1", tmp_path / "w2", ["teacher.mlp", "student"])

    for stage in ("teacher.mlp", "student"):
        a = torch.load(tmp_path / "one" / "checkpoints" / stage / "last.pt", weights_only=True)
        b = torch.load(tmp_path / "two" / "checkpoints" / stage / "last.pt", weights_only=True)
        assert a["step"] == b["step"]  # same number of (global) optimiser steps
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    la, lb = _lines(tmp_path / "one"), _lines(tmp_path / "two")
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), (k, x, y)
            else:
                assert x[k] == y[k]
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sa["student"]["top1"] == sb["student"]["top1"]
    assert sa["distill"]["teacher_cache"] is True
    assert sa["distill"]["teacher_cache_mode"] == sb["distill"]["teacher_cache_mode"] == \
        ("disk" if cache == "disk" else "memory")
    for s in (sa, sb):
        assert s["distill"]["teacher_agreement"]["teachers"]["teacher.oracle_label"]["agreement"] == 100.0


def test_torchrun_with_batchnorm_model_rank0_files_only(tmp_path):
    sets = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=1", "data.augment=weak"]
    r = _torchrun(tmp_path / "bn", sets)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "bn"
    assert json.loads((run / "summary.json").read_text())["student"]["top1"] is not None
    log = (run / "train.log").read_text()
    assert log.count("kdkit: method kd") == 1  # rank 0 logs once
    assert len(_lines(run)) == 4  # teacher epoch + test, student epoch + test: no duplicate lines
    assert r.stdout.count("results: test top-1") == 1


def test_feature_term_under_two_gloo_processes(tmp_path):
    """A fitnet term (student and teacher taps, a regressor trained as an extra module whose gradients
    are averaged across ranks): 2 processes follow 1 process epoch by epoch.  The bare-convolution
    regressor: the default's BatchNorm normalises each rank's half batch on its own (as the models'
    BatchNorm layers do; kdkit does not convert them to SyncBatchNorm), so it could not follow."""
    sets = SETS + ["distill.terms=[{loss: kl, weight: 0.5}, {loss: fitnet, weight: 2.0, student: '3', "
                   "teacher: '3', options: {regressor: conv}}]"]
    one = kdkit_cli(_args(tmp_path / "one", sets), KDTEST_DUMP=tmp_path / "w1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = kdkit_cli(_args(tmp_path / "two", sets), nproc=2, KDTEST_DUMP=tmp_path / "w2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_trajectory(tmp_path / "w1", tmp_path / "w2", ["teacher.mlp", "student"])
    a = torch.load(tmp_path / "one" / "checkpoints" / "student" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "student" / "last.pt", weights_only=True)
    torch.testing.assert_close(a["extra_modules"]["distill"]["terms.fitnet.regressor.weight"],
                               b["extra_modules"]["distill"]["terms.fitnet.regressor.weight"], rtol=1e-4, atol=1e-5)
