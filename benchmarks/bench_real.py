"""Real-film accuracy and crop quality: `make bench-real SOURCE=...` (not in CI; hours on 2 cores).

Three parts, each stored in benchmarks/results.json under "real_data" and rendered into docs/real-data.md:

- ``crop``: on every film of SOURCE, how many the hand crop refuses, and on the films that have a
  person's hand box (SOURCE/hand-boxes.csv), how many crops are good; the first crop (hand-v1)
  beside the current one.
- ``recipe``: the recipe of record's figures from a finished `make real-data` workspace: test MAE
  overall, by sex and by age band beside predict-the-mean on the same split, and the learning
  curve (validation MAE against training images seen).
- ``variants``: the recipe and its variants (no sex input, the first crop) on the same splits, each
  seeing the same number of training images (a budget that other work on the machine cannot
  shift); the seed preset, whose 224 px step costs several of theirs, gets their wall-clock time
  instead. Each reads the test split once.

    python -m benchmarks.bench_real crop --source DIR
    python -m benchmarks.bench_real recipe --workspace .
    python -m benchmarks.bench_real variants --source DIR [--epochs 3 --steps 200 --seed-minutes 18]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from benchmarks.common import PROJECT, WORK, bench_params, load_results, machine, record
from boneage.contracts import PREDICTIONS_FILE

RESULT_KEY = "real_data"
REAL_PRESET = "rsna-cpu"
BOXES_FILE = "hand-boxes.csv"
# The crops measured, one row each: the recipe's preprocess with these overrides. The rules keep
# the margin they were measured with; the locator takes the recipe's, with one look and with the
# recipe's second look (preprocess.locator_second_look).
CROPS = {
    "hand-v1": {"preprocess.crop": "hand-v1", "preprocess.crop_margin": 0.03},
    "hand": {"preprocess.crop": "hand", "preprocess.crop_margin": 0.03},
    "locator-one-look": {"preprocess.crop": "locator", "preprocess.locator_second_look": None},
    "locator": {"preprocess.crop": "locator"},
}
# Variants of the recipe of record compared under one equal budget: name -> (params overrides, text).
VARIANTS = {
    "recipe": ({}, "the recipe of record (rsna-cpu)"),
    "no_sex": ({"model.use_sex": False}, "the recipe without the sex input"),
    "first_crop": ({"preprocess.crop": "hand-v1"}, "the recipe with the first hand crop (hand-v1)"),
    "seed": ({"preset": "seed"}, "the seed preset"),
}


def _image_dir(source: Path) -> Path:
    return source / "boneage-training-dataset"


@functools.cache
def _crop_config(crop: str):
    """A row's preprocess config, read once per process (reading params.yaml costs more than a crop)."""
    return bench_params(**{"preset": REAL_PRESET, **CROPS[crop]}).preprocess


