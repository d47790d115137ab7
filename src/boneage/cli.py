"""The ``boneage`` command line: a thin front over the library. Each command parses its options,
calls one library function and reports; errors the user can act on are printed without a traceback."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from boneage.config import DEFAULT_PARAMS_PATH, load_params
from boneage.errors import BoneageError

app = typer.Typer(help="Pediatric bone age from hand radiographs.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: the synthetic embedded default.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read")]


def friendly_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BoneageError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=130) from None

    return wrapper


@app.command()
@friendly_errors
def ingest(
    out: Annotated[Path, typer.Option("--out", help="folder for manifest.csv and quarantine.csv")],
    source: Annotated[str | None, typer.Option("--source", help="folder, .zip or gs:// URI; default: data.source")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Validate an RSNA-format dataset and split it into train/val/test."""
    from boneage.ingest import ingest as run_ingest

    cfg = load_params(params)
    result = run_ingest(cfg, out, source=source or _default_source(cfg))
    counts = result.manifest["split"].value_counts().to_dict()
    typer.echo(
        f"manifest: {len(result.manifest)} images {counts} -> {result.manifest_path}\n"
        f"quarantine: {len(result.quarantine)} refused -> {result.quarantine_path}"
    )
    for reason, n in result.quarantine["reason"].value_counts().head(10).items():
        typer.echo(f"  {n:5d}  {reason}")


def _default_source(cfg) -> str:
    """``synthetic`` names the embedded default dataset, generated on first use."""
    if cfg.data.source != "synthetic":
        return cfg.data.source
    from boneage.synth import ensure_synthetic_dataset

    return str(ensure_synthetic_dataset(cfg))


@app.command()
@friendly_errors
def preprocess(
    manifest: Annotated[Path, typer.Option("--manifest", help="manifest.csv written by ingest")],
    out: Annotated[Path, typer.Option("--out", help="folder for TFRecord shards, manifest and contact sheet")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Crop, normalise and resize every image into sharded TFRecords."""
    from boneage.preprocess import preprocess as run_preprocess

    rows = run_preprocess(load_params(params), manifest, out)
    typer.echo(f"preprocessed {len(rows)} images -> {out} (contact sheet: {out / 'contact_sheet.png'})")


@app.command()
@friendly_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="folder of TFRecord shards from preprocess")],
    out: Annotated[Path, typer.Option("--out", help="folder for the model, run.json and checkpoints")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Train the bone-age model (resumes from the last checkpoint after an interruption)."""
    from boneage.train import train as run_train

    result = run_train(load_params(params), data, out)
    typer.echo(f"trained {result.epochs_run} epochs, best validation MAE {result.best_val_mae:.2f} months; "
               f"model -> {result.model_path}; MLflow run {result.run_id}")


@app.command()
@friendly_errors
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="folder of TFRecord shards from preprocess")],
    model: Annotated[Path, typer.Option("--model", help="folder written by train")],
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json, predictions and plots")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log to the training run")] = True,
) -> None:
    """MAE, RMSE, median AE, within 6/12 months and bias, overall, by sex and by age band."""
    from boneage.evaluate import evaluate as run_evaluate
    from boneage.report import metrics_table

    metrics = run_evaluate(load_params(params), data, model, out, log_to_mlflow=mlflow_log)
    typer.echo(metrics_table(metrics))


@app.command()
@friendly_errors
def register(
    model: Annotated[Path, typer.Option("--model", help="folder written by train (run.json)")],
    metrics: Annotated[Path, typer.Option("--metrics", help="metrics.json written by evaluate")],
    out: Annotated[Path, typer.Option("--out", help="where to write the registry decision (JSON)")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Register the model; alias it `champion` only if it beats the current champion."""
    from boneage.register import register as run_register

    decision = run_register(load_params(params), model, metrics, out)
    typer.echo(f"registered {decision['model']} version {decision['version']} as {decision['alias']}: {decision['reason']}")


@app.command()
@friendly_errors
def report(
    metrics: Annotated[Path, typer.Option("--metrics", help="metrics.json written by evaluate")] = Path("reports/metrics.json"),
) -> None:
    """Print the metrics table next to the predict-the-mean baseline and the noise floor."""
    import json

    from boneage.report import metrics_table

    if not metrics.is_file():
        raise BoneageError(f"{metrics}: not found (run the pipeline first: make demo)")
    typer.echo(metrics_table(json.loads(metrics.read_text())))


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write the Kaggle layout into")],
    count: Annotated[int, typer.Option("--count", min=1)] = 800,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", min=64, max=4096, help="longest side in pixels")] = 512,
    workers: Annotated[int, typer.Option("--workers", min=0, help="0: one per core")] = 0,
    label_noise_sd: Annotated[float, typer.Option("--label-noise-sd", min=0.0)] = 6.0,
) -> None:
    """Write synthetic RSNA-format radiographs whose anatomy follows bone age."""
    from boneage.synth import write_dataset

    csv_path = write_dataset(out, count=count, seed=seed, size=size, workers=workers, label_noise_sd=label_noise_sd)
    typer.echo(f"wrote {count} synthetic radiographs -> {csv_path}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
