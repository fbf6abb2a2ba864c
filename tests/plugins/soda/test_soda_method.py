"""The soda method end to end on a tiny embedded dataset: both stages, the baseline, summary keys,
resume, encode/search round trip through the CLI commands."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from kdkit.engine import train
from kdkit.metrics import mean_average_precision

SETS = ["data.size=160", "soda.bits=[16,32]", "train.epochs=2", "train.batch_size=32", "seed=3",
        "logging.progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("soda") / "run"
    summary = train("soda", sets=SETS, out=out)
    return out, summary


def test_both_stages_and_summary(run_dir):
    out, summary = run_dir
    for bits in ("16", "32"):
        for key in ("map", "baseline"):
            for d in ("i2t", "t2i"):
                assert 0.0 <= summary[key][bits][d] <= 1.0
        for stage in ("teacher", "student", "baseline"):
            assert (out / "checkpoints" / f"{stage}.{bits}" / "best.pt").is_file()
    assert summary["protocol"]["metric"] == "mAP@all"
    assert summary["data"]["sizes"] == {"query": 16, "train": 80, "fit": 72, "val": 8, "retrieval": 144}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["map"]["16"]["i2t"] == summary["map"]["16"]["i2t"]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert {ln["stage"] for ln in lines} == {f"{s}.{b}" for s in ("teacher", "student", "baseline") for b in (16, 32)}
    assert "train.penalty" in lines[0]


def test_resume_redoes_only_unfinished_stages(run_dir, tmp_path):
    out, summary = run_dir
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    (copy / "summary.json").unlink()
    # the run "died" after teacher.32: student.32 and baseline.32 never wrote a checkpoint
    shutil.rmtree(copy / "checkpoints" / "student.32")
    shutil.rmtree(copy / "checkpoints" / "baseline.32")
    resumed = train(resume=copy)
    assert resumed["map"] == summary["map"] and resumed["baseline"] == summary["baseline"]
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == len((out / "metrics.jsonl").read_text().splitlines())


def test_encode_search_round_trip(run_dir, tmp_path):
    from kdkit.commands import encode, search

    out, summary = run_dir

    def ns(mod, argv):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        return p.parse_args(argv)

    assert encode.run(ns(encode, ["--run", str(out), "--modality", "image", "--bits", "16", "--split", "query",
                                  "--out", str(tmp_path / "q.npy")])) == 0
    assert encode.run(ns(encode, ["--run", str(out), "--modality", "text", "--bits", "16",
                                  "--out", str(tmp_path / "db.npy")])) == 0
    q, db = np.load(tmp_path / "q.npy"), np.load(tmp_path / "db.npy")
    meta = json.loads((tmp_path / "db.npy.json").read_text())
    assert q.dtype == np.uint8 and q.shape == (16, 2) and db.shape == (144, 2)
    assert meta["bits"] == 16 and meta["modality"] == "text" and len(meta["indices"]) == 144
    ql, dl = np.load(tmp_path / "q.labels.npy"), np.load(tmp_path / "db.labels.npy")
    # the encoded files reproduce the run's I->T mAP
    assert mean_average_precision(q, db, ql, dl) == pytest.approx(summary["map"]["16"]["i2t"])
    assert search.run(ns(search, ["--db", str(tmp_path / "db.npy"), "--queries", str(tmp_path / "q.npy"),
                                  "-k", "7", "--batch-size", "5", "--out", str(tmp_path / "r.npz")])) == 0
    res = np.load(tmp_path / "r.npz")
    from kdkit import ops

    d, i = ops.hamming_topk(torch.from_numpy(q), torch.from_numpy(db), 7)
    np.testing.assert_array_equal(res["indices"], i.numpy())
    np.testing.assert_array_equal(res["distances"], d.numpy())
    # --features: raw vectors -> faiss layout
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert encode.run(ns(encode, ["--features", str(tmp_path / "x.npy"), "--out", str(tmp_path / "x_codes.npy")])) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "x_codes.npy"), np.packbits(x >= 0, axis=1, bitorder="little"))
