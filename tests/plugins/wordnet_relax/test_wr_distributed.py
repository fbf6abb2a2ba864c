"""wordnet_relax under DDP: 2 gloo processes follow the 1-process run in every stage, epoch by epoch.

T_m, T_x (``tx.input_norm`` off) and the student are BN-free (BatchNorm statistics are per rank)
and T_x's dropout is off (its masks depend on how the batch is split); everything else is the
default recipe at tiny size,
including the T_x logit table the student's batches index into and the learnable noun bank.
Both ranks' weights are dumped after every epoch (before any best.pt reload) and compared.
"""
from __future__ import annotations

import json

import pytest

from kdkit_engine_testutil import assert_same_trajectory, kdkit_cli
from wr_helpers import TINY, needs_debian_wordnet

pytestmark = [pytest.mark.slow, needs_debian_wordnet]


def _args(out, sets):
    args = ["--plugins-module", "kdkit_engine_testplugin", "train", "--plugin", "wordnet_relax", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args


def test_two_gloo_processes_match_one_process(tmp_path, pool_file):
    sets = [s for s in TINY if not s.startswith(("teachers=", "student.", "train.epochs"))] + [
        "teachers=[{name: mlp, augment: none}]", "student.name=mlp", "tx.dropout=0.0", "tx.input_norm=false",
        "train.epochs=2",
        "relax.ratio=0.5", "distill.tx_text=protocol", f"relax.pool_file={pool_file}",
        f"relax.cache_dir={tmp_path / 'relax-cache'}",
    ]
    env = {"KDKIT_BLOCK_PLUGINS": "soda"}
    one = kdkit_cli(_args(tmp_path / "one", sets), KDTEST_DUMP=tmp_path / "w1", **env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = kdkit_cli(_args(tmp_path / "two", sets), nproc=2, KDTEST_DUMP=tmp_path / "w2", **env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    assert_same_trajectory(tmp_path / "w1", tmp_path / "w2", ["teacher.none", "baseline", "multimodal", "student"])
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sa["student"]["top1"] == sb["student"]["top1"]
    assert sa["teachers"]["multimodal"]["top1"] == sb["teachers"]["multimodal"]["top1"]
