"""Preprocessing images/s on the real 1600x2080 RSNA samples vs bare PNG decoding of the same files,
on the same cores (a process pool of the same size for both). Goal: at least 70% of bare decode."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2

from benchmarks.common import median_rate, record
from boneage.config import PreprocessConfig
from boneage.preprocess import _Job, _process

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-sample" / "boneage-training-dataset"


def bare_decode(path: str) -> int:
    """The fastest bare decode OpenCV offers: straight to one channel, depth kept."""
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH).size


def main() -> None:
    files = sorted(str(p) for p in SAMPLES.glob("*.png"))
    if not files:
        sys.exit(f"no samples at {SAMPLES}")
    workers = os.cpu_count() or 1
    jobs = [_Job(Path(f).stem, f, PreprocessConfig(image_size=299), 60_000_000) for f in files]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(bare_decode, files))  # warm the pool and the page cache
        list(pool.map(_process, jobs))
        decode, decode_runs = median_rate(lambda: list(pool.map(bare_decode, files, chunksize=2)), len(files), 5)
        prep, prep_runs = median_rate(lambda: list(pool.map(_process, jobs, chunksize=2)), len(files), 5)
    ratio = prep / decode
    record("preprocess_vs_bare_decode", {
        "images": len(files), "workers": workers, "bare_decode_img_s": round(decode, 1),
        "preprocess_img_s": round(prep, 1), "ratio": round(ratio, 3),
        "runs": {"decode": [round(r, 1) for r in decode_runs], "preprocess": [round(r, 1) for r in prep_runs]},
        "summary": f"preprocess {prep:.1f} img/s vs bare decode {decode:.1f} img/s = {100 * ratio:.0f}%",
        "goal": ">= 70% of bare decode", "verdict": "met" if ratio >= 0.7 else "missed",
    })
    print(f"bare decode {decode:.1f} img/s, preprocess {prep:.1f} img/s ({100 * ratio:.0f}%)")


if __name__ == "__main__":
    main()
