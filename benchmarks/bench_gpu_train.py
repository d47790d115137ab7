"""The GPU recipe on a GPU: training images/s of InceptionV3 + sex at 299, 384 and 512 px, in
float32 and mixed float16, fed by the real tf.data pipeline (synthetic films made on the spot), in
steady state; then a short `rsna-gpu` run (its real size, 384 px) on the real films of --source.
Run by benchmarks/gpu.sh (`make bench-gpu`), the one prepared script for a lent GPU machine.

The short run's MAE is labelled for what it is: the 100 px copies upsampled to 384 px, and (offline,
as the lent machines are) ImageNet's file replaced by a stand-in of random values, trained for a
few minutes: it shows the recipe runs end to end on a GPU, not what it reaches.

``--smoke`` runs the same code at toy sizes on a CPU, so the script is known to work before a GPU
machine is at hand."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from benchmarks.common import REPEATS, WORK, bench_params, fit_images_per_second, prepared_synthetic, record, rounded
from boneage.model.network import build_model
from boneage.training.dataset import make_dataset
from boneage.training.train import compile_model, target_stats

SOURCE_FILM_PX = 768  # synthetic films larger than the biggest crop, so 512 px is not an upscale
SIZES = (299, 384, 512)
SHORT_RUN_MINUTES = 4.0
SHORT_RUN_FILMS = 3000  # of --source: ingest takes the first ones of its CSV


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
    try:
        params = bench_params(**{"preprocess.image_size": size, "data.synthetic.image_size": film_px})
        data = prepared_synthetic(images, size, film_px=film_px)
        mean, sd = target_stats(pd.read_csv(data / "manifest.csv"))
        batch = params.train.batch_size
        model = build_model(params.model, size, mean, sd).train
        compile_model(model, params, params.train.learning_rate, sd)
        ds = make_dataset(
            data, "train", size, batch, target_mean=mean, target_sd=sd, training=True,
            augment=params.train.augment, shuffle_buffer=params.train.shuffle_buffer, seed=params.seed,
        )  # fmt: skip
        model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # build and trace
        return [fit_images_per_second(model, ds, batch, steps) for _ in range(REPEATS)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def short_run(source: Path, minutes: float, smoke: bool) -> dict:
    """`rsna-gpu` at its real size on the first films of ``source``, through the ImageNet path with a
    stand-in weights file, for ``minutes`` of training; its test MAE, labelled."""
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.model.network import write_stand_in_weights
    from boneage.training.evaluate import evaluate
    from boneage.training.train import train

    root = WORK / "gpu-short-run"
    subset = _subset(source, root / "source", 60 if smoke else SHORT_RUN_FILMS)
    keras_home = Path(tempfile.mkdtemp(prefix="stand-in-keras-"))
    os.environ["KERAS_HOME"] = str(keras_home)  # boneage resolves Keras' file from here
    write_stand_in_weights("inception_v3", keras_home)
    overrides = {
        "preset": "rsna-gpu",
        "data.source": str(subset),
        "train.max_minutes": minutes,
        "mlflow.tracking_uri": f"sqlite:///{root}/mlruns.db",
        "mlflow.artifact_root": str(root / "mlruns"),
        "mlflow.log_system_metrics": False,
        **({"preprocess.image_size": 96, "train.batch_size": 8, "train.epochs": 2, "train.warmup_epochs": 1} if smoke else {}),
    }
    params = bench_params(**overrides)
    ingested = ingest(params, root / "ingest")
    preprocess(params, ingested.manifest_path, root / "pre")
    result = train(params, root / "pre", root / "models")
    metrics = evaluate(params, root / "pre", root / "models", root / "reports", log_to_mlflow=False)
    return {
        "label": (
            f"{len(pd.read_csv(subset / 'boneage-training-dataset.csv'))} real films at 100 px UPSAMPLED to "
            f"{params.preprocess.image_size} px; ImageNet weights replaced by a STAND-IN of random values (offline); "
            f"{minutes:g} minutes of training: shows the recipe runs on a GPU, not what it reaches"
        ),
        "epochs": result.epochs_run,
        "test_mae": round(metrics["test"]["mae"], 2),
        "predict_the_mean_mae": round(metrics["baseline"]["predict_the_mean_mae"], 2),
        "test_films": metrics["test"]["n"],
    }


def _subset(source: Path, out: Path, films: int) -> Path:
    """The first ``films`` rows of a Kaggle-layout folder, as a folder of links."""
    labels = pd.read_csv(source / "boneage-training-dataset.csv", dtype={"id": str}).head(films)
    images = out / "boneage-training-dataset"
    images.mkdir(parents=True, exist_ok=True)
    for i in labels["id"]:
        link = images / f"{i}.png"
        if not link.exists():
            link.symlink_to((source / "boneage-training-dataset" / f"{i}.png").resolve())
    labels.to_csv(out / "boneage-training-dataset.csv", index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any machine; records nothing")
    parser.add_argument("--source", type=Path, help="real films (Kaggle layout) for the short rsna-gpu run")
    args = parser.parse_args()
    sizes, images, steps, film_px = ((75, 96), 64, 2, 160) if args.smoke else (SIZES, 800, 40, SOURCE_FILM_PX)
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
    run = short_run(args.source, 0.5 if args.smoke else SHORT_RUN_MINUTES, args.smoke) if args.source else None
    if run:
        print(json.dumps(run), flush=True)
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
            "short_run": run,
            "summary": summary + (f"; short rsna-gpu run: test MAE {run['test_mae']} ({run['label']})" if run else ""),
            "goal": "measured (no goal set)",
            "verdict": "",
        },
    )


if __name__ == "__main__":
    main()
