"""Training images/s on a GPU: InceptionV3 + sex at 299 and 512 px, with and without mixed
precision, fed by the real tf.data pipeline from TFRecords (synthetic films, made on the spot), in
steady state (the first batches, which build the graph, are not timed). Run by benchmarks/gpu.sh.

``--smoke`` runs the same code at toy sizes on a CPU, so the script is known to work before a GPU
machine is at hand."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import keras
import pandas as pd
import tensorflow as tf

from benchmarks.common import REPEATS, bench_params, fit_images_per_second, prepared_synthetic, record, rounded
from boneage.dataset import make_dataset
from boneage.model import build_model
from boneage.train import compile_model, target_stats

SOURCE_FILM_PX = 768  # synthetic films larger than the biggest crop, so 512 px is not an upscale


def gpu_name() -> str:
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "no GPU"


def images_per_second(size: int, mixed: bool, images: int, steps: int, film_px: int) -> list[float]:
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    params = bench_params(**{"preprocess.image_size": size, "data.synthetic.image_size": film_px})
    data = prepared_synthetic(images, size, film_px=film_px)
    mean, sd = target_stats(pd.read_csv(data / "manifest.csv"))
    batch = params.train.batch_size
    model = build_model(params.model, size, mean, sd).train
    compile_model(model, params, params.train.learning_rate, sd)
    ds = make_dataset(
        data,
        "train",
        size,
        batch,
        target_mean=mean,
        target_sd=sd,
        training=True,
        augment=params.train.augment,
        shuffle_buffer=params.train.shuffle_buffer,
        seed=params.seed,
    )
    model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # build and trace
    rates = [fit_images_per_second(model, ds, batch, steps) for _ in range(REPEATS)]
    keras.backend.clear_session()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any machine; records nothing")
    args = parser.parse_args()
    sizes, images, steps, film_px = ((75, 96), 64, 2, 160) if args.smoke else ((299, 512), 800, 40, SOURCE_FILM_PX)
    card = gpu_name()
    if card == "no GPU" and not args.smoke:
        sys.exit("no NVIDIA GPU visible (nvidia-smi); run on a GPU machine, or pass --smoke to check the script")
    print(f"device: {card}; TensorFlow sees {tf.config.list_physical_devices('GPU')}", flush=True)
    results = {}
    for size in sizes:
        for mixed in (False, True):
            rates = images_per_second(size, mixed, images, steps, film_px)
            key = f"{size}px_{'mixed_float16' if mixed else 'float32'}"
            results[key] = {"img_s": round(statistics.median(rates), 1), "runs": rounded(rates)}
            print(key, results[key], flush=True)
    if args.smoke:
        print(json.dumps(results))
        return
    summary = "; ".join(
        f"{size} px {results[f'{size}px_float32']['img_s']:.0f} → "
        f"{results[f'{size}px_mixed_float16']['img_s']:.0f} img/s with mixed precision"
        for size in sizes
    )
    record(
        "gpu_training",
        {
            "title": f"GPU training, InceptionV3 + sex, batch {bench_params().train.batch_size} ({card})",
            "card": card,
            "results": results,
            "summary": summary,
            "goal": "measured (no goal set)",
            "verdict": "",
        },
    )


if __name__ == "__main__":
    main()
