"""scripts/raw_check_diagnosis.py's probe: compiled here with the machine's compiler and torch's
headers, loaded beside torch, each function must report what it did (the GPU image where kdkit's
checks crashed gets the same probe; here nothing may crash)."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (loads libc10, which the probe links against)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import raw_check_diagnosis as diagnosis  # noqa: E402


def test_toolchain_names_the_compiler_abi_and_libstdcxx():
    compiler, abi, mapped = diagnosis.toolchain()
    assert compiler.startswith("compiler (") and "not found" not in compiler
    assert "_GLIBCXX_USE_CXX11_ABI=" in abi
    assert "libstdc++.so" in mapped.split(": ", 1)[1]


def test_probe_compiles_and_reports_each_case(tmp_path):
    lib, said = diagnosis.build_probe(tmp_path)
    if lib is None:
        pytest.fail(said)
    probe = ctypes.CDLL(str(lib))
    results = {}
    for function in diagnosis.PROBES.values():
        f = getattr(probe, function)
        f.restype, f.argtypes = ctypes.c_long, [ctypes.c_long]
        results[function] = f(7), f(0)
    assert results["probe_stream_int"] == (len("value 7"), len("value 0"))
    assert results["probe_check_int"] == (0, -1)  # 0: raised and caught; -1: the check passed
    assert results["probe_check_string"] == (0, -1)
