#!/usr/bin/env bash
# The accelerator check: on a GPU (or TPU) machine with this repository installed, measures in
# under 10 minutes the student's bf16 training MFU, the teacher's generation tokens/s and a
# sharded CRSD step on every device, plus the teacher's remat memory; writes one JSON.
#   launch/gpu_check.sh [out.json] [extra flags for `python -m rd_jax.bench accel_check`]
# Default output: $OUT/gpu_check.json when $OUT is set (the device tool's folder), else
# ./gpu_check.json. What each figure means: rd_jax/bench/accel_check.py.
# On CPU it runs too (slowly); `--smoke` is the tiny-shape version the test suite runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_JSON=${1:-${OUT:+$OUT/}gpu_check.json}; shift || true
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
python -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout 570 python -m rd_jax.bench accel_check --out="$OUT_JSON" "$@"
