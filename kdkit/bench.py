"""``kdkit bench``: time the compiled ops against their peers in one run.

Cases (all through the public :mod:`kdkit.ops` API):

* ``topk-random`` / ``topk-clustered``: :func:`kdkit.ops.hamming_topk` over N database
  codes and Q queries, for each code length in ``--bits``. Random codes, and clustered codes
  (100 class centres, 10 % of the bits flipped: many exact distance ties). Peers: faiss
  ``IndexBinaryFlat.search`` with each of its two k-selection strategies (``use_heap`` True:
  a heap per query; False: counting sort), the faster one being the peer of the ratio (CPU
  only; skipped with a note when faiss is absent), and plain
  torch (+-1 codes, a matmul ``(L - q @ db.T) / 2`` and ``torch.topk``; float32 and chunked
  over the database on CPU, bfloat16 on CUDA, chunked only when Q x N does not fit).
  The peers' +-1 databases are prepared outside the timed region (in the peer's favour).
* ``penalty``: :func:`kdkit.ops.binarization_penalty` (mean) forward + backward on a
  1,048,576 x 64 float32 tensor, against eager torch and ``torch.compile`` of the plain
  formula ``((h - torch.where(h >= 0, 1.0, -1.0)) ** 2).mean()``. Each iteration starts with
  ``h.grad = None``, so the allocation of the gradient is timed, as users call it. The
  effective bandwidth (16 bytes per element: forward reads h and writes the gradient factor,
  backward reads it and writes the gradient) is reported against a plain copy of h timed in
  the same run (8 bytes per element), the memory bandwidth the device reaches in practice.
* ``map``: :func:`kdkit.ops.hamming_average_precision` (mAP@all) of 2,000 queries against
  18,015 database codes of 64 bits (MIRFlickr-25K's protocol; 24 multi-hot labels), against
  the sort-based torch evaluator (:mod:`kdkit.ops.reference`: distances, a stable sort,
  cumulative hits) on the same device.

Every method runs in the same process at the same thread count (torch and faiss both set
to ``--threads``). Medians over ``--repeat`` timed runs; speedup = peer time / kdkit time.
Results are cross-checked (kdkit top-k distances must equal faiss's and torch's) and any
disagreement is printed as a WARNING.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

DEFAULT_N = 1_000_000
DEFAULT_Q = 1_000
DEFAULT_K = 100
DEFAULT_BITS = (64, 128)
DEFAULT_PENALTY_SHAPE = (1_048_576, 64)
QUICK = {"n": 65_536, "q": 100, "k": 10, "penalty_rows": 65_536, "map_q": 200}
DEFAULT_MAP = {"map_q": 2_000, "map_n": 18_015, "map_bits": 64, "map_labels": 24}
CASES = ("topk-random", "topk-clustered", "penalty", "map")
N_CENTRES = 100
FLIP_PROB = 0.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout (progress goes to stderr)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device the ops run on (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch and faiss alike "
                             "(default: torch.get_num_threads())")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help=f"database codes for top-k (default {DEFAULT_N:,})")
    parser.add_argument("--q", type=int, default=None, metavar="Q",
                        help=f"queries for top-k (default {DEFAULT_Q:,})")
    parser.add_argument("--k", type=int, default=None, metavar="K",
                        help=f"neighbours per query (default {DEFAULT_K})")
    parser.add_argument("--bits", type=int, nargs="+", default=None, metavar="L",
                        help="code lengths in bits, multiples of 8 (default: 64 128)")
    parser.add_argument("--penalty-rows", type=int, default=None, metavar="R",
                        help=f"rows of h for the penalty case (default {DEFAULT_PENALTY_SHAPE[0]:,})")
    parser.add_argument("--penalty-cols", type=int, default=DEFAULT_PENALTY_SHAPE[1], metavar="C",
                        help=f"columns of h for the penalty case (default {DEFAULT_PENALTY_SHAPE[1]})")
    parser.add_argument("--map-q", type=int, default=None, metavar="Q",
                        help=f"queries of the map case (default {DEFAULT_MAP['map_q']:,})")
    parser.add_argument("--map-n", type=int, default=DEFAULT_MAP["map_n"], metavar="N",
                        help=f"database codes of the map case (default {DEFAULT_MAP['map_n']:,})")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="cases to run (default: all)")
    parser.add_argument("--no-torch-topk", action="store_true",
                        help="skip the plain-torch top-k peer (slow on CPU at full size)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes (N={QUICK['n']:,}, Q={QUICK['q']}, k={QUICK['k']}, "
                             f"penalty {QUICK['penalty_rows']:,} rows) for a smoke run")
    parser.add_argument("--repeat", type=int, default=None, metavar="R",
                        help="timed runs per method; the median is reported (default 5, quick 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


# ---------------------------------------------------------------- helpers

class _Log:
    """Human-readable progress on stdout, or on stderr when --json owns stdout."""

    def __init__(self, json_mode: bool) -> None:
        self.stream = sys.stderr if json_mode else sys.stdout

    def __call__(self, msg: str = "") -> None:
        print(msg, file=self.stream, flush=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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


def _fmt_ratio(x: float) -> str:
    if x >= 100:
        return f"{x:7.0f}x"
    if x >= 0.1:
        return f"{x:7.2f}x"
    return f"{x:7.4f}x"


def _fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:8.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds * 1e6:8.1f} us"


# ---------------------------------------------------------------- data

def _random_codes(n: int, nbytes: int, gen):
    import torch

    return torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=gen)


def _clustered_codes(n: int, bits: int, centres, gen, chunk: int = 1 << 17):
    """Codes drawn around ``centres`` (bool (C, bits)), each bit flipped with FLIP_PROB."""
    import torch

    from kdkit.ops import pack_bits

    out = torch.empty((n, bits // 8), dtype=torch.uint8)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = torch.randint(0, centres.shape[0], (m,), generator=gen)
        flips = torch.rand((m, bits), generator=gen) < FLIP_PROB
        out[start:start + m] = pack_bits(centres[labels] ^ flips)
    return out


def _unpack_pm1(codes, bits: int, dtype):
    """Packed uint8 codes (LSB first) -> +-1 values of ``dtype``, shape (n, bits)."""
    import torch

    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    b = (codes.unsqueeze(-1) >> shifts) & 1
    return (b.reshape(codes.shape[0], bits).to(dtype) * 2 - 1)


# ---------------------------------------------------------------- peers

def _torch_topk(q_pm, db_pm, bits: int, k: int, chunk: int):
    """Plain torch: distances (L - q @ db.T) / 2, torch.topk; merged over database chunks."""
    import torch

    n = db_pm.shape[0]
    best_d = best_i = None
    for start in range(0, n, chunk):
        dots = q_pm @ db_pm[start:start + chunk].T
        dist = (bits - dots) * 0.5
        kk = min(k, dist.shape[1])
        d, i = torch.topk(dist, kk, dim=1, largest=False)
        i = i + start
        if best_d is None:
            best_d, best_i = d, i
        else:
            cat_d = torch.cat([best_d, d], dim=1)
            cat_i = torch.cat([best_i, i], dim=1)
            best_d, sel = torch.topk(cat_d, k, dim=1, largest=False)
            best_i = torch.gather(cat_i, 1, sel)
        del dots, dist
    return best_d, best_i


def _torch_chunk(device: str, q: int, n: int, itemsize: int) -> int:
    """Database chunk for the torch peer so the (Q, chunk) block stays bounded."""
    import torch

    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        budget = min(8 << 30, free // 4)
    else:
        budget = 256 << 20
    return max(1, min(n, budget // max(1, q * itemsize * 2)))


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


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - absent (e.g. the GPU image) or broken
        return None
    return faiss


# ---------------------------------------------------------------- report

def _machine(device: str, threads: int) -> dict[str, Any]:
    import torch

    import kdkit
    from kdkit.ops import extension_info

    try:
        ext = dict(extension_info())
    except Exception as exc:  # noqa: BLE001
        ext = {"loaded": False, "error": f"{type(exc).__name__}: {exc}"}
    faiss = _faiss()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "present") if faiss is not None else None,
        "kdkit": kdkit.__version__,
        "extension": ext,
    }
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        info["loadavg_1m"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["torch_cuda"] = torch.version.cuda
    return info


def _print_report(log: _Log, machine: dict[str, Any], bench: _Bench) -> None:
    if not bench.ratios:
        return
    log()
    log("Speedup of kdkit over each peer (peer median time / kdkit median time; "
        "> 1 means kdkit is faster):")
    for r in bench.ratios:
        label = (f"bits={r['bits']}" if "bits" in r else f"{r['shape']} {r['dtype']}")
        peer = f"{r['peer']} ({r['setting']})" if "setting" in r else r["peer"]
        log(f"  {r['case']:<15} {label:<22} vs {peer:<28} "
            f"kdkit {_fmt_time(r['kdkit_s']).strip():>10}  {r['peer']} "
            f"{_fmt_time(r['peer_s']).strip():>10}  -> {_fmt_ratio(r['speedup'])}")
    bad = [c for c in bench.checks if not c["ok"]]
    log()
    log("Result checks:")
    for c in bench.checks:
        label = (f"bits={c['bits']}" if "bits" in c else f"{c['shape']} {c['dtype']}")
        log(f"  {c['case']:<15} {label:<22} vs {c['peer']:<14} "
            f"{'ok  ' if c['ok'] else 'FAIL'} {c['detail']}")
    if bad:
        log(f"RESULT CHECKS: {len(bad)} of {len(bench.checks)} FAILED (see WARNINGs above)")
    elif bench.checks:
        log(f"Result checks: all {len(bench.checks)} agree "
            "(top-k distances identical to the peers', penalty loss and gradient within 1e-4)")


def _loud_missing_extension(log: _Log, ext: dict[str, Any]) -> None:
    bar = "!" * 78
    log(bar)
    log("!! kdkit._C IS NOT LOADED: these timings are of the pure-torch REFERENCE")
    log("!! implementation, not of the compiled kernels. Build the extension first.")
    if ext.get("error"):
        log(f"!! reason: {ext['error']}")
    log(bar)


def run(args: argparse.Namespace) -> int:
    import torch

    from kdkit.errors import KdkitError

    # resolve sizes
    # None = not given (0 is an error below, not "the default")
    sizes = dict(QUICK) if args.quick else {}
    defaults = {"n": DEFAULT_N, "q": DEFAULT_Q, "k": DEFAULT_K, "penalty_rows": DEFAULT_PENALTY_SHAPE[0],
                "map_q": DEFAULT_MAP["map_q"]}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, sizes.get(name, default))
    args.bits = list(args.bits or DEFAULT_BITS)
    args.repeat = args.repeat if args.repeat is not None else (3 if args.quick else 5)
    for name in ("n", "q", "k", "penalty_rows", "penalty_cols", "repeat", "map_q", "map_n"):
        if getattr(args, name) < 1:
            raise KdkitError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.k > args.n:
        raise KdkitError(f"--k ({args.k}) must not exceed --n ({args.n})")
    for bits in args.bits:
        if bits < 8 or bits % 8:
            raise KdkitError(f"--bits values must be positive multiples of 8, got {bits}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KdkitError("--device cuda: no CUDA device is available to torch")
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    if threads < 1:
        raise KdkitError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)

    log = _Log(args.json)
    machine = _machine(args.device, threads)
    ext = machine["extension"]
    log(f"kdkit bench -- kdkit {machine['kdkit']}, torch {machine['torch']}, "
        f"faiss {machine['faiss'] or 'not installed'}")
    log(f"machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs); "
        f"threads: {threads} (torch and faiss); load average {machine.get('loadavg_1m')}")
    log(f"extension: {'loaded' if ext.get('loaded') else 'NOT LOADED'}; "
        f"cpu isa path: {ext.get('cpu_isa') or '-'}; "
        f"cpu kernels threaded: {'yes' if ext.get('cpu_threaded') else 'NO (built without OpenMP)'}; "
        f"cuda kernels compiled: {'yes' if ext.get('cuda_compiled') else 'no'}")
    bench = _Bench(args, log)
    load = machine.get("loadavg_1m")
    if load is not None and load > 0.5 * (machine["cpu_count"] or 1) + 0.5:
        bench.warn(f"the machine is busy (1-minute load average {load} on "
                   f"{machine['cpu_count']} CPUs): timings, above all multi-threaded ones, "
                   "are unreliable")
    if args.device == "cuda":
        log(f"device: cuda ({machine['gpu']}, torch CUDA {machine['torch_cuda']})")
        if ext.get("loaded") and not ext.get("cuda_compiled"):
            log("WARNING: kdkit._C was built without CUDA kernels: --device cuda times the "
                "reference implementation")
    else:
        log("device: cpu")
    if not ext.get("loaded"):
        _loud_missing_extension(log, ext)
    log(f"sizes: top-k N={args.n:,} Q={args.q:,} k={args.k} bits={args.bits}; "
        f"penalty {args.penalty_rows:,}x{args.penalty_cols} float32; "
        f"median of {args.repeat} runs")
    log()

    for case in args.cases:
        if case == "penalty":
            bench.penalty()
        elif case == "map":
            bench.map()
        else:
            bench.topk(case.split("-", 1)[1])

    _print_report(log, machine, bench)
    if not ext.get("loaded"):
        _loud_missing_extension(log, ext)

    if args.json:
        payload = {
            "machine": machine,
            "config": {"n": args.n, "q": args.q, "k": args.k, "bits": args.bits,
                       "penalty_shape": [args.penalty_rows, args.penalty_cols],
                       "repeat": args.repeat, "seed": args.seed, "cases": list(args.cases),
                       "quick": bool(args.quick)},
            "results": bench.results,
            "ratios": bench.ratios,
            "checks": bench.checks,
            "penalty_bandwidth": bench.bandwidth,
            "warnings": bench.warnings,
            "notes": bench.notes,
        }
        print(json.dumps(payload, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kdkit.bench`` entry (the ``kdkit bench`` command calls :func:`run`)."""
    parser = argparse.ArgumentParser(prog="kdkit bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    from kdkit.errors import KdkitError

    try:
        return run(parser.parse_args(argv))
    except KdkitError as exc:
        print(f"kdkit bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
