#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU (under 5 minutes once installed):
#   scripts/gpu-check.sh [deeprec bench gpu flags...]
# Sets up .venv-gpu (deeprec with onnxruntime-gpu and its CUDA/cuDNN wheels instead of the
# CPU onnxruntime) on first use, then runs `deeprec bench gpu`: whether ONNX Runtime's CUDA
# provider loads (and exactly why not), then CPU-only, GPU-only and offload-by-T figures
# with GPU workers, printed and written to results/gpu-check.json. Exit 1 if CUDA is not
# usable. Without network on the GPU machine, create .venv-gpu where pip can reach PyPI
# (same Python and OS) and carry it over.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DEEPREC_GPU_VENV:-.venv-gpu}
python=${PYTHON:-python3}
stamp="$venv/.deeprec-gpu-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "gpu-check: installing deeprec with onnxruntime-gpu into $venv" >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e .
    # The CPU and GPU builds both provide the `onnxruntime` module: keep only the GPU one.
    "$venv/bin/python" -m pip uninstall --quiet --yes onnxruntime
    "$venv/bin/python" -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]>=1.20,<2"
    touch "$stamp"
fi
exec timeout 300 "$venv/bin/deeprec" bench gpu "$@"
