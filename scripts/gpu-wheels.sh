#!/usr/bin/env bash
# Fetches the pure-Python peers that scripts/gpu-check.sh installs on a GPU machine that cannot
# reach PyPI (torchdistill, for benchmarks/train_step.py --gpu) into .gpu-wheels/ (git-ignored):
# run it here, then carry .gpu-wheels to the GPU machine beside the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
mkdir -p .gpu-wheels
# --no-deps: torch, torchvision, numpy and pyyaml come with the GPU image; torchdistill's core
# imports nothing else (its scipy and cython requirements serve parts the benchmark does not use)
"$PY" -m pip download --no-deps --only-binary :all: -d .gpu-wheels "torchdistill==1.1.5"
ls -l .gpu-wheels
