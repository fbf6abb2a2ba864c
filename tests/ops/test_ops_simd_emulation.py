"""The AVX2 and AVX-512 kernels, run through SIMDe's portable emulation of the intrinsics.

The dev machine has no AVX-512, so the VPOPCNTDQ path would otherwise only be compiled here;
this test compiles csrc/cpu/isa_avx{2,512}.cpp (target pragmas stripped) against SIMDe and
checks distances, top-k (ties, tails, chunk boundaries) and the penalty against brute force.
Skipped when g++ or SIMDe headers (Debian: libsimde-dev) are missing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "simd_emu"


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
@pytest.mark.skipif(not Path("/usr/include/simde/x86/avx512.h").exists(), reason="SIMDe headers not installed")
def test_simd_kernels_under_emulation(tmp_path):
    pragma = re.compile(r"^#pragma GCC (target|push_options|pop_options).*$", re.M)
    for name in ("isa_avx2.cpp", "isa_avx512.cpp"):
        src = (ROOT / "csrc" / "cpu" / name).read_text()
        (tmp_path / name).write_text(pragma.sub("", src))
    for name in ("isa_kernels.h", "hamming_impl.inc"):
        shutil.copy(ROOT / "csrc" / "cpu" / name, tmp_path / name)
    shutil.copy(HERE / "harness.cpp", tmp_path / "harness.cpp")
    (tmp_path / "shim").mkdir()
    shutil.copy(HERE / "immintrin.h", tmp_path / "shim" / "immintrin.h")
    exe = tmp_path / "harness"
    subprocess.run(
        ["g++", "-O1", "-std=c++20", f"-I{tmp_path / 'shim'}", f"-I{tmp_path}", "harness.cpp",
         "isa_avx2.cpp", "isa_avx512.cpp", "-o", str(exe)],
        cwd=tmp_path, check=True, capture_output=True, timeout=600,
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-2000:]
    assert "fails=0" in out.stdout
