"""SODA under DDP: 2 gloo processes follow the 1-process run, stage by stage and epoch by epoch.

Stage 1 and the baseline train on pairs within the batch; each rank gathers the other's half so
the loss, and with DDP's averaging the gradient, is the single-process one.  Both ranks' weights
are dumped after every epoch (before any best.pt reload) and compared.  Dropout is off: its masks
depend on how the batch is split.
"""
from __future__ import annotations

import json

import pytest

from kdkit_engine_testutil import assert_same_trajectory, kdkit_cli

pytestmark = pytest.mark.slow

SETS = ["data.size=160", "soda.bits=[16]", "train.epochs=2", "train.batch_size=32", "seed=3", "soda.dropout=0.0",
        "soda.student_intra_weight=0.5", "soda.balance_weight=0.1", "logging.progress=false"]


def _args(out):
    args = ["--plugins-module", "kdkit_engine_testplugin", "train", "--plugin", "soda", "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return args


def test_two_gloo_processes_match_one_process(tmp_path):
    env = {"KDKIT_BLOCK_PLUGINS": "wordnet_relax"}
    one = kdkit_cli(_args(tmp_path / "one"), KDTEST_DUMP=tmp_path / "w1", **env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = kdkit_cli(_args(tmp_path / "two"), nproc=2, KDTEST_DUMP=tmp_path / "w2", **env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_trajectory(tmp_path / "w1", tmp_path / "w2", ["teacher.16", "student.16", "baseline.16"],
                           rtol=1e-4, atol=1e-5)
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    for key in ("map", "baseline"):
        for d in ("i2t", "t2i"):
            assert sa[key]["16"][d] == pytest.approx(sb[key]["16"][d], abs=1e-6)
