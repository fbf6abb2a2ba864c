"""Seeding: stable seeds derived from the run's seed, and the RNG state of python, numpy and torch.

Everything random in a run draws from a seed derived here (``derive_seed(seed, "init", kind, name)``,
``derive_seed(seed, "stage", name)``, ...), so what a stage computes depends only on the config and
not on what ran before it — the condition for exact resume.  Importing this module is cheap (numpy
and torch load when a function needs them).
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

__all__ = ["derive_seed", "seed_everything", "capture_rng_state", "restore_rng_state"]


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts, e.g. ``derive_seed(seed, "student", epoch)``."""
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """RNG states of python, numpy and torch as tensors / primitive containers (checkpointable with
    ``torch.load(weights_only=True)``)."""
    import numpy as np
    import torch

    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured (nothing for an empty ``state``)."""
    if not state:
        return
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
