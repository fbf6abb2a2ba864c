#!/usr/bin/env bash
# One-step set-up of a kdkit development environment on Debian (Python 3.11, no GPU needed):
#   - Debian's WordNet 3.0 (the wordnet_relax plugin assembles nltk's corpus from it offline),
#   - a virtualenv in .venv (reused when present; KDKIT_VENV overrides the path),
#   - the pinned torch pair, then kdkit itself in editable mode with the compiled extension.
# Safe to re-run: every step is skipped or incremental when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PAIR=(torch==2.14.1 torchvision==0.29.1)
VENV=${KDKIT_VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { printf '[kdkit setup] %s\n' "$*" >&2; }

# Debian packages: WordNet 3.0 (nltk.download needs the internet, which these machines lack),
# SIMDe, with which the tests run the AVX2/AVX-512 kernels under emulation on any CPU, and
# Fashion-MNIST's IDX files (/usr/share/datasets/fashion-mnist, read by data.name=fashion_mnist).
DEB_PACKAGES=(wordnet-base wordnet-sense-index libsimde-dev dataset-fashion-mnist)
if { [ ! -f /usr/share/wordnet/data.noun ] || [ ! -d /usr/include/simde ] ||
     [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; } &&
   command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    log "installing Debian packages: ${DEB_PACKAGES[*]}"
    if ! { $SUDO apt-get install -y -q "${DEB_PACKAGES[@]}" >/dev/null 2>&1 ||
           { $SUDO apt-get update -q >/dev/null 2>&1 &&
             $SUDO apt-get install -y -q "${DEB_PACKAGES[@]}" >/dev/null 2>&1; }; }; then
        log "WARNING: could not install ${DEB_PACKAGES[*]}; wordnet_relax will ask for nltk's wordnet data" \
            "and data.name=fashion_mnist for data.root"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
    log "installing ${TORCH_PAIR[*]} and build tools"
    "${PIP[@]}" install --upgrade pip "setuptools>=77" wheel
    "${PIP[@]}" install "${TORCH_PAIR[@]}" ninja pybind11
fi

# --no-build-isolation: build the extension against the torch just installed.
log "installing kdkit (editable, with dev extras) and building kdkit._C"
export CUDA_HOME=${CUDA_HOME:-$( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda || true )}
[ -n "$CUDA_HOME" ] || unset CUDA_HOME
"${PIP[@]}" install --no-build-isolation -e ".[dev]"
"$VENV/bin/kdkit" info