def _locate(job: tuple[str, str, str]) -> tuple[str, tuple | None, str | None]:
    import cv2

    from boneage.data.handcrop import LOCATORS
    from boneage.errors import BadInputError

    image_id, path, crop = job
    pixels = cv2.imread(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    cfg = _crop_config(crop)
    try:
        box = LOCATORS[cfg.crop](pixels, cfg)
    except BadInputError as exc:
        return image_id, None, exc.reason
    return image_id, (box.x0, box.y0, box.x1, box.y1), None


def crop_quality(source: Path, crop: str, workers: int = 2) -> dict:
    """Refusals over every film of ``source`` and good crops against its people's hand boxes."""
    from boneage.data.handcrop import GOOD_CROP_MAX_AREA_RATIO, GOOD_CROP_MIN_COVERAGE, Box

    labels = pd.read_csv(source / "boneage-training-dataset.csv", dtype={"id": str})
    jobs = [(i, str(_image_dir(source) / f"{i}.png"), crop) for i in labels["id"]]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        found = list(pool.map(_locate, jobs, chunksize=64))
    seconds = time.perf_counter() - start
    boxes_by_id = {i: b for i, b, _ in found if b}
    refused = [(i, reason) for i, _, reason in found if reason]
    cfg = _crop_config(crop)
    out = {
        "settings": cfg.model_dump(
            include={"crop", "crop_margin"} | ({"locator", "locator_second_look"} if cfg.crop == "locator" else set())
        ),
        "measured": time.strftime("%Y-%m-%d"),
        "films": len(found),
        "refused": len(refused),
        "refused_pct": round(100 * len(refused) / len(found), 2),
        "refused_ids": [i for i, _ in refused],
        "seconds": round(seconds, 1),
    }
    boxes_path = source / BOXES_FILE
    if boxes_path.is_file():
        from boneage.data.ingest import assign_split

        people = pd.read_csv(boxes_path, dtype={"id": str})
        split = bench_params(preset=REAL_PRESET)
        # The locator was fitted on the boxes of the films the split puts in training: the others it never saw.
        unseen = [assign_split(i, split.seed, split.data.split.val, split.data.split.test) != "train" for i in people["id"]]
        good = []
        covered = tight = 0
        for row in people.itertuples():
            truth = Box(row.x0_100, row.y0_100, row.x1_100, row.y1_100)
            crop_box = boxes_by_id.get(row.id)
            if crop_box is None:
                good.append(False)
                continue
            crop_box = Box(*crop_box)
            covered += crop_box.covered_fraction(truth) >= GOOD_CROP_MIN_COVERAGE
            tight += crop_box.area <= GOOD_CROP_MAX_AREA_RATIO * truth.area
            good.append(crop_box.is_good_crop_of(truth))
        n = len(people)
        out.update(
            boxes=n,
            good_pct=round(100 * sum(good) / n, 1),
            covered_pct=round(100 * covered / n, 1),
            tight_pct=round(100 * tight / n, 1),
            unseen_boxes=int(sum(unseen)),
            unseen_good_pct=round(100 * sum(g for g, u in zip(good, unseen, strict=True) if u) / max(1, sum(unseen)), 1),
            missed_ids=[i for i, g in zip(people["id"], good, strict=True) if not g],
        )
    return out


SECOND_LOOKS = (0.05, 0.1, 0.15, 0.2, 0.3)  # the contexts tried for preprocess.locator_second_look


def second_look_choice(source: Path) -> dict:
    """The locator's second look, its context chosen on the people's boxes of the validation films
    (the locator never saw them): good crops for one look and each context; the test films' boxes
    are then read for one look and the chosen context only."""
    import cv2

    from boneage.data.handcrop import LOCATORS, Box
    from boneage.data.ingest import assign_split

    params = bench_params(preset=REAL_PRESET)
    split = params.data.split
    people = pd.read_csv(source / BOXES_FILE, dtype={"id": str})
    people["split"] = [assign_split(i, params.seed, split.val, split.test) for i in people["id"]]
    films = {i: cv2.imread(str(_image_dir(source) / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in people["id"]}

    def good(look: float | None, part: str) -> int:
        cfg = params.preprocess.model_copy(update={"crop": "locator", "locator_second_look": look})
        rows = people[people["split"] == part].itertuples()
        return sum(
            LOCATORS["locator"](films[r.id], cfg).is_good_crop_of(Box(r.x0_100, r.y0_100, r.x1_100, r.y1_100)) for r in rows
        )

    val = {"one look": good(None, "val")} | {str(look): good(look, "val") for look in SECOND_LOOKS}
    chosen = max(SECOND_LOOKS, key=lambda look: (val[str(look)], -look))  # among equals, the least context
    return {
        "val_boxes": int((people["split"] == "val").sum()),
        "val_good": val,
        "chosen": chosen,
        "test_boxes": int((people["split"] == "test").sum()),
        "test_good": {"one look": good(None, "test"), str(chosen): good(chosen, "test")},
    }


SAMPLE_BOXES = PROJECT / "tests" / "fixtures" / "rsna_sample_hand_boxes.csv"
IOU_GOAL = 0.8


def sample_ious(samples: Path) -> dict:
    """The recipe's crop on the full-resolution samples against their boxes marked by eye (percent of
    the film on a 5% grid, fingertips to where the forearm leaves the film): IoU of the box the
    locator finds and of the crop (the box plus the margin)."""
    import numpy as np

    from boneage.data import handlocator
    from boneage.data.handcrop import LOCATORS, Box
    from boneage.data.imaging import read_radiograph

    cfg = bench_params(preset=REAL_PRESET).preprocess
    marked = pd.read_csv(SAMPLE_BOXES, comment="#", dtype={"id": str})
    found, cropped = [], []
    for row in marked.itertuples():
        pixels = read_radiograph(_image_dir(samples) / f"{row.id}.png", 10**9).pixels
        h, w = pixels.shape
        truth = Box(int(row.x0 * w / 100), int(row.y0 * h / 100), int(row.x1 * w / 100), int(row.y1 * h / 100))
        box = handlocator.film_box(handlocator.load(cfg.locator), pixels, cfg.locator_second_look)
        found.append(Box(*handlocator.padded(box, 0.0, pixels.shape)).iou(truth))
        cropped.append(LOCATORS[cfg.crop](pixels, cfg).iou(truth))
    return {
        "films": len(marked),
        **{
            name: {
                "at_goal": int(sum(i >= IOU_GOAL for i in ious)),
                "median": round(float(np.median(ious)), 3),
                "min": round(min(ious), 3),
            }
            for name, ious in (("found_box", found), ("crop", cropped))
        },
    }


MISSES_SHEET = PROJECT / "docs" / "crop-misses.png"
SHEET_TILE = 160


def misses_sheet(source: Path, crops: dict) -> None:
    """docs/crop-misses.png: every film whose crop misses its person's box, for the rules, then the
    learned locator with one look and with its second look: the person's box in green, the crop in red."""
    import cv2
    import numpy as np

    people = pd.read_csv(source / BOXES_FILE, dtype={"id": str}).set_index("id")
    rows = []
    names = {
        "hand": "rules on thresholds",
        "locator-one-look": "learned locator, one look",
        "locator": "learned locator, second look",
    }
    for crop, name in names.items():
        missed = crops.get(crop, {}).get("missed_ids", [])
        found = dict((i, b) for i, b, _ in map(_locate, [(i, str(_image_dir(source) / f"{i}.png"), crop) for i in missed]))
        tiles = []
        for image_id in missed:
            film = cv2.imread(str(_image_dir(source) / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
            scale = SHEET_TILE / max(film.shape)
            tile = cv2.cvtColor(cv2.resize(film, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
            t = people.loc[image_id]
            corners = [(int(t.x0_100 * scale), int(t.y0_100 * scale)), (int(t.x1_100 * scale), int(t.y1_100 * scale))]
            cv2.rectangle(tile, *corners, (0, 200, 0), 1)
            if found.get(image_id):
                x0, y0, x1, y1 = (int(v * scale) for v in found[image_id])
                cv2.rectangle(tile, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 1)
            cv2.putText(tile, image_id, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
            canvas = np.zeros((SHEET_TILE, SHEET_TILE, 3), np.uint8)
            canvas[: tile.shape[0], : tile.shape[1]] = tile
            tiles.append(canvas)
        columns = 12
        tiles += [np.zeros_like(tiles[0]) if tiles else np.zeros((SHEET_TILE, SHEET_TILE, 3), np.uint8)] * (-len(tiles) % columns)
        label = np.zeros((24, columns * SHEET_TILE, 3), np.uint8)
        cv2.putText(label, f"{name}: {len(missed)} misses of {crops[crop].get('boxes', 0)} people's boxes",
                    (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)  # fmt: skip
        rows += [label, *[np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]]
    MISSES_SHEET.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(MISSES_SHEET), np.vstack(rows))


def _wall_minutes(log: Path | None) -> dict:
    """From the saved output of `time make real-data ...` on a fresh clone: the pipeline's own wall
    time (make prints it) and the whole command's, install included (bash's `time`)."""
    if log is None:
        return {}
    text = Path(log).read_text(errors="replace")
    found = {}
    if m := re.search(r"pipeline wall time: (\d+) s", text):
        found["pipeline_wall_minutes"] = round(int(m.group(1)) / 60, 1)
    if m := re.search(r"^real\s+(\d+)m([\d.]+)s", text, re.MULTILINE):
        found["wall_minutes"] = round(int(m.group(1)) + float(m.group(2)) / 60, 1)
    return found


def _training_minutes(workspace: Path) -> float | None:
    state = workspace / "models" / "checkpoint" / "state.json"
    return round(json.loads(state.read_text())["seconds_trained"] / 60, 1) if state.is_file() else None


def recipe_figures(workspace: Path, log: Path | None = None) -> dict:
    """The recipe of record's figures from a `make real-data` workspace (read, not re-run)."""
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    history = pd.read_csv(workspace / "models" / "history.csv")
    manifest = pd.read_csv(workspace / "data" / "preprocessed" / "manifest.csv")
    lock = (workspace / "dvc.lock").read_text() if (workspace / "dvc.lock").is_file() else ""
    provenance = json.loads((workspace / "models" / "predictor.json").read_text())["provenance"]
    return {
        "metrics": {
            **_metric_summary(metrics, workspace / "reports" / "predictions.csv"),
            "slope": round(metrics["test"]["slope"], 3),
        },
        "training_minutes": _training_minutes(workspace),
        **_wall_minutes(log),
        # What docs/model-card.md is written from: the model's provenance and its whole evaluation.
        "card": {"provenance": provenance, "metrics": metrics},
        "curve": _learning_curve(history, manifest, workspace),
        "train_films": int((manifest["split"] == "train").sum()),
        "dvc_lock_sha": _sha(lock),
    }


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _learning_curve(history: pd.DataFrame, manifest: pd.DataFrame, workspace: Path) -> list[dict]:
    from boneage.config import load_params

    params = load_params(workspace / "params.yaml", {"preset": REAL_PRESET})
    steps = params.train.steps_per_epoch or -(-int((manifest["split"] == "train").sum()) // params.train.batch_size)
    return [
        {
            "epoch": int(r.epoch),
            "images_seen": int(r.epoch) * steps * params.train.batch_size,
            "val_mae": round(float(r.val_mae_months), 2),
            "train_mae": round(float(r.mae_months), 2),
        }
        for r in history.itertuples()
    ]


def _bootstrap_mean_interval(values, draws: int, level: float) -> list[float]:
    """A percentile bootstrap interval of the mean of ``values`` (seeded: reruns agree)."""
    import numpy as np

    rng = np.random.default_rng(0)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return [round(float(v), 2) for v in np.percentile(means, [tail, 100 - tail])]


def _test_abs_errors(predictions: Path) -> pd.Series:
    """|predicted - true| months of each test film, indexed by id."""
    pred = pd.read_csv(predictions, dtype={"id": str})
    test = pred[pred["split"] == "test"]
    return (test["predicted"] - test["boneage"]).abs().set_axis(test["id"])


def bootstrap_interval(predictions: Path, draws: int = 2000, level: float = 0.95) -> list[float]:
    """The test MAE's sampling spread: a percentile bootstrap over the test films."""
    return _bootstrap_mean_interval(_test_abs_errors(predictions).to_numpy(), draws, level)


def paired_difference(predictions: Path, baseline: Path, draws: int = 2000, level: float = 0.95) -> list[float]:
    """Test MAE of one recipe minus another's on the films both scored, with a paired percentile
    bootstrap interval (the same films resampled for both, so film-to-film spread cancels)."""
    a, b = _test_abs_errors(predictions), _test_abs_errors(baseline)
    common = a.index.intersection(b.index)
    diff = (a[common] - b[common]).to_numpy()
    return [round(float(diff.mean()), 2), *_bootstrap_mean_interval(diff, draws, level)]


def compare_with_recipe(variants: dict) -> dict:
    """Each variant's paired difference from the recipe's equal-budget run, where both reports exist."""
    reports = WORK / "real"
    recipe = reports / "reports-recipe" / PREDICTIONS_FILE
    for name, v in variants.items():
        mine = reports / f"reports-{name}" / PREDICTIONS_FILE
        if name != "recipe" and recipe.is_file() and mine.is_file():
            v["vs_recipe_mae"] = paired_difference(mine, recipe)
    return variants


def _metric_summary(metrics: dict, predictions: Path) -> dict:
    test, val = metrics["test"], metrics["val"]
    return {
        "test_mae": round(test["mae"], 2),
        "test_mae_95ci": bootstrap_interval(predictions),
        "val_mae": round(val["mae"], 2),
        "predict_the_mean_mae": round(metrics["baseline"]["predict_the_mean_mae"], 2),
        "ratio": round(test["mae"] / metrics["baseline"]["predict_the_mean_mae"], 3),
        "test_n": test["n"],
        "by_sex": {k: round(v["mae"], 2) for k, v in test["by_sex"].items()},
        "by_age_band": {k: {"mae": round(v["mae"], 2), "n": v["n"]} for k, v in test["by_age_band"].items()},
    }


def prepared_real(params, root: Path) -> Path:
    """The real films ingested once under ``root`` and preprocessed per preprocess config (cached,
    named by its crop, size and fingerprint): the data every real-film benchmark trains on, with one
    split."""
    import hashlib

    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess

    manifest = root / "ingest" / "manifest.csv"
    if not manifest.is_file():
        ingest(params, root / "ingest")
    cfg = params.preprocess
    fingerprint = hashlib.sha256(cfg.model_dump_json(exclude={"workers", "contact_sheet_count"}).encode()).hexdigest()
    data = root / f"pre-{cfg.crop}-{cfg.image_size}px-{fingerprint[:8]}"
    if not (data / "manifest.csv").is_file():
        preprocess(params, manifest, data)
    return data


def run_variant(name: str, source: Path, minutes: float, epochs: int, steps: int, seed_minutes: float) -> dict:
    """One variant, trained for the shared budget: ingest once, preprocess per crop and size,
    train, then evaluate (the one read of the test split for this recipe)."""
    from boneage.training.evaluate import evaluate
    from boneage.training.train import train

    overrides, _ = VARIANTS[name]
    root = WORK / "real"
    common = {
        "preset": REAL_PRESET,
        "data.source": str(source),
        "train.max_minutes": seed_minutes if overrides.get("preset") == "seed" else minutes,
        "mlflow.tracking_uri": f"sqlite:///{root}/mlruns.db",
        "mlflow.artifact_root": str(root / "mlruns"),
        "mlflow.experiment": "bench-real",
        "mlflow.log_system_metrics": False,
    }
    if overrides.get("preset") == "seed":
        # The seed recipe at 224 px takes ~8x as long a step: short epochs, so that the deadline
        # (checked between epochs) stops it near its wall-clock budget.
        budget = {"train.epochs": 1000, "train.steps_per_epoch": max(1, steps // 16)}
    else:
        budget = {"train.epochs": epochs, "train.steps_per_epoch": steps}
    params = bench_params(**{**common, **budget, **overrides})
    data = prepared_real(params, root)
    start = time.perf_counter()
    result = train(params, data, root / f"models-{name}")
    train_minutes = (time.perf_counter() - start) / 60
    metrics = evaluate(params, data, root / f"models-{name}", root / f"reports-{name}", log_to_mlflow=True)
    history = pd.read_csv(root / f"models-{name}" / "history.csv")
    images = int(len(history) * params.train.steps_per_epoch * params.train.batch_size)
    return {
        "metrics": _metric_summary(metrics, root / f"reports-{name}" / "predictions.csv"),
        "budget": f"{seed_minutes:g} minutes"
        if overrides.get("preset") == "seed"
        else f"{epochs * steps * params.train.batch_size:,} images",
        "train_minutes": round(train_minutes, 1),
        "epochs_run": result.epochs_run,
        "steps_per_epoch": params.train.steps_per_epoch,
        "images_seen": images,
    }


# The recipe search: candidates for the recipe of record, each given the same training budget
# (train.budget_minutes of the preset: the epochs that fit are planned at each one's own pace) on
# the same split, chosen on the validation films only; the test split is never read here.
CANDIDATES = {
    "inception-96-b32": ({"train.batch_size": 32, "train.learning_rate": 1e-3}, "InceptionV3 at 96 px, batch 32"),
    "inception-96-b128": ({"train.batch_size": 128, "train.learning_rate": 2e-3}, "InceptionV3 at 96 px, batch 128"),
    "inception-128-b64": (
        {"model.image_size": 128, "train.batch_size": 64, "train.learning_rate": 1.4e-3},
        "InceptionV3 seeing 128 px (resized in the model), batch 64",
    ),
    "inception-96-b128-huber": (
        {"train.batch_size": 128, "train.learning_rate": 2e-3, "train.loss": "huber"},
        "InceptionV3 at 96 px, batch 128, Huber loss",
    ),
}


def val_mae(model_dir: Path, data_dir: Path, params) -> float:
    """The saved model's validation MAE, each film scored as evaluate and serving score it (put
    upright by its check, bias-corrected): what candidates are chosen on."""
    from boneage.model.network import load_predict_model
    from boneage.model.ood import OodCheck
    from boneage.training.dataset import predict_split

    check = OodCheck.load(model_dir / "ood.npz") if (model_dir / "ood.npz").is_file() else None
    model = load_predict_model(model_dir / "model.keras")
    pred = predict_split(model, data_dir, "val", params.preprocess.image_size, params.train.batch_size, check)
    scored = pred.merge(pd.read_csv(data_dir / "manifest.csv", dtype={"id": str}), on="id")
    return float((scored["predicted"] - scored["boneage"]).abs().mean())


def run_candidate(name: str, source: Path) -> dict:
    """One candidate of the search, trained with the preset's budget; validation figures only."""
    import mlflow

    from boneage.training.train import train

    overrides, description = CANDIDATES[name]
    root = WORK / "real"
    params = bench_params(
        **{
            "preset": REAL_PRESET,
            "data.source": str(source),
            "mlflow.tracking_uri": f"sqlite:///{root}/mlruns.db",
            "mlflow.artifact_root": str(root / "mlruns"),
            "mlflow.experiment": "bench-real-search",
            "mlflow.log_system_metrics": False,
            # The plan is made at the pace of the second epoch; the time limit is lifted so that other
            # work on the machine afterwards changes how long a candidate takes, not how far it trains.
            "train.max_minutes": None,
            **overrides,
        }
    )
    data = prepared_real(params, root)
    start = time.perf_counter()
    result = train(params, data, root / f"search-{name}")
    minutes = (time.perf_counter() - start) / 60
    tags = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(result.run_id).data.tags
    history = pd.read_csv(root / f"search-{name}" / "history.csv")
    n_train = int((pd.read_csv(data / "manifest.csv")["split"] == "train").sum())
    steps = params.train.steps_per_epoch or -(-n_train // params.train.batch_size)
    return {
        "description": description,
        "overrides": overrides,
        "val_mae": round(val_mae(root / f"search-{name}", data, params), 2),
        "best_epoch_val_mae": round(float(history["val_mae_months"].min()), 2),
        "epochs": int(len(history)),
        "images_seen": int(len(history) * steps * params.train.batch_size),
        "seconds_per_epoch": float(tags.get("boneage.seconds_per_epoch", "nan")),
        "budget_minutes": params.train.budget_minutes,
        "planned_minutes": round(len(history) * float(tags.get("boneage.seconds_per_epoch", "nan")) / 60, 1),
        "wall_minutes": round(minutes, 1),
        "precision": tags.get("boneage.training_precision"),
        "curve": [{"epoch": int(r.epoch), "val_mae": round(float(r.val_mae_months), 2)} for r in history.itertuples()],
    }


def store(part: str, value) -> None:
    data = {k: v for k, v in load_results().get(RESULT_KEY, {}).items() if k in PARTS}
    data[part] = value
    # Every training run behind the figures: the recipe of record's and each variant's.
    runs = ([{"name": "recipe of record", **data["recipe"]["metrics"]}] if "recipe" in data else []) + [
        {"name": name, **v["metrics"]} for name, v in data.get("variants", {}).items()
    ]
    record(
        RESULT_KEY, {**data, "runs": runs or [data.get("crop", {})], "title": "real RSNA films (100 px), CPU", **_summary(data)}
    )
    # The docs block follows every stored result, so the two never disagree between parts.
    from benchmarks.real_report import write_readme_block

    write_readme_block(load_results().get(RESULT_KEY, {}))


PARTS = ("crop", "recipe", "previous_recipe", "variants", "variants_measured", "search")


def _summary(data: dict) -> dict:
    goal = "test MAE <= 0.35x predict-the-mean, <= 60 min of CPU training"
    recipe = data.get("recipe", {}).get("metrics")
    if not recipe:
        return {"summary": "recipe of record not run yet", "goal": "measured by make bench-real", "verdict": ""}
    return {
        "summary": f"test MAE {recipe['test_mae']:.2f} months = {recipe['ratio']:.2f}x predict-the-mean "
        f"({recipe['predict_the_mean_mae']:.2f})",
        "goal": goal,
        "verdict": "met" if recipe["ratio"] <= 0.35 else "missed",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("crop", "recipe", "variants", "search", "compare", "readme"))
    parser.add_argument("--source", type=Path, help="a Kaggle-layout folder of real films")
    parser.add_argument("--samples", type=Path, help="full-resolution films whose hands are marked in " + SAMPLE_BOXES.name)
    parser.add_argument("--workspace", type=Path, default=PROJECT, help="where `make real-data` ran")
    parser.add_argument("--log", type=Path, help="the saved output of `time make real-data ...` (its wall times)")
    parser.add_argument("--minutes", type=float, default=30.0, help="a limit on each variant's training (safety)")
    parser.add_argument("--epochs", type=int, default=3, help="cosine epochs of the equal budget")
    parser.add_argument("--steps", type=int, default=200, help="steps (of the preset's batch) per epoch")
    parser.add_argument("--seed-minutes", type=float, default=18.0, help="the seed preset's wall-clock budget")
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    if args.part in ("crop", "variants", "search") and not args.source:
        parser.error("--source is required")
    if args.part == "crop":
        crops = {crop: crop_quality(args.source, crop) for crop in CROPS}
        crops["second_look_choice"] = second_look_choice(args.source)
        if args.samples:
            crops["samples_iou"] = sample_ious(args.samples)
        misses_sheet(args.source, crops)
        store("crop", crops)
    elif args.part == "recipe":
        store("recipe", {**recipe_figures(args.workspace, args.log), "machine": machine()})
    elif args.part == "compare":
        store("variants", compare_with_recipe(load_results().get(RESULT_KEY, {}).get("variants", {})))
    elif args.part == "search":
        done = load_results().get(RESULT_KEY, {}).get("search", {})
        for name in args.candidates:
            print(f"== candidate {name}: {CANDIDATES[name][1]}", flush=True)
            done[name] = {**run_candidate(name, args.source), "machine": machine()}
            store("search", done)
    elif args.part == "variants":
        done = load_results().get(RESULT_KEY, {}).get("variants", {})
        for name in args.only:
            print(f"== variant {name}: {VARIANTS[name][1]}", flush=True)
            done[name] = {
                **run_variant(name, args.source, args.minutes, args.epochs, args.steps, args.seed_minutes),
                "description": VARIANTS[name][1],
            }
            store("variants", compare_with_recipe(done))
        store("variants_measured", {"date": machine()["date"], "recipe": "the rsna-cpu recipe as committed"})
    from benchmarks.real_report import write_readme_block

    write_readme_block(load_results().get(RESULT_KEY, {}))


if __name__ == "__main__":
    main()
