#!/usr/bin/env bash
# The whole GPU path of kdkit in one command, for a bare GPU machine where torch is already
# installed and nothing can be fetched:
#   1. build kdkit._C against that torch (pip --no-deps --no-build-isolation, CUDA forced,
#      one architecture: the visible GPU's),
#   2. scripts/raw_check_diagnosis.py (how C++ argument checks behave on this image; never fails),
#   3. the CUDA parity tests of every op and the AMP training test,
#   4. a short `kdkit train --method kd` with device=cuda (AMP on),
#   5. `kdkit bench --device cuda --json`,
#   6. benchmarks/train_step.py --gpu: a KD step (resnet32x4 -> resnet8x4, batch 256, bf16,
#      channels_last) of kdkit against a plain loop and torchdistill, in one process.
# Wheels in .gpu-wheels/ (scripts/gpu-wheels.sh fetches them where PyPI is reachable; carry the
# folder to the GPU machine) are installed first, without their dependencies: torchdistill.
# It stops at the first failing step with a line naming it. Everything lands in one folder:
#   bash scripts/gpu-check.sh [OUTDIR]        (default: $OUT, else ./gpu-check-out)
#   bash scripts/gpu-check.sh --dry-run [OUTDIR]
#   bash scripts/gpu-check.sh --keep-going [OUTDIR]
# --dry-run is the self-check for machines without a GPU: the same build (CPU kernels, plus
# CUDA sources compiled when nvcc is present) and the CPU op tests, with the GPU steps skipped.
# --keep-going runs every step even after a failure (GPU minutes are scarce: see all that
# fails in one call) and exits 1 at the end if any step failed.
# The tests run in 4 pytest-xdist workers where xdist is installed, so a test that crashes
# its process is reported by name and the others still run.
# Files: gpu-check.log (everything), bench-cuda.json, kd-cuda-summary.json, train-step-cuda.json.
set -Eeuo pipefail

DRY_RUN=0 KEEP_GOING=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --keep-going) KEEP_GOING=1; shift ;;
        *) break ;;
    esac
done
OUTDIR=${1:-${OUT:-gpu-check-out}}
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu-check.log"
: >"$LOG"
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 KDKIT_CACHE_DIR="${KDKIT_CACHE_DIR:-$(mktemp -d)}"
START=$SECONDS
STEP="start"
FAILED=()

say() { echo "gpu-check [$((SECONDS - START)) s] $*" | tee -a "$LOG"; }
fail() {
    say "FAILED at step: $STEP (exit $1); see $LOG"
    if [ "$KEEP_GOING" = 0 ]; then exit "$1"; fi
    if [ "${FAILED[*]: -1}" != "$STEP" ]; then FAILED+=("$STEP"); fi
}
step() { STEP="$1"; say "== $1"; }
# A failing command fails its step; with --keep-going the script goes on to the next command.
run() {
    local rc=0
    "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if [ "$rc" != 0 ]; then fail "$rc"; fi
    return 0
}

