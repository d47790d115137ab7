"""One training epoch (a full pass over the training split) in a fresh process, then its peak RSS
as JSON on the last line of stdout. Run by bench_memory, one process per measurement, so that every
figure is that run's own peak and nothing earlier in a process counts against it."""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks.common import bench_params
from boneage.training.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--mlruns", type=Path, required=True)
    args = parser.parse_args()
    params = bench_params(
        **{
            "preprocess.image_size": args.image_size,
            "train.epochs": 1,
            "train.steps_per_epoch": None,
            # Precise BN in passes of 32, as the README's real-data recipe sets it for 299 px.
            "train.bn_recalibration_batch_size": 32,
            "mlflow.tracking_uri": f"sqlite:///{args.mlruns.resolve()}/mlflow.db",
            "mlflow.artifact_root": str(args.mlruns.resolve() / "artifacts"),
            "mlflow.log_system_metrics": False,
        }
    )
    start = time.perf_counter()
    train(params, args.data, args.out)
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
