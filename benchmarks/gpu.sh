#!/usr/bin/env bash
# The GPU recipe on a GPU machine: training images/s of InceptionV3 + sex at 299, 384 and 512 px,
# float32 and mixed precision, then a short rsna-gpu run on real films (SOURCE, when the folder is
# there; its MAE is labelled: 100 px films upsampled, stand-in weights). Results go to
# benchmarks/results.json (and the README table), marked with the card.
#
#   benchmarks/gpu.sh            on a machine with an NVIDIA GPU and the project installed
#                                (make setup EXTRAS=gpu, or the training image from `make image`)
#   benchmarks/gpu.sh --smoke    the same script at toy sizes on any machine (checks it runs)
#   SOURCE=path/to/kaggle-folder benchmarks/gpu.sh    the real films of the short run
#
# About 12 minutes on one H100-class card: synthetic data, graphs, 6 speed figures, a 4-minute run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ "${1:-}" != "--smoke" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} PYTHONUNBUFFERED=1
SOURCE=${SOURCE:-../shared/data/rsna-100px}
if [ -d "$SOURCE" ]; then set -- "$@" --source "$SOURCE"; else echo "no real films at $SOURCE: speed figures only"; fi
exec "$PYTHON" -m benchmarks.bench_gpu_train "$@"
