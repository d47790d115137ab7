"""Training at the machine's speed: images/s of the recipe's training step beside the CPU's bound.

- The bound: the cores' peak, measured as the best of several large matrix products (4096 x 4096,
  TensorFlow's oneDNN kernels), in float32 and in bfloat16.
- The work: FLOPs per training image, counted from the model's convolutions and dense layers
  (2 x multiply-adds of the forward pass, x3 for forward + backward).
- The rate: steady-state images/s of `model.fit` on the recipe's own input pipeline (real 100 px
  films with --source, else synthetic ones), each setting in a fresh process (the precision is
  process-wide), the settings alternating over the repeats so that a slow spell of the machine
  falls on all of them.

Settings, from what the recipe trained with before this benchmark to what it trains with now:
`before` (float32, batch 32, PNGs decoded every epoch through a shuffle buffer), then each change
alone, then `recipe` (the rsna-cpu preset as committed), then the recipe with XLA (`train.jit_compile`),
a lever it does not pull.

    python -m benchmarks.bench_train_speed [--source ../shared/data/rsna-100px] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPEATS, bench_params, load_results, record, rounded

RESULT_KEY = "train_speed"
PRESET = "rsna-cpu"
GEMM_SIDE = 4096
GEMM_REPEATS = 5
TIMED_STEPS = 12  # of the largest batch; smaller batches time proportionally more steps
WARMUP_STEPS = 3
BEFORE = {"train.mixed_precision": "off", "train.batch_size": 32, "train.cache_images": False}
SETTINGS = {
    "before": BEFORE,
    "cached images": {**BEFORE, "train.cache_images": True},
    "bfloat16 (oneDNN)": {**BEFORE, "train.mixed_precision": "auto"},
    "batch 128": {**BEFORE, "train.batch_size": 128},
    "recipe": {},
    # A lever the recipe does not pull, measured beside it: XLA on this CPU.
    "recipe with XLA (jit_compile)": {"train.jit_compile": True},
}
GOAL_SPEEDUP, GOAL_BOUND = 1.5, 0.6


def gemm_peak(dtype: str) -> float:
    """GFLOP/s of the best of several large matrix products."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((GEMM_SIDE, GEMM_SIDE)), dtype)
    b = tf.cast(tf.random.normal((GEMM_SIDE, GEMM_SIDE)), dtype)
    product = tf.function(lambda: tf.matmul(a, b))
    product()
    best = min(_timed(lambda: product().numpy()) for _ in range(GEMM_REPEATS))
    return 2 * GEMM_SIDE**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def training_flops_per_image(model) -> float:
    """Forward + backward FLOPs of one image: 3 x (2 x multiply-adds) of its convolutions and dense layers."""
    import keras

    def forward(m) -> float:
        total = 0.0
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                total += forward(layer)
            elif isinstance(layer, keras.layers.Conv2D):
                _, h, w, filters = layer.output.shape
                kh, kw = layer.kernel_size
                total += 2.0 * kh * kw * layer.input.shape[-1] * filters * h * w
            elif isinstance(layer, keras.layers.Dense):
                total += 2.0 * layer.input.shape[-1] * layer.units
        return total

    return 3.0 * forward(model)


