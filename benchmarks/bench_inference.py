"""Inference, file -> bone age, with the model warm, on the real 1600x2080 RSNA samples:

- single-image latency (one `predict_files` call per file: read, check, crop, normalise, model),
  p50 and p95 over every sample, at 299 px (the real-training size) on this machine's cores;
- batch throughput: all samples through `predict_files` (threaded preparation, batched model calls).

The model is InceptionV3 + sex with the configured head, random weights: the weights change no
timing. Goal: p50 at most 250 ms at 299 px on 2 cores."""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from benchmarks.common import REPEATS, SAMPLES, WORK, bench_params, record, rounded, verdict
from boneage.contracts import MODEL_FILE, PREDICTOR_FILE
from boneage.model.calibration import IntervalCalibration
from boneage.model.network import build_model
from boneage.model.predictor_config import PredictorConfig
from boneage.serve.predict import DEFAULT_BATCH, Predictor, predict_files

GOAL_P50_MS = 250.0
SIZE = 299


def saved_predictor(size: int) -> Predictor:
    """A model folder as `boneage train` writes it (model.keras + predictor.json), loaded the way
    `boneage predict` loads one."""
    params = bench_params(**{"preprocess.image_size": size})
    folder = WORK / f"predictor-{size}px"
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(params.model, size, target_mean=127.0, target_sd=42.0)
    model.predict.save(folder / MODEL_FILE)
    PredictorConfig.of(params, IntervalCalibration(0.0, 12.0, [], []), {}).write(folder / PREDICTOR_FILE)
    return Predictor.load(str(folder))


def main() -> None:
    files = sorted(SAMPLES.glob("*.png"))
    if not files:
        sys.exit(f"no samples at {SAMPLES} (the real-data benchmark needs ../shared/data)")
    predictor = saved_predictor(SIZE)
    for path in files[:3]:  # warm: first calls build the graph and fill caches
        predict_files(predictor, [path], sex="F")
    predict_files(predictor, files[:DEFAULT_BATCH], sex="F")

    p50s, p95s, latencies_by_run, throughputs = [], [], [], []
    for _ in range(REPEATS):
        latencies = []
        for path in files:
            start = time.perf_counter()
            (result,) = predict_files(predictor, [path], sex="F")
            latencies.append(1000 * (time.perf_counter() - start))
            assert result.bone_age_months is not None, result.rejected
        p50s.append(float(np.percentile(latencies, 50)))
        p95s.append(float(np.percentile(latencies, 95)))
        latencies_by_run.append(rounded(latencies))
        start = time.perf_counter()
        predict_files(predictor, files, sex="F")
        throughputs.append(len(files) / (time.perf_counter() - start))
    p50, p95, throughput = statistics.median(p50s), statistics.median(p95s), statistics.median(throughputs)
    record(
        "inference",
        {
            "title": f"Inference, real film -> bone age, {SIZE} px, model warm",
            "image_size": SIZE,
            "images": len(files),
            "batch_size": DEFAULT_BATCH,
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "batch_img_s": round(throughput, 2),
            "runs": {
                "p50_ms": rounded(p50s),
                "p95_ms": rounded(p95s),
                "batch_img_s": rounded(throughputs, 2),
                "latencies_ms": latencies_by_run,
            },
            "summary": f"one image: p50 {p50:.0f} ms, p95 {p95:.0f} ms; batches of {DEFAULT_BATCH}: {throughput:.1f} img/s",
            "goal": f"p50 <= {GOAL_P50_MS:.0f} ms",
            "verdict": verdict(p50 <= GOAL_P50_MS),
        },
    )
    print(f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, batch {throughput:.2f} img/s")


if __name__ == "__main__":
    main()
