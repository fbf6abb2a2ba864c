"""``kdkit search``: one process and two gloo processes under torchrun give the same file, and the
process group is the engine's (:func:`kdkit.engine.distributed.torchrun_process_group`)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from kdkit_engine_testutil import kdkit_cli


def _codes(tmp_path, seed, n, nbytes=8):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)  # many exact ties
    path = tmp_path / f"codes{seed}.npy"
    np.save(path, centres[rng.integers(0, 5, n)])
    return path


def _run(argv):
    from kdkit.commands import search

    parser = argparse.ArgumentParser()
    search.add_arguments(parser)
    return search.run(parser.parse_args(argv))


def test_single_process_search_starts_no_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    from kdkit import ops

    monkeypatch.setenv("WORLD_SIZE", "1")
    q, db = _codes(tmp_path, 0, 23), _codes(tmp_path, 1, 301)
    assert _run(["--db", str(db), "--queries", str(q), "-k", "9", "--batch-size", "4",
                 "--out", str(tmp_path / "r.npz")]) == 0
    assert not dist.is_initialized()
    res = np.load(tmp_path / "r.npz")
    d, i = ops.hamming_topk(torch.from_numpy(np.load(q)), torch.from_numpy(np.load(db)), 9)
    np.testing.assert_array_equal(res["indices"], i.numpy())
    np.testing.assert_array_equal(res["distances"], d.numpy())


def test_torchrun_process_group_is_a_no_op_in_one_process(monkeypatch):
    import torch.distributed as dist

    from kdkit.engine.distributed import torchrun_process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with torchrun_process_group("cpu") as distributed:
        assert distributed is False and not dist.is_initialized()


@pytest.mark.slow
def test_search_under_torchrun_equals_one_process(tmp_path):
    q, db = _codes(tmp_path, 2, 40), _codes(tmp_path, 3, 1001)
    args = ["search", "--db", str(db), "--queries", str(q), "-k", "50", "--batch-size", "16"]
    one = kdkit_cli(args + ["--out", str(tmp_path / "one.npz")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = kdkit_cli(args + ["--out", str(tmp_path / "two.npz")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 shards" in two.stderr and two.stderr.count("kdkit search:") == 1  # rank 0 writes and reports
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_array_equal(a["indices"], b["indices"])
    np.testing.assert_array_equal(a["distances"], b["distances"])


@pytest.mark.parametrize("sidecar", [b"{bad", b"\xff\xfe{}", b"[1, 2]", b"[" * 100_000, b"1" * 5000],
                         ids=["bad-json", "not-utf8", "not-an-object", "deep-nesting", "huge-int"])
def test_a_corrupt_sidecar_is_a_one_line_error(tmp_path, capsys, sidecar):
    from kdkit.cli import main

    db = _codes(tmp_path, 4, 10)
    (tmp_path / (db.name + ".json")).write_bytes(sidecar)
    status = main(["search", "--db", str(db), "--queries", str(db), "--json"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and f"corrupt code metadata {db}.json" in err, err


# --- issue 22: --out writes exactly the file it names ---

def _search(capsys, tmp_path, out, db=None):
    from kdkit.cli import main

    db = db or _codes(tmp_path, 5, 12)
    status = main(["search", "--db", str(db), "--queries", str(db), "-k", "2", "--out", str(out)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("out", ["db.npy", "result", ""], ids=["npy", "no-suffix", "empty"])
def test_an_out_not_named_npz_is_refused_before_searching(tmp_path, capsys, monkeypatch, out):
    """numpy appended .npz: `--out db.npy` printed `-> db.npy` but wrote db.npy.npz."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = _search(capsys, tmp_path, out, db=_codes(tmp_path, 5, 12))
    assert status == 2 and err.count("\n") == 1 and "--out" in err and ".npz" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["codes5.npy"])


def test_the_result_is_written_exactly_where_out_says(tmp_path, capsys):
    status, err = _search(capsys, tmp_path, tmp_path / "r.npz")
    assert status == 0, err
    assert err.rstrip().endswith(f"-> {tmp_path / 'r.npz'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes5.npy", "r.npz"]  # no temp file left
    assert set(np.load(tmp_path / "r.npz")) == {"indices", "distances"}


def test_an_out_that_is_an_input_is_refused(tmp_path, capsys):
    db = _codes(tmp_path, 6, 12).rename(tmp_path / "codes.npz")  # np.load reads .npy by content
    status, err = _search(capsys, tmp_path, db, db=db)
    assert status == 2 and "would overwrite it" in err, err
    assert np.load(db).shape == (12, 8)
