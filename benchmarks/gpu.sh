#!/usr/bin/env bash
# Training images/s on a GPU machine: InceptionV3 + sex at 299 and 512 px, float32 and mixed
# precision. Results go to benchmarks/results.json (and the README table), marked with the card.
#
#   benchmarks/gpu.sh            on a machine with an NVIDIA GPU and the project installed
#                                (make setup EXTRAS=gpu, or the training image from `make image`)
#   benchmarks/gpu.sh --smoke    the same script at toy sizes on any machine (checks it runs)
#
# About 8 minutes on one H100-class card, most of it making the synthetic data and building graphs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ "${1:-}" != "--smoke" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.bench_gpu_train "$@"
