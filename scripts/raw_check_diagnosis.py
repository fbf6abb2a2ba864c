"""Which C++ argument checks crash (SIGSEGV) instead of raising, each case in its own process.

On a lent H200 image (torch 2.11.0+cu130, Python 3.12) every kdkit raw-op check whose message
formats an integer crashed the process, on CPU and CUDA kernels alike, while a device-mismatch
check raised. This separates torch's own checks from kdkit's, and integers from other message
parts. Run by scripts/gpu-check.sh when its test step fails; prints one line per case.
"""
from __future__ import annotations

import subprocess
import sys

SETUP = ("import torch, kdkit.ops as ops; ops.extension_info(); kd = torch.ops.kdkit; "
         "dev = 'cuda' if torch.cuda.is_available() else 'cpu'; "
         "q = torch.randint(0, 256, (6, 8), dtype=torch.uint8); db = torch.randint(0, 256, (300, 8), dtype=torch.uint8)")
CASES = {
    "torch's own check, integer in the message (torch.empty(-1))": "torch.empty(-1)",
    "torch's own check on CUDA (torch.empty(-1, device=dev))": "torch.empty(-1, device=dev)",
    "kdkit CPU check, integer (hamming_topk k=0)": "kd.hamming_topk(q, db, 0)",
    "kdkit CPU check, shape (codes 1-D)": "kd.hamming_distance(q, db[0])",
    "kdkit CPU check, no argument in the message (penalty on int32)": "kd.binarization_penalty(torch.zeros(3, dtype=torch.int32), 1)",
    "kdkit CUDA check, integer (hamming_topk k=0)": "kd.hamming_topk(q.to(dev), db.to(dev), 0)",
    "kdkit CUDA check, devices (hamming_distance cpu vs cuda)": "kd.hamming_distance(q, db.to(dev))",
}


def main() -> int:
    for name, call in CASES.items():
        code = f"{SETUP}\ntry:\n    {call}\n    print('no error')\nexcept Exception as e:\n    print('raised ' + type(e).__name__)\n"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        outcome = proc.stdout.strip() or f"exit {proc.returncode}" + (" (SIGSEGV)" if proc.returncode == -11 else "")
        print(f"  {name}: {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