def measure_setting(data: str, overrides: dict) -> dict:
    """In this process: the recipe with ``overrides``, its steady-state training images/s."""
    import keras
    import pandas as pd

    from benchmarks.common import fit_images_per_second
    from boneage.model.network import build_model
    from boneage.training.dataset import make_dataset
    from boneage.training.precision import training_precision
    from boneage.training.train import compile_model, target_stats

    params = bench_params(**{"preset": PRESET, **overrides})
    size, tcfg = params.preprocess.image_size, params.train
    manifest = pd.read_csv(Path(data) / "manifest.csv")
    mean, sd = target_stats(manifest)
    keras.utils.set_random_seed(params.seed)
    with training_precision(tcfg.mixed_precision) as precision:
        model = build_model(params.model, size, mean, sd).train
        compile_model(model, params, tcfg.learning_rate, sd)
        dataset = make_dataset(
            Path(data), "train", size, tcfg.batch_size, target_mean=mean, target_sd=sd, training=True,
            augment=tcfg.augment, shuffle_buffer=tcfg.shuffle_buffer, seed=params.seed,
            examples=int((manifest["split"] == "train").sum()), cache=tcfg.cache_images,
        )  # fmt: skip
        model.fit(dataset, epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0)
        steps = TIMED_STEPS * max(1, 128 // tcfg.batch_size)
        rate = fit_images_per_second(model, dataset, tcfg.batch_size, steps)
    return {
        "img_s": rate,
        "precision": precision,
        "batch_size": tcfg.batch_size,
        "cache_images": tcfg.cache_images,
        "flops_per_image": training_flops_per_image(model),
    }


def _in_fresh_process(data: str, overrides: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train_speed", "--one", json.dumps(overrides), "--data", data],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"measuring {overrides} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepared_data(source: Path | None) -> tuple[str, str]:
    """The recipe's preprocessed training data: the real films of ``source``, or synthetic ones."""
    params = bench_params(preset=PRESET)
    if source:
        from benchmarks.bench_real import prepared_real
        from benchmarks.common import WORK

        return str(prepared_real(bench_params(**{"preset": PRESET, "data.source": str(source)}), WORK / "real")), "real 100 px"
    from benchmarks.common import prepared_synthetic

    return str(prepared_synthetic(800, params.preprocess.image_size)), "synthetic"


def run(source: Path | None, repeats: int) -> dict:
    data, kind = prepared_data(source)
    peaks = {dtype: gemm_peak(dtype) for dtype in ("float32", "bfloat16")}
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for i in range(repeats):
        order = list(SETTINGS) if i % 2 == 0 else list(SETTINGS)[::-1]
        for name in order:
            runs[name].append(_in_fresh_process(data, SETTINGS[name]))
            print(f"{name}: {runs[name][-1]['img_s']:.1f} img/s", flush=True)
    rows = {}
    for name, measured in runs.items():
        rate = statistics.median(r["img_s"] for r in measured)
        flops = measured[0]["flops_per_image"]
        precision = measured[0]["precision"]
        bound = peaks["bfloat16" if precision == "bfloat16" else "float32"]
        rows[name] = {
            "img_s": round(rate, 1),
            "runs": rounded([r["img_s"] for r in measured]),
            "precision": precision,
            "batch_size": measured[0]["batch_size"],
            "cache_images": measured[0]["cache_images"],
            "gflop_per_image": round(flops / 1e9, 3),
            "gflop_s": round(rate * flops / 1e9, 1),
            "of_float32_peak": round(rate * flops / 1e9 / peaks["float32"], 3),
            "of_own_peak": round(rate * flops / 1e9 / bound, 3),
        }
    return {"data": kind, "peak_gflop_s": {k: round(v, 1) for k, v in peaks.items()}, "settings": rows, "repeats": repeats}


def summary(result: dict) -> dict:
    rows = result["settings"]
    before, recipe = rows["before"], rows["recipe"]
    speedup = recipe["img_s"] / before["img_s"]
    met = speedup >= GOAL_SPEEDUP or recipe["of_own_peak"] >= GOAL_BOUND
    return {
        "title": f"Training step of the recipe ({PRESET}), images/s beside the CPU's bound",
        "summary": (
            f"{before['img_s']:.0f} img/s before ({before['of_float32_peak']:.0%} of the float32 peak) -> "
            f"{recipe['img_s']:.0f} img/s now ({speedup:.2f}x; {recipe['gflop_s']:.0f} GFLOP/s: "
            f"{recipe['of_float32_peak']:.0%} of the float32 peak, {recipe['of_own_peak']:.0%} of the "
            f"{recipe['precision']} one)"
        ),
        "speedup": round(speedup, 2),
        "goal": f">= {GOAL_SPEEDUP}x the images/s before, or >= {GOAL_BOUND:.0%} of the bound",
        "verdict": "met" if met else "missed",
    }


def with_runs(result: dict) -> dict:
    """The stored form: each setting a run, and the verdict."""
    runs = [{"setting": name, **row} for name, row in result["settings"].items()]
    return {**result, "runs": runs, **summary(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="real films (Kaggle layout); synthetic ones without it")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one setting, in this process (internal)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_setting(args.data, json.loads(args.one))))
        return
    result = run(args.source, args.repeats)
    record(RESULT_KEY, with_runs(result))
    print(json.dumps(load_results()[RESULT_KEY]["settings"], indent=1))


if __name__ == "__main__":
    main()
