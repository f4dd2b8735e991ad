#!/usr/bin/env bash
# One script for a first GPU machine (< 5 min on one H100/A100): Triton kernel fwd/bwd in fp16/bf16
# vs the fp32 reference, document-masked self-attention, kernel TFLOP/s vs flash SDPA at JAM shapes,
# a bf16 DeepSpeed step of a small JAM-Cross, VQ-VAE encode images/s. Prints a summary table and
# exits non-zero when a check fails. Details: scripts/gpu_check.py.
#   scripts/gpu_check.sh [--vqvae DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python3
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.torch_extensions}"
cd "$repo"
exec timeout 290 "$py" scripts/gpu_check.py "$@"
