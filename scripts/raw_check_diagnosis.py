"""Which C++ argument checks crash (SIGSEGV) instead of raising, and why: each case in its own process.

On a lent H200 image (torch 2.11.0+cu130, Python 3.12) every kdkit raw-op check whose message
streamed an integer crashed the process, on CPU and CUDA kernels alike, while a device-mismatch
check raised. kdkit's checks now build their messages without iostreams (csrc/check.h), so its own
cases should raise everywhere; the probe cases say whether the image itself is at fault:

- the toolchain: the C++ compiler, torch's C++ ABI flag, and every libstdc++ a process maps once
  torch and kdkit._C are loaded (two different copies would explain a crash in locale facets);
- a probe library compiled here with the same compiler and torch's headers, loaded beside torch:
  an integer streamed into a std::ostringstream, a TORCH_CHECK with an integer, and the same check
  with the integer made a string first (kdkit's way).

Run by scripts/gpu-check.sh on every GPU machine; prints one line per fact or case and exits 0.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: the start of every case's process: torch and kdkit._C loaded, as a user's process has them
LOADED = "import torch, kdkit.ops as ops; ops.extension_info()"
SETUP = (f"{LOADED}; kd = torch.ops.kdkit; "
         "dev = 'cuda' if torch.cuda.is_available() else 'cpu'; "
         "q = torch.randint(0, 256, (6, 8), dtype=torch.uint8); db = torch.randint(0, 256, (300, 8), dtype=torch.uint8)")
CASES = {
    "torch's own check, integer in the message (torch.empty(-1))": "torch.empty(-1)",
    "torch's own check on CUDA (torch.empty(-1, device=dev))": "torch.empty(-1, device=dev)",
    "kdkit CPU check, integer (hamming_topk k=0)": "kd.hamming_topk(q, db, 0)",
    "kdkit CPU check, shape (codes 1-D)": "kd.hamming_distance(q, db[0])",
    "kdkit CPU check, no argument in the message (penalty on int32)": "kd.binarization_penalty(torch.zeros(3, dtype=torch.int32), 1)",
    "kdkit CPU check, integer (penalty reduction=7)": "kd.binarization_penalty(torch.zeros(3), 7)",
    "kdkit CUDA check, integer (hamming_topk k=0)": "kd.hamming_topk(q.to(dev), db.to(dev), 0)",
    "kdkit CUDA check, devices (hamming_distance cpu vs cuda)": "kd.hamming_distance(q, db.to(dev))",
}

# Each function returns 0 when its C++ exception was caught, the string's length when nothing threw.
PROBE_SOURCE = r"""
#include <c10/util/Exception.h>
#include <sstream>
#include <string>

extern "C" long probe_stream_int(long x) {
  std::ostringstream s;
  s << "value " << x;
  return (long)s.str().size();
}
extern "C" long probe_check_int(long x) {
  try { TORCH_CHECK(x == 0, "probe: got ", x); } catch (const c10::Error&) { return 0; }
  return -1;
}
extern "C" long probe_check_string(long x) {
  try { TORCH_CHECK(x == 0, "probe: got " + std::to_string(x)); } catch (const c10::Error&) { return 0; }
  return -1;
}
"""
PROBES = {
    "probe: an integer into a std::ostringstream (no exception)": "probe_stream_int",
    "probe: TORCH_CHECK with an integer, caught in C++": "probe_check_int",
    "probe: TORCH_CHECK with std::to_string (kdkit's way), caught in C++": "probe_check_string",
}


def _outcome(proc: subprocess.CompletedProcess) -> str:
    if proc.stdout.strip():
        return proc.stdout.strip().splitlines()[-1]
    return f"exit {proc.returncode}" + (" (SIGSEGV)" if proc.returncode == -11 else "")


def _run(code: str) -> str:
    return _outcome(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120))


def toolchain() -> list[str]:
    """The compiler torch's extension builder uses, the ABI flag, and the libstdc++ copies a process maps."""
    import torch

    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "not found"
    maps = _run(f"{LOADED}\n"
                "libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l})\n"
                "print(', '.join(libs) or 'none')")
    return [f"compiler ({cxx}): {version}",
            f"torch {torch.__version__}, _GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"libstdc++ mapped with torch and kdkit._C loaded: {maps}"]


def build_probe(workdir: Path) -> tuple[Path | None, str]:
    """Compiles PROBE_SOURCE as a plain shared library (seconds: no dispatcher, no pybind)."""
    import torch

    torch_dir = Path(torch.__file__).parent  # its headers and libc10 (cpp_extension's import warns without CUDA)
    src = workdir / "probe.cpp"
    src.write_text(PROBE_SOURCE)
    lib = workdir / "probe.so"
    cmd = [os.environ.get("CXX", "c++"), "-O2", "-shared", "-fPIC", "-std=c++20",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", str(src), "-o", str(lib)]
    cmd += [f"-I{torch_dir / 'include'}", f"-L{torch_dir / 'lib'}", "-lc10"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, "probe did not compile: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return lib, "probe compiled"


def main() -> int:
    for line in toolchain():
        print(f"  {line}", flush=True)
    for name, call in CASES.items():
        code = f"{SETUP}\ntry:\n    {call}\n    print('no error')\nexcept Exception as e:\n    print('raised ' + type(e).__name__)\n"
        print(f"  {name}: {_run(code)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lib, said = build_probe(Path(tmp))
        print(f"  {said}", flush=True)
        if lib is not None:
            for name, function in PROBES.items():
                code = (f"import ctypes; {LOADED}\n"
                        f"f = ctypes.CDLL({str(lib)!r}, mode=ctypes.RTLD_GLOBAL).{function}\n"
                        "f.restype, f.argtypes = ctypes.c_long, [ctypes.c_long]\n"
                        "r = f(7)\nprint('raised and caught' if r == 0 else f'no exception (length {r})')")
                print(f"  {name}: {_run(code)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
