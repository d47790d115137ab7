"""Preprocessing images/s on the real 1600x2080 RSNA samples, side by side with

- bare PNG decoding of the same files (OpenCV's fastest: straight to one channel), and
- the seed's approach: decode to RGB, squash-resize the whole film to 224 px, float32, every image
  held in memory (12,611 x 224 x 224 x 3 x 4 bytes = 7.6 GB for the full training set).

All three run in the same process pool (one worker per core) over the same files, interleaved in
each repeat. Goal: preprocessing at least 70% of the bare-decode rate."""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import REPEATS, SAMPLES, bench_params, record, rounded, verdict
from boneage.data.preprocess import _Job, _process

SEED_SIZE = 224
GOAL = 0.70


def bare_decode(path: str) -> int:
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH).size


def seed_load(path: str) -> np.ndarray:
    """What the seed did per image: RGB decode, squash to 224 x 224, scale to float32 [0, 1]."""
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (SEED_SIZE, SEED_SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0


def main() -> None:
    files = sorted(str(p) for p in SAMPLES.glob("*.png"))
    if not files:
        sys.exit(f"no samples at {SAMPLES} (the real-data benchmark needs ../shared/data)")
    params = bench_params(**{"preprocess.image_size": 299})
    workers = os.cpu_count() or 1
    jobs = [_Job(Path(f).stem, f, params.preprocess, params.data.max_image_pixels) for f in files]
    runs: dict[str, list[float]] = {"bare_decode": [], "preprocess": [], "seed": []}
    held_bytes = 0
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(bare_decode, files))  # warm the pool and the page cache
        list(pool.map(_process, jobs))
        for _ in range(max(REPEATS, 5)):
            for name, fn, items in (
                ("bare_decode", bare_decode, files),
                ("preprocess", _process, jobs),
                ("seed", seed_load, files),
            ):
                start = time.perf_counter()
                results = list(pool.map(fn, items, chunksize=2))
                runs[name].append(len(files) / (time.perf_counter() - start))
                if name == "seed":
                    held_bytes = sum(a.nbytes for a in results)
    rate = {k: statistics.median(v) for k, v in runs.items()}
    ratio = rate["preprocess"] / rate["bare_decode"]
    seed_gb_full = held_bytes / len(files) * 12_611 / 1e9
    record(
        "preprocess",
        {
            "title": "Preprocessing, 40 real 1600×2080 films, 299 px",
            "images": len(files),
            "workers": workers,
            "image_size": 299,
            "img_s": {k: round(v, 1) for k, v in rate.items()},
            "ratio_to_bare_decode": round(ratio, 3),
            "seed_ratio_to_bare_decode": round(rate["seed"] / rate["bare_decode"], 3),
            "seed_memory_full_dataset_gb": round(seed_gb_full, 2),
            "runs": {k: rounded(v) for k, v in runs.items()},
            "summary": (
                f"ours {rate['preprocess']:.1f} img/s = {100 * ratio:.0f}% of bare decode ({rate['bare_decode']:.1f}); "
                f"seed's squash-to-224 {rate['seed']:.1f} img/s, holding {seed_gb_full:.1f} GB for 12,611 films"
            ),
            "goal": f">= {GOAL:.0%} of bare decode",
            "verdict": verdict(ratio >= GOAL),
        },
    )
    print({k: round(v, 1) for k, v in rate.items()}, f"ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
