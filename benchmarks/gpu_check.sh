#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py), on a machine with one CUDA GPU and a package
# registry: installs the `gpu` extra into its own environment (timed), then runs the check, which
# writes benchmarks/results/gpu.json in about 8 minutes.
#   bash benchmarks/gpu_check.sh               # install into .venv-gpu, then check
#   bash benchmarks/gpu_check.sh --no-install  # .venv-gpu (or VENV) is already set up
#   bash benchmarks/gpu_check.sh --dry-run     # anywhere, with .venv: the plan checked, nothing run
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --dry-run)
        exec "${VENV:-.venv}/bin/python" benchmarks/gpu_check.py --dry-run ;;
    --no-install)
        ;;
    "")
        start=$(date +%s)
        VENV=${VENV:-.venv-gpu} EXTRAS=gpu,dev ./setup.sh
        INSTALL_S=$(( $(date +%s) - start ))
        export INSTALL_S
        echo "gpu_check: installed the gpu extra in ${INSTALL_S} s" ;;
    *)
        echo "usage: bash benchmarks/gpu_check.sh [--dry-run | --no-install]" >&2
        exit 2 ;;
esac
exec "${VENV:-.venv-gpu}/bin/python" benchmarks/gpu_check.py
