"""The cases of ``kdkit bench`` (:class:`_Bench`: top-k, penalty, mAP), each timing kdkit and its
peers on the same data (:func:`_median_time`) and cross-checking their results."""
from __future__ import annotations

import argparse
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from kdkit.bench.report import _fmt_time, _Log
from kdkit.bench.workloads import (
    DEFAULT_MAP,
    N_CENTRES,
    _clustered_codes,
    _faiss,
    _random_codes,
    _torch_chunk,
    _torch_topk,
    _unpack_pm1,
)


def _median_time(fn: Callable[[], Any], repeat: int, warmup: int,
                 sync: Callable[[], None]) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` runs after ``warmup`` untimed ones; returns the first result."""
    first = None
    for _ in range(warmup):
        result = fn()
        sync()
        if first is None:
            first = result
        del result
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if first is None:
            first = result
        del result
    return times, first



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
        import torch

        from kdkit.ops import hamming_topk

        a = self.args
        case = f"topk-{data}"
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
            db_dev, q_dev = db.to(self.device), qs.to(self.device)

            # partial, not a lambda: the arrays are bound now and freed by the del below
            times, (kd_d, kd_i) = _median_time(functools.partial(hamming_topk, q_dev, db_dev, a.k),
                                               a.repeat, 1, self.sync)
            kd_s = self.record(case, params, "kdkit", times)
            self.results[-1]["code_pairs_per_s"] = a.q * a.n / kd_s
            kd_d, kd_i = kd_d.cpu(), kd_i.cpu()
            ties = int((kd_d[:, :-1] == kd_d[:, 1:]).sum())
            self.results[-1]["adjacent_ties_in_result"] = ties

            # faiss (CPU only)
            if self.device.type == "cpu":
                faiss = _faiss()
                if faiss is None:
                    self.note("faiss is not installed: the faiss peer is skipped")
                else:
                    index = faiss.IndexBinaryFlat(bits)
                    index.add(db.numpy())
                    qn = qs.numpy()
                    # Both k-selection strategies: which is faster depends on the code
                    # length and the data, and the ratio is taken against the faster.
                    setting_s = {}
                    for use_heap, label in ((True, "faiss-heap"), (False, "faiss-counting")):
                        index.use_heap = use_heap
                        times, (f_d, f_i) = _median_time(lambda: index.search(qn, a.k),
                                                         a.repeat, 1, self.sync)
                        setting_s[label] = self.record(case, params, label, times)
                        f_d, f_i = torch.from_numpy(f_d), torch.from_numpy(f_i)
                        same_d = bool(torch.equal(f_d.to(torch.int32), kd_d))
                        same_i = bool(torch.equal(f_i.to(torch.int64), kd_i))
                        self.check(case, params, label, same_d,
                                   "distances identical" + ("" if same_d else " -- MISMATCH")
                                   + f"; indices {'identical' if same_i else 'differ (tie order)'}")
                    best = min(setting_s, key=setting_s.get)
                    self.ratio(case, params, "faiss", kd_s, setting_s[best], setting=best)
                    del index
            else:
                self.note("faiss-cpu is not a GPU peer: on --device cuda the peer is torch")

            # plain torch
            if a.no_torch_topk:
                self.note("plain-torch top-k peer skipped (--no-torch-topk)")
            else:
                dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
                if dtype == torch.bfloat16 and bits > 256:
                    self.note("bf16 +-1 dot products are exact only up to 256 bits; "
                              "torch peer distances may be rounded above that")
                db_pm = _unpack_pm1(db_dev, bits, dtype)
                q_pm = _unpack_pm1(q_dev, bits, dtype)
                chunk = _torch_chunk(self.device.type, a.q, a.n, db_pm.element_size())
                if chunk < a.n:
                    self.note(f"torch peer: database processed in chunks of {chunk:,} codes "
                              "to bound memory")
                # Large CPU runs take seconds: the first timed run doubles as warm-up.
                warm = 1 if (self.device.type == "cuda" or a.n * a.q <= 1e8) else 0
                times, (t_d, _t_i) = _median_time(
                    functools.partial(_torch_topk, q_pm, db_pm, bits, a.k, chunk), a.repeat, warm, self.sync)
                t_s = self.record(case, params, "torch", times)
                self.ratio(case, params, "torch", kd_s, t_s)
                same = bool(torch.equal(t_d.float().cpu(), kd_d.float()))
                self.check(case, params, "torch", same,
                           "distances identical" if same else "distances differ")
                del db_pm, q_pm
            del db, qs, db_dev, q_dev

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

