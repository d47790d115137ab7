"""Input pipeline vs. model: training images/s fed from the TFRecords through the real tf.data
pipeline (decode, shuffle, augmentation, prefetch) divided by images/s fed from one batch of
tensors already in memory, with the same model, batch and compiled train step. The runs of the two
alternate, and so does which of a pair goes first; the figure is the median of the pairs' ratios.
Goal: at least 0.95. The pipeline's own rate, with no model to feed, is recorded beside it: the
headroom that says whether a shortfall is the input's cost or the machine's noise."""

from __future__ import annotations

import statistics
import time

import keras
import tensorflow as tf

from benchmarks.common import REPEATS, bench_params, fit_images_per_second, prepared_synthetic, record, rounded, verdict
from boneage.model.network import build_model
from boneage.training.dataset import make_dataset
from boneage.training.train import compile_model, target_stats

GOAL = 0.95
IMAGES = 400  # 280 training images: shuffled, augmented and decoded anew on every pass
TIMED_STEPS = 15
PAIRS = 6
PIPELINE_ALONE_BATCHES = 100


def pipeline_images_per_second(dataset: tf.data.Dataset, batch_size: int) -> float:
    """The input pipeline drained on its own, after its first batch (start-up excluded)."""
    batches = iter(dataset)
    next(batches)
    start = time.perf_counter()
    for _ in range(PIPELINE_ALONE_BATCHES):
        next(batches)
    return PIPELINE_ALONE_BATCHES * batch_size / (time.perf_counter() - start)


def main() -> None:
    import pandas as pd

    params = bench_params()
    size, tcfg = params.preprocess.image_size, params.train
    data = prepared_synthetic(IMAGES, size)
    mean, sd = target_stats(pd.read_csv(data / "manifest.csv"))
    keras.utils.set_random_seed(params.seed)
    model = build_model(params.model, size, mean, sd).train
    compile_model(model, params, tcfg.learning_rate, sd)

    pipeline = make_dataset(
        data,
        "train",
        size,
        tcfg.batch_size,
        target_mean=mean,
        target_sd=sd,
        training=True,
        augment=tcfg.augment,
        shuffle_buffer=tcfg.shuffle_buffer,
        seed=params.seed,
    )
    # The same kind of batch, decoded once and held as tensors: what the model runs at with no input cost.
    one_batch = next(iter(pipeline))
    in_memory = tf.data.Dataset.from_tensors(one_batch).repeat()

    for ds in (pipeline, in_memory):  # trace the train step for both input signatures
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    runs: dict[str, list[float]] = {"tfrecord_pipeline": [], "in_memory": []}
    datasets = {"tfrecord_pipeline": pipeline, "in_memory": in_memory}
    for pair in range(max(REPEATS, PAIRS)):
        # Which half goes first alternates, so a drift of the machine within a pair cancels out.
        for name in list(datasets) if pair % 2 == 0 else list(datasets)[::-1]:
            runs[name].append(fit_images_per_second(model, datasets[name], tcfg.batch_size, TIMED_STEPS))
    alone_runs = [pipeline_images_per_second(pipeline, tcfg.batch_size) for _ in range(REPEATS)]
    alone = statistics.median(alone_runs)
    rate = {k: statistics.median(v) for k, v in runs.items()}
    # The ratio of each side-by-side pair, then their median: a slow spell of the machine (seen here:
    # 15% between minutes) falls on both halves of a pair instead of on one side of the comparison.
    pair_ratios = [a / b for a, b in zip(runs["tfrecord_pipeline"], runs["in_memory"], strict=True)]
    ratio = statistics.median(pair_ratios)
    record(
        "input_pipeline",
        {
            "title": f"Input pipeline vs. in-memory tensors ({params.model.backbone}, {size} px, batch {tcfg.batch_size})",
            "image_size": size,
            "batch_size": tcfg.batch_size,
            "timed_steps": TIMED_STEPS,
            "img_s": {k: round(v, 2) for k, v in rate.items()},
            "ratio": round(ratio, 3),
            "pipeline_alone_img_s": round(alone, 1),
            "pipeline_alone_runs": rounded(alone_runs, 1),
            "runs": {k: rounded(v, 2) for k, v in runs.items()},
            "pair_ratios": rounded(pair_ratios, 3),
            "summary": (
                f"{rate['tfrecord_pipeline']:.1f} img/s from TFRecords with augmentation vs "
                f"{rate['in_memory']:.1f} img/s from memory (medians); median ratio of the "
                f"{len(pair_ratios)} side-by-side pairs {ratio:.2f}; the pipeline alone, with no model "
                f"to feed, yields {alone:.0f} img/s ({alone / rate['in_memory']:.0f}x what the model takes)"
            ),
            "goal": f">= {GOAL}",
            "verdict": verdict(ratio >= GOAL),
        },
    )
    print({k: round(v, 2) for k, v in rate.items()}, f"ratio {ratio:.3f}", f"pipeline alone {alone:.0f} img/s")


if __name__ == "__main__":
    main()
