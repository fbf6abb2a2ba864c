"""The cases of ``kdkit bench`` (:class:`_Bench`: top-k, penalty, mAP), each timing kdkit and its
peers on the same data (:func:`~kdkit.bench.worker._median_time`) and cross-checking their results.
The top-k methods each run in a process of their own (:mod:`kdkit.bench.worker`)."""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from kdkit.bench.report import _fmt_time, _Log
from kdkit.bench.worker import _median_time, run_method
from kdkit.bench.workloads import (
    DEFAULT_MAP,
    N_CENTRES,
    _clustered_codes,
    _faiss,
    _random_codes,
)

# ---------------------------------------------------------------- cases

class _Bench:
    def __init__(self, args: argparse.Namespace, log: _Log) -> None:
        import torch

        self.args = args
        self.log = log
        self.device = torch.device(args.device)
        self.results: list[dict[str, Any]] = []
        self.ratios: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.bandwidth: dict[str, float] = {}
        self.gen = torch.Generator().manual_seed(args.seed)
        self._topk_dir: tempfile.TemporaryDirectory | None = None  # the saved codes of the top-k workloads
        self._topk_workloads: list[dict[str, Any]] = []
        if args.device == "cuda":
            self.sync = torch.cuda.synchronize
        else:
            self.sync = lambda: None

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log(f"WARNING: {msg}")

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            self.log(f"note: {msg}")

    def record(self, case: str, params: dict[str, Any], method: str, times: list[float]) -> float:
        med = statistics.median(times)
        self.results.append({"case": case, **params, "method": method, "median_s": med,
                             "times_s": times})
        label = ", ".join(f"{k}={v}" for k, v in params.items())
        self.log(f"  {case:<15} {label:<40} {method:<16} {_fmt_time(med)}")
        return med

    def ratio(self, case: str, params: dict[str, Any], peer: str, kdkit_s: float,
              peer_s: float, **extra: Any) -> None:
        speedup = peer_s / kdkit_s if kdkit_s > 0 else math.inf
        self.ratios.append({"case": case, **params, "peer": peer, "kdkit_s": kdkit_s,
                            "peer_s": peer_s, "speedup": speedup, **extra})

    def check(self, case: str, params: dict[str, Any], peer: str, ok: bool, detail: str) -> None:
        self.checks.append({"case": case, **params, "peer": peer, "ok": bool(ok), "detail": detail})
        if not ok:
            label = ", ".join(f"{k}={v}" for k, v in params.items())
            self.warn(f"{case} ({label}): kdkit disagrees with {peer}: {detail}")

    # ------------------------------------------------------------ top-k
    def topk(self, data: str) -> None:
        """Make and save the codes of case ``topk-DATA`` at each ``--bits``; :meth:`time_topk` times them."""
        import numpy as np
        import torch

        a = self.args
        self._topk_methods()  # its notes, once, where the case comes
        if self._topk_dir is None:
            self._topk_dir = tempfile.TemporaryDirectory(prefix="kdkit-bench-")
        for bits in a.bits:
            nbytes = bits // 8
            params = {"bits": bits, "n": a.n, "q": a.q, "k": a.k}
            if data == "random":
                db = _random_codes(a.n, nbytes, self.gen)
                qs = _random_codes(a.q, nbytes, self.gen)
            else:
                centres = torch.rand((N_CENTRES, bits), generator=self.gen) < 0.5
                db = _clustered_codes(a.n, bits, centres, self.gen)
                qs = _clustered_codes(a.q, bits, centres, self.gen)
            stem = Path(self._topk_dir.name) / f"topk-{data}-{bits}"
            np.save(f"{stem}-db.npy", db.numpy())
            np.save(f"{stem}-queries.npy", qs.numpy())
            del db, qs
            self._topk_workloads.append({"case": f"topk-{data}", "params": params, "bits": bits,
                                         "db": f"{stem}-db.npy", "queries": f"{stem}-queries.npy"})

    def time_topk(self) -> None:
        """Time every method on every saved top-k workload, each method in a fresh process of its own
        (:mod:`kdkit.bench.worker`), one after the other, then record each workload's times and checks."""
        if not self._topk_workloads:
            return
        a, workloads = self.args, self._topk_workloads
        try:
            reports = {m: run_method(m, Path(self._topk_dir.name), workloads, k=a.k, repeat=a.repeat,
                                     threads=a.threads, device=a.device)
                       for m in self._topk_methods()}
        finally:
            self._topk_dir.cleanup()
            self._topk_dir, self._topk_workloads = None, []
        for n, workload in enumerate(workloads):
            self._topk_report(workload["case"], workload["params"], {m: r[n] for m, r in reports.items()})

    def _topk_methods(self) -> list[str]:
        methods = ["kdkit"]
        if self.device.type != "cpu":
            self.note("faiss-cpu is not a GPU peer: on --device cuda the peer is torch")
        elif _faiss() is None:
            self.note("faiss is not installed: the faiss peer is skipped")
        else:
            methods.append("faiss")
        if self.args.no_torch_topk:
            self.note("plain-torch top-k peer skipped (--no-torch-topk)")
        else:
            methods.append("torch")
        return methods

    def _topk_report(self, case: str, params: dict[str, Any], reports: dict[str, dict[str, Any]]) -> None:
        """Record the workers' times, the ratios and the cross-checks of one top-k size."""
        import numpy as np

        def record(report: dict[str, Any], setting: dict[str, Any]) -> float:
            med = self.record(case, params, setting["method"], setting["times_s"])
            self.results[-1]["process"] = {key: report[key] for key in ("pid", "threads", "torch_loaded")}
            return med

        kd_report = reports["kdkit"]
        (kd,) = kd_report["settings"]
        kd_s = record(kd_report, kd)
        self.results[-1]["code_pairs_per_s"] = params["q"] * params["n"] / kd_s
        kd_d, kd_i = kd["d"], kd["i"]
        self.results[-1]["adjacent_ties_in_result"] = int((kd_d[:, :-1] == kd_d[:, 1:]).sum())

        if "faiss" in reports:
            report = reports["faiss"]
            if report["torch_loaded"]:
                self.warn("torch was loaded in the faiss worker process: its OpenMP pool may have "
                          "slowed faiss")
            setting_s = {}
            for setting in report["settings"]:
                label = setting["method"]
                setting_s[label] = record(report, setting)
                same_d = bool(np.array_equal(setting["d"].astype(np.int64), kd_d.astype(np.int64)))
                same_i = bool(np.array_equal(setting["i"].astype(np.int64), kd_i.astype(np.int64)))
                self.check(case, params, label, same_d,
                           f"distances {'identical' if same_d else 'DIFFER'}"
                           f"; indices {'identical' if same_i else 'differ (tie order)'}")
            # faiss's two k-selection settings: the ratio is taken against the faster.
            best = min(setting_s, key=setting_s.get)
            self.ratio(case, params, "faiss", kd_s, setting_s[best], setting=best)

        if "torch" in reports:
            report = reports["torch"]
            for msg in report["notes"]:
                self.note(msg)
            (setting,) = report["settings"]
            t_s = record(report, setting)
            self.ratio(case, params, "torch", kd_s, t_s)
            same = bool(np.array_equal(setting["d"].astype(np.float64), kd_d.astype(np.float64)))
            self.check(case, params, "torch", same,
                       "distances identical" if same else "distances differ")

    # ------------------------------------------------------------ penalty
    def penalty(self) -> None:
        import torch

        from kdkit.ops import binarization_penalty

        a = self.args
        case = "penalty"
        rows, cols = a.penalty_rows, a.penalty_cols
        params = {"shape": f"{rows}x{cols}", "dtype": "float32"}
        h = torch.randn((rows, cols), generator=self.gen).to(self.device).requires_grad_(True)

        def plain(x):
            return ((x - torch.where(x >= 0, 1.0, -1.0)) ** 2).mean()

        def step(fn):
            def run():
                h.grad = None
                loss = fn(h)
                loss.backward()
                return loss.detach(), h.grad
            return run

        times, (kd_loss, kd_grad) = _median_time(step(lambda x: binarization_penalty(x, "mean")),
                                                 a.repeat, 1, self.sync)
        kd_s = self.record(case, params, "kdkit", times)
        kd_entry = self.results[-1]
        # Bytes the fused design must move: fwd reads h, writes the gradient factor; bwd reads
        # it, writes the gradient. A copy of h (read + write) is the bandwidth reached here.
        nbytes = h.numel() * h.element_size()
        dst = torch.empty_like(h, requires_grad=False)  # allocated once: page faults are not bandwidth
        copy_times, _ = _median_time(lambda: dst.copy_(h.detach()), a.repeat, 1, self.sync)
        copy_s = self.record(case, params, "copy-of-h", copy_times)
        kd_gbs, copy_gbs = 4 * nbytes / kd_s / 1e9, 2 * nbytes / copy_s / 1e9
        self.bandwidth = {"kdkit_GB_per_s": kd_gbs, "copy_GB_per_s": copy_gbs,
                          "fraction_of_copy": kd_gbs / copy_gbs}
        kd_entry["GB_per_s"] = kd_gbs
        self.results[-1]["GB_per_s"] = copy_gbs
        self.log(f"  {case:<15} kdkit moves {kd_gbs:,.0f} GB/s; a copy of h {copy_gbs:,.0f} GB/s "
                 f"({kd_gbs / copy_gbs:.0%})")

        peers = [("torch-eager", plain)]
        # inductor imports cpp_extension, which warns about CUDA_HOME on GPU-less machines
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        try:
            compiled = torch.compile(plain)
        except Exception as exc:  # noqa: BLE001 - no compiler available: report and go on
            self.note(f"torch.compile unavailable ({type(exc).__name__}: {exc})")
        else:
            peers.insert(0, ("torch.compile", compiled))
        for name, fn in peers:
            warm = 2 if name == "torch.compile" else 1  # compile (fwd+bwd graphs) off the clock
            try:
                times, (p_loss, p_grad) = _median_time(step(fn), a.repeat, warm, self.sync)
            except Exception as exc:  # noqa: BLE001 - e.g. inductor cannot find a C++ compiler
                self.note(f"{name} peer failed: {type(exc).__name__}: {exc}")
                continue
            p_s = self.record(case, params, name, times)
            self.ratio(case, params, name, kd_s, p_s)
            ok_loss = torch.allclose(kd_loss.double(), p_loss.double(), rtol=1e-4, atol=0.0)
            ok_grad = torch.allclose(kd_grad, p_grad, rtol=1e-4, atol=1e-12)
            self.check(case, params, name, ok_loss and ok_grad,
                       f"loss {float(kd_loss):.6g} vs {float(p_loss):.6g}; gradients "
                       + ("agree" if ok_grad else "DIFFER"))
            del p_loss, p_grad
        h.grad = None


    # ------------------------------------------------------------ map
    def map(self) -> None:
        import torch

        from kdkit.ops import hamming_average_precision, pack_labels, reference

        a = self.args
        case = "map"
        bits, ncls = DEFAULT_MAP["map_bits"], DEFAULT_MAP["map_labels"]
        params = {"bits": bits, "q": a.map_q, "n": a.map_n}
        # Codes near their first label's centre, so the ranking carries signal (and ties).
        centres = torch.rand((ncls, bits), generator=self.gen) < 0.5
        labels = torch.rand((a.map_q + a.map_n, ncls), generator=self.gen) < 0.12
        labels[torch.arange(labels.shape[0]), labels.float().argmax(1)] = True
        first = labels.float().argmax(1)
        flips = torch.rand((labels.shape[0], bits), generator=self.gen) < 0.2
        from kdkit.ops import pack_bits

        codes = pack_bits(centres[first] ^ flips).to(self.device)
        packed = pack_labels(labels).to(self.device)
        q, db, ql, dl = codes[:a.map_q], codes[a.map_q:], packed[:a.map_q], packed[a.map_q:]
        times, kd_ap = _median_time(lambda: hamming_average_precision(q, db, ql, dl),
                                    a.repeat, 1, self.sync)
        kd_s = self.record(case, params, "kdkit", times)
        times, ref_ap = _median_time(
            lambda: reference.hamming_average_precision(q, db, ql, dl, a.map_n, "truncated"),
            a.repeat, 1, self.sync)
        ref_s = self.record(case, params, "torch-sort", times)
        self.ratio(case, params, "torch-sort", kd_s, ref_s)
        diff = float((kd_ap.double() - ref_ap.double()).abs().max())
        self.check(case, params, "torch-sort", diff <= 1e-9,
                   f"mAP {float(kd_ap.mean()):.6f} vs {float(ref_ap.mean()):.6f}; "
                   f"largest per-query difference {diff:.1e}")

