"""``kdkit bench``: every peer setting timed, ratios against the faster faiss setting, the mAP case
checked against the sort-based evaluator, the penalty's bandwidth reported (tiny sizes: this
checks what is measured and reported, not speed)."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from kdkit import bench

TINY = ["--json", "--n", "3000", "--q", "6", "--k", "5", "--bits", "64", "128", "--map-q", "12",
        "--map-n", "400", "--penalty-rows", "2048", "--repeat", "1", "--no-torch-topk"]


def _run(capsys, *args):
    assert bench.main([*TINY, *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_faiss_is_timed_with_both_k_selections_and_the_ratio_uses_the_faster(capsys):
    pytest.importorskip("faiss")
    out = _run(capsys, "--cases", "topk-random", "topk-clustered")
    for case in ("topk-random", "topk-clustered"):
        for bits in (64, 128):
            rows = {r["method"]: r for r in out["results"] if r["case"] == case and r["bits"] == bits}
            assert set(rows) == {"kdkit", "faiss-heap", "faiss-counting"}
            assert rows["kdkit"]["code_pairs_per_s"] == pytest.approx(6 * 3000 / rows["kdkit"]["median_s"])
            (ratio,) = [r for r in out["ratios"] if r["case"] == case and r["bits"] == bits]
            best = min(("faiss-heap", "faiss-counting"), key=lambda m: rows[m]["median_s"])
            assert ratio["peer"] == "faiss" and ratio["setting"] == best
            assert ratio["peer_s"] == rows[best]["median_s"]
            assert ratio["speedup"] == pytest.approx(rows[best]["median_s"] / rows["kdkit"]["median_s"])
    checks = [c for c in out["checks"] if c["peer"].startswith("faiss")]
    assert len(checks) == 8 and all(c["ok"] for c in checks)
    # one process per method, for both cases and both code lengths, and kdkit's not faiss's
    pids = {}
    for row in out["results"]:
        pids.setdefault(row["method"].split("-")[0], set()).add(row["process"]["pid"])
    assert {m: len(p) for m, p in pids.items()} == {"kdkit": 1, "faiss": 1} and pids["kdkit"] != pids["faiss"]


def test_map_case_agrees_with_the_sort_based_evaluator(capsys):
    out = _run(capsys, "--cases", "map")
    methods = [r["method"] for r in out["results"]]
    assert methods == ["kdkit", "torch-sort"]
    (check,) = out["checks"]
    assert check["ok"] and "largest per-query difference" in check["detail"]
    (ratio,) = out["ratios"]
    assert ratio["peer"] == "torch-sort" and ratio["q"] == 12 and ratio["n"] == 400


def test_penalty_reports_bandwidth_against_a_copy(capsys):
    out = _run(capsys, "--cases", "penalty")
    rows = {r["method"]: r for r in out["results"]}
    assert {"kdkit", "copy-of-h"} <= set(rows)
    nbytes = 2048 * 64 * 4
    bw = out["penalty_bandwidth"]
    assert bw["kdkit_GB_per_s"] == pytest.approx(4 * nbytes / rows["kdkit"]["median_s"] / 1e9)
    assert bw["copy_GB_per_s"] == pytest.approx(2 * nbytes / rows["copy-of-h"]["median_s"] / 1e9)
    assert bw["fraction_of_copy"] == pytest.approx(bw["kdkit_GB_per_s"] / bw["copy_GB_per_s"])


@pytest.mark.parametrize("flag", ["--n", "--q", "--k", "--map-q", "--map-n", "--penalty-rows", "--repeat"])
def test_a_zero_size_is_a_one_line_error_not_the_default(capsys, flag):
    assert bench.main(["--quick", flag, "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{flag} must be >= 1, got 0" in err


@pytest.mark.parametrize("args, message", [
    (["--cases", "topk-random", "--n", "1000000000"], "the topk-random case needs about 543.9 GiB"),
    (["--cases", "topk-clustered", "--n", "1000000000", "--no-torch-topk"], "the topk-clustered case needs about "
                                                                            "7.5 GiB"),
    (["--cases", "penalty", "--penalty-rows", "100000000"], "the penalty case needs about 95.4 GiB"),
    (["--cases", "map", "--map-n", "100000000"], "the map case needs about 261.5 GiB"),
])
def test_a_size_beyond_the_memory_is_one_line_before_anything_is_allocated(capsys, monkeypatch, args, message):
    """Issue 22 rerun: `--n 1000000000000` was a DefaultCPUAllocator traceback (exit 1), a size just past the
    free memory an OOM kill."""
    monkeypatch.setenv("KDKIT_MEMORY_LIMIT_BYTES", str(2**30))
    assert bench.main(["--quick", "--bits", "64", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "more than the 1.0 GiB of memory set by " in err, err


def test_more_threads_than_cpus_is_one_line_not_a_crash(capsys):
    """Issue 22 rerun: `--threads 20000` aborted in libgomp (exit 1), `--threads 100000` segfaulted."""
    cpus = os.cpu_count()
    assert bench.main(["--quick", "--threads", str(cpus + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--threads {cpus + 1} is more than the {cpus} logical CPUs" in err, err


def test_each_topk_method_is_timed_in_its_own_process_and_faiss_without_torch(capsys):
    # issue 23: torch's OpenMP pool in faiss's process slowed faiss; each method now has a process
    pytest.importorskip("faiss")
    args = [a for a in TINY if a != "--no-torch-topk"]
    assert bench.main([*args, "--bits", "64", "--cases", "topk-clustered", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r["process"] for r in out["results"]}
    assert set(rows) == {"kdkit", "faiss-heap", "faiss-counting", "torch"}
    assert not rows["faiss-heap"]["torch_loaded"] and not rows["faiss-counting"]["torch_loaded"]
    assert rows["kdkit"]["torch_loaded"] and rows["torch"]["torch_loaded"]
    pids = {m: p["pid"] for m, p in rows.items()}
    assert pids["faiss-heap"] == pids["faiss-counting"]
    assert len({pids["kdkit"], pids["faiss-heap"], pids["torch"], os.getpid()}) == 4
    assert all(p["threads"] == 1 for p in rows.values())
    # kdkit's distances cross-checked against both faiss settings and torch, as in one process
    assert sorted(c["peer"] for c in out["checks"] if c["ok"]) == ["faiss-counting", "faiss-heap", "torch"]
    assert out["peers_in_separate_processes"] == {"topk-clustered": True}
    assert not out["warnings"] or all("busy" in w for w in out["warnings"])


def test_a_worker_result_that_differs_from_kdkit_fails_its_check():
    np = pytest.importorskip("numpy")
    from kdkit.bench.cases import _Bench
    from kdkit.bench.report import _Log

    b = _Bench(argparse.Namespace(device="cpu", seed=0), _Log(True))
    d = np.array([[0, 1, 1]], dtype=np.int32)
    i = np.array([[4, 2, 7]], dtype=np.int64)
    proc = {"pid": 1, "threads": 1, "torch_loaded": False, "notes": []}

    def report(*settings):
        return {**proc, "settings": [{"method": m, "times_s": [1.0], "d": dd, "i": ii} for m, dd, ii in settings]}

    b._topk_report("topk-random", {"bits": 64, "n": 8, "q": 1, "k": 3}, {
        "kdkit": report(("kdkit", d, i)),
        "faiss": report(("faiss-heap", d, i[:, ::-1]), ("faiss-counting", d + 1, i)),
        "torch": report(("torch", d.astype(np.float32), i)),
    })
    ok = {c["peer"]: (c["ok"], c["detail"]) for c in b.checks}
    assert ok == {"faiss-heap": (True, "distances identical; indices differ (tie order)"),
                  "faiss-counting": (False, "distances DIFFER; indices identical"),
                  "torch": (True, "distances identical")}
    assert len(b.warnings) == 1 and "disagrees with faiss-counting" in b.warnings[0]
