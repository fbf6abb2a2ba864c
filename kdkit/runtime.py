"""Process settings kdkit's CLI makes before torch loads: how OpenMP threads wait, and glibc's malloc.

**OpenMP**: torch's CPU ops are OpenMP parallel regions, thousands per training step of a small CNN.
Between regions, OpenMP's (GNU libgomp's) default spins 300,000 times before a thread sleeps: fast on
an idle machine, but a neighbour on one of the cores makes every region wait for a thread that is
not running (kd's job 5x slower beside one busy process on 2 cores).  ``OMP_WAIT_POLICY=PASSIVE``
(kdkit's earlier default) never spins: safe beside neighbours, but each region then wakes its
threads from sleep (the same job 1.35x slower on an idle machine).  kdkit sets
``GOMP_SPINCOUNT=10000``, a short spin: as fast as spinning on an idle machine, 1.3x passive's time
beside a busy neighbour (measured: ``docs/benchmarks.md``).  ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
set by the user win (:func:`user_openmp_env`).  A sweep whose runs at once want more threads than the machine
has cores gives them passive threads instead (``kdkit.sweep.runner.child_env``: ``OMP_WAIT_POLICY=PASSIVE``
with ``GOMP_SPINCOUNT=0``, as libgomp takes a set spin count over the wait policy).

**malloc**: with glibc's defaults a CPU training step hands the freed activations back to the
kernel and faults them in again on the next step — 10,000 to 28,000 minor page faults per step
(``benchmarks/train_step.py --allocator both``).  Two settings keep them in the heap: an mmap threshold
of 32 MiB (glibc's largest; below it a freed block is reused, not unmapped) and a trim threshold of
2 GiB.  Results are unchanged: only where the memory comes from changes.  ``mallopt(3)`` sets the same
two glibc parameters the ``MALLOC_*_`` environment variables do, from inside the process, with nothing
to install; jemalloc/tcmalloc would need ``LD_PRELOAD`` before the process starts (a re-exec of every
command, torchrun's workers included).  A preloaded allocator or those variables, when present, are
left alone; ``KDKIT_MALLOC_TUNING=0`` turns the tuning off.

:func:`configure` is called by the CLI (:func:`kdkit.cli.main`, so every ``kdkit`` command and each
torchrun worker); ``kdkit info`` shows :func:`describe`.  Library users call
``kdkit.runtime.configure()`` themselves, before importing torch.  :func:`process_env` gives another
process the same settings through its environment (the benchmarks' peers).
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["configure", "tune", "describe", "process_env", "neutral_env", "user_openmp_env", "ENV_SWITCH",
           "OPENMP_SPIN", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: ``KDKIT_MALLOC_TUNING=0`` (or off / false / no): glibc's defaults
ENV_SWITCH = "KDKIT_MALLOC_TUNING"
#: the tuned values: glibc's largest mmap threshold on 64-bit; the largest trim threshold ``mallopt``'s
#: ``int`` takes (the environment variable's 4 GiB does not fit)
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: environment that already decides the allocator: left alone
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

#: libgomp's spin count between parallel regions (see the module docs)
OPENMP_SPIN = "10000"
#: environment that already decides how OpenMP threads wait: left alone
_OPENMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_state: str | None = None
_user_openmp: dict[str, str] | None = None  # what configure() found set, before it set anything; None: not run


def configure() -> list[str]:
    """Both settings (see the module docs), before torch loads; returns :func:`describe`."""
    global _user_openmp
    if _user_openmp is None:
        _user_openmp = user_openmp_env()
        if not _user_openmp:
            os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN
    tune()
    return describe()


def user_openmp_env() -> dict[str, str]:
    """The OpenMP wait settings (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) the user chose: as :func:`configure`
    found them, or, before it ran, as the environment holds them; never the spin count kdkit set itself."""
    if _user_openmp is not None:
        return dict(_user_openmp)
    return {k: os.environ[k] for k in _OPENMP_ENV if k in os.environ}


def neutral_env(environ=None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) without the variables that decide these settings (the switch,
    glibc's ``MALLOC_*_`` thresholds, OpenMP's wait policy and spin count): a process started with it gets
    the library defaults, or kdkit's own when it is a ``kdkit`` command (for the benchmarks' before/after)."""
    decided = {ENV_SWITCH, *_ALLOCATOR_ENV, *_OPENMP_ENV}
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k not in decided}


def process_env() -> dict[str, str]:
    """The environment variables that give another process kdkit's settings (for a peer in a benchmark)."""
    return {"GOMP_SPINCOUNT": OPENMP_SPIN, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def tune() -> str:
    """Set glibc's mmap and trim thresholds once (see the module docs); returns what is in effect."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        _state = f"glibc malloc defaults ({ENV_SWITCH}=0)"
        return _state
    preload = os.environ.get("LD_PRELOAD", "")
    preloaded = next((name for name in _PRELOADED if name in preload), None)
    if preloaded:
        _state = f"{preloaded} (LD_PRELOAD), left as it is"
        return _state
    set_by_env = [k for k in _ALLOCATOR_ENV if k in os.environ]
    if set_by_env:
        _state = f"glibc malloc as the environment sets it ({', '.join(set_by_env)}), left as it is"
        return _state
    libc_name, _version = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        _state = "the platform's malloc, unchanged (the tuning is for glibc)"
        return _state
    libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them (find_library ran ldconfig)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state = (f"glibc malloc tuned: mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
              f"{TRIM_THRESHOLD / 2**30:.0f} GiB ({ENV_SWITCH}=0 turns it off)" if ok
              else "glibc malloc defaults (mallopt refused the tuning)")
    return _state


def describe() -> list[str]:
    """What is in effect: the OpenMP and malloc lines of :func:`configure`, or that it has not run."""
    if _user_openmp is None:
        openmp = "OpenMP as it comes (not configured in this process; the kdkit CLI does)"
    elif _user_openmp:
        openmp = "OpenMP as the environment sets it (" + ", ".join(f"{k}={v}" for k, v in _user_openmp.items()) + ")"
    else:
        openmp = f"OpenMP threads spin briefly, then sleep (GOMP_SPINCOUNT={OPENMP_SPIN})"
    return [openmp,
            _state or f"glibc malloc defaults (not tuned in this process; the kdkit CLI tunes it unless {ENV_SWITCH}=0)"]