step "environment"
run "$PY" - <<'EOF'
import platform, sys, torch
print(f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
else:
    print("GPU: none visible to torch")
EOF
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$GPU" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    STEP="environment"
    say "no GPU is visible to torch: run on a GPU machine, or pass --dry-run for the CPU self-check"
    exit 2
fi

if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    step "peers from .gpu-wheels"
    run "$PY" -m pip install --no-deps --no-index -q .gpu-wheels/*.whl
fi

step "build kdkit._C"
if [ "$GPU" = 1 ]; then
    ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
    export KDKIT_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
run "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e .
run "$PY" - <<EOF
from kdkit.ops import extension_info
info = extension_info()
print("extension:", info)
assert info["loaded"], "kdkit._C did not load"
assert $GPU == 0 or info["cuda_compiled"], "kdkit._C was built without its CUDA kernels"
EOF

step "raw-check diagnosis (facts for docs/gpu.md; never fails the script)"
# Raw-op argument checks crashed (SIGSEGV) on one GPU image: the toolchain, each kind of check,
# and a probe built with this machine's compiler say whether kdkit's iostream-free messages
# (csrc/check.h) are what fixed it and where the fault lies.
"$PY" scripts/raw_check_diagnosis.py 2>&1 | tee -a "$LOG" || true

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST+=(-n 4); fi
if [ "$KEEP_GOING" = 0 ]; then PYTEST+=(-x); fi
if [ "$DRY_RUN" = 1 ] && [ "$GPU" = 0 ]; then
    step "CPU op tests (dry run: no GPU, the GPU steps are skipped)"
    run "${PYTEST[@]}" tests/ops
    say "dry run passed: the build and the CPU op tests work; the CUDA tests skip without a GPU"
    exit 0
fi

step "CUDA parity tests and the AMP training test"
run "${PYTEST[@]}" -rs tests/ops/test_cuda.py tests/engine/test_trainer.py::test_amp_on_cuda_saves_scaler_state
# A skip for want of CUDA on a GPU machine means the kernels were not tested (faiss, absent
# from bare GPU images, may be skipped).
SKIPPED=$(grep -E -c "^SKIPPED .*(no CUDA device|without CUDA kernels|CUDA only)" "$LOG" || true)
if [ "$SKIPPED" != 0 ]; then
    say "$SKIPPED CUDA tests were skipped on a GPU machine (see SKIPPED above)"
    fail 1
fi

step "kdkit train --method kd on CUDA (AMP)"
RUN_DIR=$(mktemp -d)/kd-cuda
run "$PY" -m kdkit train --method kd --out "$RUN_DIR" --set device=cuda --set data.name=shapes \
    --set data.train_per_class=100 --set data.test_per_class=50 --set teacher_train.epochs=4 \
    --set train.epochs=4 --set logging.progress=false
run cp "$RUN_DIR/summary.json" "$OUTDIR/kd-cuda-summary.json"
run "$PY" - "$RUN_DIR" <<'EOF'
import json, sys, yaml
run = sys.argv[1]
cfg = yaml.safe_load(open(f"{run}/config.yaml"))
summary = json.load(open(f"{run}/summary.json"))
assert str(cfg.get("device")).startswith("cuda"), cfg.get("device")
print("kd on CUDA:", json.dumps(summary)[:400])
EOF

step "kdkit bench --device cuda"
rc=0
"$PY" -m kdkit bench --device cuda --json >"$OUTDIR/bench-cuda.json" 2> >(tee -a "$LOG" >&2) || rc=$?
if [ "$rc" != 0 ]; then fail "$rc"; fi
run "$PY" - "$OUTDIR/bench-cuda.json" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))
print("device:", b["machine"].get("gpu"))
for r in b["ratios"]:
    print(f"  {r['case']:<15} bits={r.get('bits', '-')!s:<5} vs {r['peer']:<14} {r['speedup']:8.2f}x")
for r in b["results"]:
    if "code_pairs_per_s" in r:
        print(f"  {r['case']:<15} bits={r['bits']:<5} kdkit {r['code_pairs_per_s']:.3g} code pairs/s")
print("  penalty bandwidth:", b.get("penalty_bandwidth"))
bad = [c for c in b["checks"] if not c["ok"]]
assert not bad, f"bench result checks failed: {bad}"
EOF

step "KD training step on CUDA: kdkit against a plain loop and torchdistill"
run "$PY" benchmarks/train_step.py --gpu --steps 50 --rounds 7 --json "$OUTDIR/train-step-cuda.json"

if [ "${#FAILED[@]}" != 0 ]; then
    say "FAILED steps: $(IFS=';'; echo "${FAILED[*]}"); see $LOG"
    exit 1
fi
say "all steps passed in $((SECONDS - START)) s; files in $OUTDIR"
