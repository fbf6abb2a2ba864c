"""What ``kdkit bench`` prints: progress lines, the machine it ran on, and the report of speedups
and result checks."""
from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from kdkit.bench.workloads import _faiss

if TYPE_CHECKING:
    from kdkit.bench.cases import _Bench


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

