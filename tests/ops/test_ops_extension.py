"""Loading of kdkit._C: lazy import, extension_info, the pure-torch fallback with one warning
when _C is missing, and ISA forcing through KDKIT_CPU_ISA. Each scenario runs in a fresh
interpreter so the import state is real."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import kdkit.ops as ops


def _run(code: str, env: dict | None = None) -> dict:
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_kdkit_does_not_load_extension():
    res = _run(
        """
        import json, sys
        import kdkit, kdkit.ops
        print(json.dumps({"loaded_C": "kdkit._C" in sys.modules}))
        """
    )
    assert res == {"loaded_C": False}


def test_extension_info_keys():
    info = ops.extension_info()
    assert set(info) == {"loaded", "cpu_isa", "cpu_threaded", "cuda_compiled", "error"}
    if info["loaded"]:
        assert info["cpu_isa"] in ("avx512_vpopcntdq", "avx2", "scalar")
        assert info["error"] is None
        assert isinstance(info["cuda_compiled"], bool)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ops.extension_info()["loaded"],
                    reason="OpenMP build is Linux-only; needs kdkit._C")
def test_cpu_kernels_are_built_threaded():
    # Without -fopenmp at::parallel_for silently runs every CPU kernel on one thread.
    assert ops.extension_info()["cpu_threaded"] is True


_BLOCK_C = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kdkit._C":
            raise ImportError("blocked by test")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_fallback_to_reference_with_one_warning():
    res = _run(
        _BLOCK_C
        + """
import json, warnings
import torch
import kdkit.ops as ops
from kdkit.ops import reference
torch.manual_seed(0)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    q = torch.randint(0, 256, (3, 8), dtype=torch.uint8)
    db = torch.randint(0, 256, (50, 8), dtype=torch.uint8)
    d, i = ops.hamming_topk(q, db, 5)
    dist = ops.hamming_distance(q, db)
    h = torch.randn(10, 4, requires_grad=True)
    ops.binarization_penalty(h).backward()
    info = ops.extension_info()
msgs = [str(x.message) for x in w if "kdkit._C" in str(x.message)]
ed, ei = reference.hamming_topk(q, db, 5)
print(json.dumps({
    "n_warn": len(msgs), "msg": msgs[0] if msgs else "",
    "info": info, "ok": bool(torch.equal(d, ed) and torch.equal(i, ei)
                              and torch.equal(dist, reference.hamming_distance(q, db))
                              and h.grad is not None),
}))
"""
    )
    assert res["n_warn"] == 1
    assert "kdkit._C extension not available" in res["msg"] and "blocked by test" in res["msg"]
    assert "pip install --no-build-isolation -e ." in res["msg"]
    assert res["info"]["loaded"] is False and res["info"]["cpu_isa"] is None
    assert "blocked by test" in res["info"]["error"]
    assert res["ok"]


def test_fallback_still_validates_inputs():
    res = _run(
        _BLOCK_C
        + """
import json, warnings
warnings.simplefilter("ignore")
import torch, kdkit.ops as ops
q = torch.zeros(2, 8, dtype=torch.uint8)
try:
    ops.hamming_topk(q, q, 3)
    err = None
except ValueError as e:
    err = str(e)
print(json.dumps({"err": err}))
"""
    )
    assert res["err"].startswith("hamming_topk: k=3 out of range")


@pytest.mark.skipif(not ops.extension_info()["loaded"], reason="kdkit._C not built")
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_env_forces_cpu_isa(isa):
    from kdkit.ops import _extension

    available = _extension.available_cpu_isas()
    res = _run(
        """
        import json, torch, kdkit.ops as ops
        q = torch.randint(0, 256, (4, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        d, i = ops.hamming_topk(q, q, 2)
        print(json.dumps({"isa": ops.extension_info()["cpu_isa"], "self": d[:, 0].tolist()}))
        """,
        env={"KDKIT_CPU_ISA": isa},
    )
    wanted = "avx512_vpopcntdq" if isa == "avx512" else isa
    # a request above what the machine supports falls back to the best available path
    assert res["isa"] == (wanted if wanted in available else available[0])
    assert res["self"] == [0, 0, 0, 0]
