"""Memory: peak RSS of one training epoch on N synthetic images and on 8N (same size), each in a
fresh process. The training data streams from TFRecords, so memory should not grow with the
dataset. Goal: a ratio of at most 1.1.

Also measured: the same at 299 px (the real-training size) on N images, for a statement of what the
full 12,611-image RSNA set needs next to the seed's 7.6 GB of in-memory 224 px float32 RGB arrays."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

from benchmarks.common import PROJECT, REPEATS, WORK, bench_params, prepared_synthetic, record, verdict

GOAL = 1.1
N = 200
# The seed's arrays: 12,611 images x 224 x 224 x 3 channels x 4 bytes (float32).
SEED_GB = 12_611 * 224 * 224 * 3 * 4 / 1e9


def full_summary(peak_mib: float) -> str:
    gb = peak_mib * 2**20 / 1e9  # decimal GB, the unit of the seed's figure
    return (
        f"{gb:.1f} GB in all ({peak_mib / 1024:.2f} GiB), whatever the number of images (the 8N ratio above), "
        f"so the same for all 12,611; the seed's arrays alone took {SEED_GB:.1f} GB, before its model and "
        "training step"
    )


def peak_rss(data, image_size: int, tag: str) -> dict:
    out = WORK / f"train-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.train_once",
            str(data),
            str(out / "model"),
            "--image-size",
            str(image_size),
            "--mlruns",
            str(out / "mlruns"),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"training for the memory benchmark failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_peak(data, image_size: int, tag: str) -> tuple[float, list[dict]]:
    runs = [peak_rss(data, image_size, tag) for _ in range(REPEATS)]
    return statistics.median(r["peak_rss_mib"] for r in runs), runs


def main() -> None:
    size = bench_params().preprocess.image_size
    small, small_runs = median_peak(prepared_synthetic(N, size), size, "n")
    large, large_runs = median_peak(prepared_synthetic(8 * N, size), size, "8n")
    ratio = large / small
    record(
        "memory",
        {
            "title": f"Peak RSS, one training epoch, {N} vs {8 * N} images at {size} px",
            "image_size": size,
            "n_images": N,
            "peak_rss_mib": {"n": small, "8n": large},
            "ratio": round(ratio, 3),
            "runs": {"n": small_runs, "8n": large_runs},
            "summary": f"{small / 1024:.2f} GiB on {N} images, {large / 1024:.2f} GiB on {8 * N} = {ratio:.2f}x",
            "goal": f"<= {GOAL}x",
            "verdict": verdict(ratio <= GOAL),
        },
    )
    print(f"{size} px: N {small:.0f} MiB, 8N {large:.0f} MiB, ratio {ratio:.3f}")

    full, full_runs = median_peak(prepared_synthetic(N, 299), 299, "299")
    record(
        "memory_full_dataset",
        {
            "title": "Peak RSS of training at 299 px, batch 32 (any dataset size)",
            "image_size": 299,
            "peak_rss_mib": full,
            "runs": full_runs,
            "seed_in_memory_gb": round(SEED_GB, 2),
            "summary": full_summary(full),
            "goal": "independent of the dataset size",
            "verdict": verdict(ratio <= GOAL),
        },
    )
    print(f"299 px: {full:.0f} MiB")


if __name__ == "__main__":
    main()
