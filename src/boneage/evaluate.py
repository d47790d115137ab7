"""Evaluate: MAE and friends in months, overall, by sex and by age band, for validation and test;
plots for DVC and MLflow; ``metrics.json`` for ``dvc metrics``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from boneage import tracking
from boneage.config import Params
from boneage.ingest import age_band
from boneage.synth import noise_floor_mae

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
    }


def breakdown(df: pd.DataFrame) -> dict:
    out = regression_metrics(df["boneage"], df["predicted"])
    out["by_sex"] = {sex: regression_metrics(g["boneage"], g["predicted"])
                     for sex, g in df.groupby(df["male"].map({True: "male", False: "female"}))}
    out["by_age_band"] = {band: regression_metrics(g["boneage"], g["predicted"])
                          for band, g in df.groupby("age_band", sort=False)}
    return out


def predict_split(model, data_dir: Path, split: str, image_size: int, batch_size: int) -> pd.DataFrame:
    from boneage.dataset import make_dataset

    rows = []
    for inputs, _, ids in make_dataset(data_dir, split, image_size, batch_size, with_ids=True):
        pred = model.predict_on_batch(inputs).reshape(-1)
        rows.extend(zip([i.decode() for i in ids.numpy()], pred.tolist(), strict=True))
    return pd.DataFrame(rows, columns=["id", "predicted"])


def _plots(pred: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = pred[pred["split"] == "test"]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for male, colour in ((True, "tab:blue"), (False, "tab:red")):
        g = test[test["male"] == male]
        ax.scatter(g["boneage"], g["predicted"], s=10, alpha=0.6, c=colour, label="male" if male else "female")
    lim = [0, max(240, float(test[["boneage", "predicted"]].max().max()) if len(test) else 240)]
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

    bands = test.assign(abs_error=(test["predicted"] - test["boneage"]).abs()).groupby("age_band", sort=False)["abs_error"].mean()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(bands.index, bands.values, color="tab:gray")
    ax.set(xlabel="age band", ylabel="MAE (months)", title="Test: error by age band")
    paths.append(out_dir / "error_by_band.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    bands.rename("mae").reset_index().to_csv(out_dir / "error_by_band.csv", index=False)
    return paths


def flat_metrics(metrics: dict) -> dict[str, float]:
    flat = {}
    for split in EVAL_SPLITS:
        m = metrics.get(split, {})
        for key in ("mae", "rmse", "median_ae", "within_6m", "within_12m", "bias"):
            if key in m:
                flat[f"{split}_{key}"] = m[key]
        for group in ("by_sex", "by_age_band"):
            for name, sub in m.get(group, {}).items():
                if "mae" in sub:
                    flat[f"{split}_mae_{name}"] = sub["mae"]
    for key, value in metrics.get("baseline", {}).items():
        if value is not None:
            flat[f"baseline_{key}"] = value
    return flat


def evaluate(params: Params, data_dir: Path, model_dir: Path, out_dir: Path, log_to_mlflow: bool = True) -> dict:
    import mlflow

    from boneage.model import load_predict_model

    data_dir, model_dir, out_dir = Path(data_dir), Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_predict_model(model_dir / "model.keras")
    manifest = pd.read_csv(data_dir / "manifest.csv", dtype={"id": str})
    frames = []
    for split in EVAL_SPLITS:
        if (manifest["split"] == split).any():
            frames.append(predict_split(model, data_dir, split, params.preprocess.image_size, params.train.batch_size))
    pred = pd.concat(frames).merge(manifest[["id", "boneage", "male", "split"]], on="id", how="left")
    pred["male"] = pred["male"].astype(str).str.lower().eq("true")
    pred["age_band"] = [age_band(a, params.data.age_bands_years) for a in pred["boneage"]]
    pred = pred.sort_values(["split", "id"]).reset_index(drop=True)

    train_mean = float(manifest.loc[manifest["split"] == "train", "boneage"].mean())
    metrics: dict = {split: breakdown(pred[pred["split"] == split]) for split in EVAL_SPLITS}
    test = pred[pred["split"] == "test"]
    metrics["baseline"] = {
        "predict_the_mean_mae": float((test["boneage"] - train_mean).abs().mean()) if len(test) else None,
        "noise_floor_mae": noise_floor_mae(params.data.synthetic.label_noise_sd_months) if params.trains_on_synthetic_data() else None,
    }
    if metrics["baseline"]["predict_the_mean_mae"]:
        metrics["test"]["mae_vs_predict_the_mean"] = metrics["test"]["mae"] / metrics["baseline"]["predict_the_mean_mae"]

    pred.assign(error=pred["predicted"] - pred["boneage"]).round(3).to_csv(out_dir / "predictions.csv", index=False)
    plots = _plots(pred, out_dir)
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")

    if log_to_mlflow:
        run = tracking.read_run_file(model_dir)
        tracking.connect(params)
        with mlflow.start_run(run_id=run["run_id"]):
            mlflow.log_metrics(flat_metrics(metrics))
            for path in plots:
                mlflow.log_artifact(str(path), "plots")
            mlflow.log_artifact(str(out_dir / "metrics.json"), "evaluation")
            mlflow.log_artifact(str(out_dir / "predictions.csv"), "evaluation")
    return metrics
