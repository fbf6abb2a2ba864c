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

In the top-k cases each method (kdkit, faiss with both settings, plain torch) is timed in a
process of its own (:mod:`kdkit.bench.worker`, one after the other, on the same codes: one process
per method for all top-k cases and code lengths, timed after the other cases), so no other
library's thread pool competes with it; the faiss process never imports torch. The penalty and map
cases, torch against torch, run in this process. Every method runs at the same thread count
(``--threads``). Medians over ``--repeat`` timed runs; speedup = peer time / kdkit time.
Results are cross-checked (kdkit top-k distances must equal faiss's and torch's) and any
disagreement is printed as a WARNING.

The package, by concern: :mod:`kdkit.bench.workloads` (sizes, codes, the peers),
:mod:`kdkit.bench.cases` (the timed cases and their checks), :mod:`kdkit.bench.worker` (a top-k
method timed in its own process), :mod:`kdkit.bench.report` (progress, machine, report); this
module holds the command (:func:`add_arguments`, :func:`run`, :func:`main`; ``python -m
kdkit.bench`` runs :func:`main`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# The "X as X" imports re-export the names kdkit.bench had as one module (benchmarks/test_bench_ops.py
# imports the workloads from here).
from kdkit.bench.cases import _Bench
from kdkit.bench.report import _cpu_model as _cpu_model
from kdkit.bench.report import _fmt_ratio as _fmt_ratio
from kdkit.bench.report import _fmt_time as _fmt_time
from kdkit.bench.report import _Log, _loud_missing_extension, _machine, _print_report
from kdkit.bench.worker import _median_time as _median_time
from kdkit.bench.workloads import (
    CASES,
    DEFAULT_BITS,
    DEFAULT_K,
    DEFAULT_MAP,
    DEFAULT_N,
    DEFAULT_PENALTY_SHAPE,
    DEFAULT_Q,
    QUICK,
    case_bytes,
)
from kdkit.bench.workloads import FLIP_PROB as FLIP_PROB
from kdkit.bench.workloads import N_CENTRES as N_CENTRES
from kdkit.bench.workloads import _clustered_codes as _clustered_codes
from kdkit.bench.workloads import _random_codes as _random_codes
from kdkit.bench.workloads import _torch_chunk as _torch_chunk
from kdkit.bench.workloads import _torch_topk as _torch_topk
from kdkit.bench.workloads import _unpack_pm1 as _unpack_pm1


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
    cpus = os.cpu_count() or 1
    if args.threads is not None and threads > cpus:  # 20000 aborted in libgomp, 100000 segfaulted
        raise KdkitError(f"--threads {threads} is more than the {cpus} logical CPUs of this machine (more "
                         f"threads time their contention, not the ops); give at most {cpus}")
    from kdkit.memory import available_memory, format_bytes

    memory = available_memory()
    for case in args.cases:
        need = case_bytes(case, args)
        if memory is not None and need > memory.bytes:
            raise KdkitError(f"the {case} case needs about {format_bytes(need)} at these sizes, more than the "
                             f"{format_bytes(memory.bytes)} of memory {memory.source}; give smaller sizes (--n, --q, "
                             "--bits, --penalty-rows/--penalty-cols, --map-q/--map-n) or leave the case out (--cases)")
    args.threads = threads  # the top-k worker processes set the same count
    torch.set_num_threads(threads)

    log = _Log(args.json)
    machine = _machine(args.device, threads)
    ext = machine["extension"]
    log(f"kdkit bench -- kdkit {machine['kdkit']}, torch {machine['torch']}, "
        f"faiss {machine['faiss'] or 'not installed'}")
    log(f"machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs); "
        f"threads: {threads} (torch and faiss); load average {machine.get('loadavg_1m')}")
    if any(case.startswith("topk-") for case in args.cases):
        log("top-k: kdkit, faiss and torch each timed in a process of their own (no torch in faiss's)")
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
    bench.time_topk()  # each method once, in its own process, over every top-k case's codes

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
            # the cases run, and whether each timed its methods in separate processes
            "peers_in_separate_processes": {case: case.startswith("topk-") for case in args.cases},
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

