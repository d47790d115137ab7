"""Evaluate: MAE and friends in months, overall, by sex and by age band, for validation and test;
plots for DVC and MLflow; ``metrics.json`` for ``dvc metrics``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from boneage import tracking
from boneage.config import Params
from boneage.contracts import (
    ERROR_BY_BAND_FILE,
    MAX_AGE_MONTHS,
    METRICS_FILE,
    MIN_AGE_MONTHS,
    MODEL_FILE,
    OOD_FILE,
    PREDICTIONS_FILE,
    PREDICTOR_FILE,
    age_band,
    age_band_labels,
    noise_floor_mae,
    read_manifest,
    write_json_atomic,
)

EVAL_SPLITS = ("val", "test")


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, float) - np.asarray(true, float)
    abs_err = np.abs(err)
    if len(err) == 0:
        return {"n": 0}
    return {
        "n": int(len(err)),
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "median_ae": float(np.median(abs_err)),
        "within_6m": float((abs_err <= 6).mean()),
        "within_12m": float((abs_err <= 12).mean()),
        "bias": float(err.mean()),
        # Least-squares slope of predicted on true age: 1 for a model without a pull toward the middle.
        "slope": _slope(true, pred),
    }


def _slope(true, pred) -> float:
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    spread = float(((true - true.mean()) ** 2).sum())
    return float(((true - true.mean()) * (pred - pred.mean())).sum() / spread) if spread > 0 else float("nan")


def group_metrics(df: pd.DataFrame) -> dict[str, float]:
    """Regression metrics, and where the predictions carry them the interval's coverage and width and
    the share of films the out-of-distribution check refuses."""
    out = regression_metrics(df["boneage"], df["predicted"])
    if len(df) and "interval_halfwidth" in df:
        out["interval_coverage"] = float(((df["predicted"] - df["boneage"]).abs() <= df["interval_halfwidth"]).mean())
        out["interval_mean_width"] = float(2 * df["interval_halfwidth"].mean())
    if len(df) and "ood_refused" in df:
        out["ood_refused"] = float(df["ood_refused"].mean())
    return out


def breakdown(df: pd.DataFrame, bands: list[str]) -> dict:
    """Metrics overall, by sex and by (true) age band; the bands youngest first, as ``bands`` lists them."""
    out = group_metrics(df)
    out["by_sex"] = {sex: group_metrics(g) for sex, g in df.groupby(df["male"].map({True: "male", False: "female"}))}
    out["by_age_band"] = {band: group_metrics(g) for band in bands if len(g := df[df["age_band"] == band])}
    return out


def _plots(pred: pd.DataFrame, out_dir: Path, bands_order: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = pred[pred["split"] == "test"]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for male, colour in ((True, "tab:blue"), (False, "tab:red")):
        g = test[test["male"] == male]
        ax.scatter(g["boneage"], g["predicted"], s=10, alpha=0.6, c=colour, label="male" if male else "female")
    lim = [
        MIN_AGE_MONTHS,
        max(MAX_AGE_MONTHS, float(test[["boneage", "predicted"]].max().max()) if len(test) else MAX_AGE_MONTHS),
    ]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xlabel="true bone age (months)", ylabel="predicted (months)", title="Test: predicted vs true", xlim=lim, ylim=lim)
    ax.legend()
    paths.append(out_dir / "pred_vs_true.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(test["boneage"], test["predicted"] - test["boneage"], s=10, alpha=0.6)
    ax.axhline(0, color="k", lw=1)
    ax.set(xlabel="true bone age (months)", ylabel="residual (months)", title="Test: residual vs age")
    paths.append(out_dir / "residual_vs_age.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    bands = test.assign(abs_error=(test["predicted"] - test["boneage"]).abs()).groupby("age_band")["abs_error"].mean()
    bands = bands.reindex([b for b in bands_order if b in bands.index])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(bands.index, bands.values, color="tab:gray")
    ax.set(xlabel="age band", ylabel="MAE (months)", title="Test: error by age band")
    paths.append(out_dir / "error_by_band.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    bands.rename("mae").reset_index().to_csv(out_dir / ERROR_BY_BAND_FILE, index=False)
    return paths


def flat_metrics(metrics: dict) -> dict[str, float]:
    flat = {}
    for split in EVAL_SPLITS:
        m = metrics.get(split, {})
        for key in ("mae", "rmse", "median_ae", "within_6m", "within_12m", "bias", "slope", "interval_coverage", "ood_refused"):
            if key in m:
                flat[f"{split}_{key}"] = m[key]
        for group in ("by_sex", "by_age_band"):
            for name, sub in m.get(group, {}).items():
                if "mae" in sub:
                    flat[f"{split}_mae_{name}"] = sub["mae"]
                if "interval_coverage" in sub:
                    flat[f"{split}_interval_coverage_{name}"] = sub["interval_coverage"]
    for key, value in metrics.get("baseline", {}).items():
        if value is not None:
            flat[f"baseline_{key}"] = value
    return flat


def evaluate(params: Params, data_dir: Path, model_dir: Path, out_dir: Path, log_to_mlflow: bool = True) -> dict:
    import mlflow

    from boneage.model.network import load_predict_model
    from boneage.model.ood import OodCheck
    from boneage.model.predictor_config import PredictorConfig
    from boneage.training.dataset import predict_split

    data_dir, model_dir, out_dir = Path(data_dir), Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_predict_model(model_dir / MODEL_FILE)
    scoring = PredictorConfig.read(model_dir / PREDICTOR_FILE)
    ood = OodCheck.load(model_dir / OOD_FILE) if (model_dir / OOD_FILE).is_file() else None
    manifest = read_manifest(data_dir)
    frames = []
    for split in EVAL_SPLITS:
        if (manifest["split"] == split).any():
            frames.append(predict_split(model, data_dir, split, params.preprocess.image_size, params.train.batch_size, ood))
    pred = pd.concat(frames).merge(manifest[["id", "boneage", "male", "split"]], on="id", how="left")
    pred["interval_halfwidth"] = [scoring.halfwidth(m) for m in pred["predicted"]]
    if ood is not None:
        pred["ood_refused"] = pred["ood_score"] > 1.0
    pred["age_band"] = [age_band(a, params.data.age_bands_years) for a in pred["boneage"]]
    pred = pred.sort_values(["split", "id"]).reset_index(drop=True)

    train_mean = float(manifest.loc[manifest["split"] == "train", "boneage"].mean())
    bands = age_band_labels(params.data.age_bands_years)
    metrics: dict = {split: breakdown(pred[pred["split"] == split], bands) for split in EVAL_SPLITS}
    test = pred[pred["split"] == "test"]
    metrics["baseline"] = {
        "predict_the_mean_mae": float((test["boneage"] - train_mean).abs().mean()) if len(test) else None,
        "noise_floor_mae": noise_floor_mae(params.data.synthetic.label_noise_sd_months)
        if params.trains_on_synthetic_data()
        else None,
    }
    if metrics["baseline"]["predict_the_mean_mae"]:
        metrics["test"]["mae_vs_predict_the_mean"] = metrics["test"]["mae"] / metrics["baseline"]["predict_the_mean_mae"]

    pred.assign(error=pred["predicted"] - pred["boneage"]).round(3).to_csv(out_dir / PREDICTIONS_FILE, index=False)
    plots = _plots(pred, out_dir, bands)
    write_json_atomic(out_dir / METRICS_FILE, metrics)

    if log_to_mlflow:
        run = tracking.read_run_file(model_dir)
        tracking.connect(params)
        with mlflow.start_run(run_id=run["run_id"]):
            mlflow.log_metrics(flat_metrics(metrics))
            for path in plots:
                mlflow.log_artifact(str(path), "plots")
            mlflow.log_artifact(str(out_dir / METRICS_FILE), "evaluation")
            mlflow.log_artifact(str(out_dir / PREDICTIONS_FILE), "evaluation")
            mlflow.set_tag("mlflow.note.content", tracking.describe_run(tracking.read_provenance(model_dir), metrics))
    return metrics
