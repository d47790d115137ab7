"""The ``boneage`` command line: a thin front over the library. Each command parses its options,
calls one library function and reports; errors the user can act on are printed without a traceback."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from boneage.config import DEFAULT_PARAMS_PATH, load_params
from boneage.contracts import CONTACT_SHEET_FILE
from boneage.errors import BoneageError

app = typer.Typer(help="Pediatric bone age from hand radiographs.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: the synthetic embedded default.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(
    help="The Kubeflow pipeline: compile, run locally with kfp.local, submit to a cluster.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
services_app = typer.Typer(help="The local service stack: PostgreSQL, a GCS emulator, an MLflow server.", no_args_is_help=True)
app.add_typer(services_app, name="services")
ensemble_app = typer.Typer(
    help="Ensembles: train the members of ensemble.members, then combine them into one model.", no_args_is_help=True
)
app.add_typer(ensemble_app, name="ensemble")
serve_app = typer.Typer(
    help="Serving at cluster scale: the KServe InferenceService of a registered version.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve")

# The options several commands share, declared once.
ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
DataOption = Annotated[Path, typer.Option("--data", help="folder of TFRecord shards from preprocess")]
TrainedOption = Annotated[Path, typer.Option("--model", help="folder written by train (or the ensemble step)")]
MetricsOption = Annotated[Path, typer.Option("--metrics", help="metrics.json written by evaluate")]


def out_option(what: str, required: bool = True):
    """`--out` with what it writes: every command's output, under one name."""
    return Annotated[Path if required else Path | None, typer.Option("--out", help=what)]


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
    out: out_option("folder for manifest.csv and quarantine.csv"),
    source: Annotated[str | None, typer.Option("--source", help="folder, .zip or gs:// URI; default: data.source")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Validate an RSNA-format dataset and split it into train/val/test."""
    from boneage.data.ingest import ingest as run_ingest

    result = run_ingest(load_params(params), out, source=source)
    counts = result.manifest["split"].value_counts().to_dict()
    typer.echo(
        f"manifest: {len(result.manifest)} images {counts} -> {result.manifest_path}\n"
        f"quarantine: {len(result.quarantine)} refused -> {result.quarantine_path}"
    )
    for reason, n in result.quarantine["reason"].value_counts().head(10).items():
        typer.echo(f"  {n:5d}  {reason}")


@app.command()
@friendly_errors
def preprocess(
    manifest: Annotated[Path, typer.Option("--manifest", help="manifest.csv written by ingest")],
    out: out_option("folder for TFRecord shards, manifest and contact sheet"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Crop, normalise and resize every image into sharded TFRecords."""
    from boneage.data.preprocess import preprocess as run_preprocess

    rows = run_preprocess(load_params(params), manifest, out)
    typer.echo(f"preprocessed {len(rows)} images -> {out} (contact sheet: {out / CONTACT_SHEET_FILE})")


@app.command()
@friendly_errors
def train(
    data: DataOption,
    out: out_option("folder for the model, run.json and checkpoints"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Train the bone-age model (resumes from the last checkpoint after an interruption)."""
    from boneage.training.train import train as run_train

    result = run_train(load_params(params), data, out)
    typer.echo(
        f"trained {result.epochs_run} epochs, best validation MAE {result.best_val_mae:.2f} months; "
        f"model -> {result.model_path}; MLflow run {result.run_id}"
    )


@ensemble_app.command("member")
@friendly_errors
def ensemble_member(
    name: Annotated[str, typer.Option("--name", help="the member's name in ensemble.members")],
    data: DataOption,
    out: out_option("the member's folder (model, run.json, member.json)"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Train one ensemble member. A failure is recorded in its member.json and leaves exit code 0:
    the ensemble step decides whether enough members finished."""
    from boneage.training.ensemble import train_member

    record = train_member(load_params(params), name, data, out)
    if record["status"] == "trained":
        typer.echo(f"member {name}: trained in {record['train_seconds']:.0f} s, MLflow run {record['run_id']}")
    else:
        typer.secho(f"member {name}: FAILED after {record['attempts']} attempts: {record['reason']}", fg=typer.colors.RED)


@ensemble_app.command("build")
@friendly_errors
def ensemble_build(
    members: Annotated[Path, typer.Option("--members", help="folder holding one folder per member")],
    data: DataOption,
    out: out_option("folder for the ensemble (the same files as train's)"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Combine the members that finished into one model, calibrated on validation films."""
    from boneage.training.ensemble import build

    loaded = load_params(params)
    result = build(loaded, [members / m.name for m in loaded.ensemble.members], data, out)
    weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(result.members, result.weights, strict=True))
    typer.echo(f"ensemble of {len(result.members)} (weights {weights}) -> {result.model_path}; MLflow run {result.run_id}")
    for name, why in result.failed.items():
        typer.echo(f"  left out {name}: {why}")


@app.command()
@friendly_errors
def evaluate(
    data: DataOption,
    model: TrainedOption,
    out: out_option("folder for metrics.json, predictions and plots"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log to the training run")] = True,
) -> None:
    """MAE, RMSE, median AE, within 6/12 months and bias, overall, by sex and by age band."""
    from boneage.training.evaluate import evaluate as run_evaluate
    from boneage.training.report import metrics_table

    metrics = run_evaluate(load_params(params), data, model, out, log_to_mlflow=mlflow_log)
    typer.echo(metrics_table(metrics))


@app.command()
@friendly_errors
def register(
    model: TrainedOption,
    metrics: MetricsOption,
    out: out_option("where to write the registry decision (JSON)"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Register the model; alias it `champion` only if it beats the current champion."""
    from boneage.training.register import register as run_register
    from boneage.training.report import registry_line

    typer.echo(registry_line(run_register(load_params(params), model, metrics, out)))


@app.command()
@friendly_errors
def report(
    metrics: Annotated[Path | None, typer.Option("--metrics", help="metrics.json written by evaluate")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="registry.json written by register")] = None,
) -> None:
    """Print the metrics table next to the predict-the-mean baseline and the noise floor, and/or the
    registry's decision (default: reports/metrics.json)."""
    from boneage.training.report import read_report, registry_line

    if metrics is None and registry is None:
        metrics = Path("reports/metrics.json")
    if metrics is not None:
        from boneage.training.report import metrics_table

        typer.echo(metrics_table(read_report(metrics)))
    if registry is not None:
        typer.echo(registry_line(read_report(registry)))


@app.command()
@friendly_errors
def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG, JPEG or DICOM files, or folders of them")] = None,
    table: Annotated[
        Path | None,
        typer.Option(
            "--table",
            help="a worklist CSV: path, sex, optional id and chronological_age (months); "
            "relative paths resolve against the CSV's folder",
        ),
    ] = None,
    sex: Annotated[str | None, typer.Option("--sex", help="M or F (DICOM: PatientSex when not given)")] = None,
    chronological_age: Annotated[
        float | None,
        typer.Option("--chronological-age", help="months; adds BA-CA, the Greulich-Pyle SDS and a call (DICOM: PatientAge)"),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="training output folder or MLflow model URI")
    ] = "models:/boneage@champion",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    out: out_option("with --table: write the scored worklist to this CSV", required=False) = None,
    report: Annotated[Path | None, typer.Option("--report", help="write an HTML + PNG report per image here")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Bone age with a calibrated interval; with the chronological age, the SDS and a call.
    Images on the command line share one --sex; a --table worklist gives each film its own.
    Exits 1 if any image was rejected (each rejection says why)."""
    import json

    from boneage.serve.command import PredictRequest, run_predict

    request = PredictRequest(list(images or []), table, sex, chronological_age, model, out, report)
    outcome = run_predict(request, load_params(params))
    for page in outcome.reports:
        typer.echo(f"report: {page}", err=True)
    if outcome.scored_worklist is not None:
        typer.echo(f"scored worklist: {outcome.scored_worklist}", err=True)
    typer.echo(json.dumps(outcome.records(), indent=2) if as_json else "\n".join(outcome.lines()))
    if outcome.worklist is not None:
        n = len(outcome.results)
        typer.echo(f"{n - outcome.rejected} scored, {outcome.rejected} rejected of {n} rows", err=True)
    if outcome.rejected:
        raise typer.Exit(code=1)


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: out_option("folder for the Kaggle layout; default: data.synthetic_dir", required=False) = None,
    count: Annotated[int | None, typer.Option("--count", min=1, help="default: data.synthetic.count")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="default: seed")] = None,
    size: Annotated[
        int | None, typer.Option("--size", min=64, max=4096, help="longest side; default: data.synthetic.image_size")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="0: one per core; default: data.synthetic.workers")
    ] = None,
    label_noise_sd: Annotated[
        float | None, typer.Option("--label-noise-sd", min=0.0, help="default: data.synthetic.label_noise_sd_months")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Write synthetic RSNA-format radiographs whose anatomy follows bone age (settings from
    params.yaml's data.synthetic; an option overrides one)."""
    from boneage.data.synth import write_dataset

    cfg = load_params(params)
    synthetic = cfg.data.synthetic
    out = out or Path(cfg.data.synthetic_dir)
    count = synthetic.count if count is None else count
    csv_path = write_dataset(
        out,
        count=count,
        seed=cfg.seed if seed is None else seed,
        size=synthetic.image_size if size is None else size,
        workers=synthetic.workers if workers is None else workers,
        label_noise_sd=synthetic.label_noise_sd_months if label_noise_sd is None else label_noise_sd,
    )
    typer.echo(f"wrote {count} synthetic radiographs -> {csv_path}")


SetOption = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: KEY=VALUE (dotted key, YAML value)")]


def _overrides(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BoneageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set kfp.image=registry/boneage-gpu:0.1.0")
        out[key.strip()] = yaml.safe_load(value)
    return out


PackageOption = Annotated[Path, typer.Option("--package", help="compiled pipeline YAML")]


def _pipeline_arguments(source, data_version, image_size, epochs, backbone, gpu_count, gpu_type, mlflow_uri, experiment) -> dict:
    """Only the run-time parameters given on the command line; the rest keep params.yaml's values."""
    given = {
        "source_uri": source,
        "data_version": data_version,
        "image_size": image_size,
        "epochs": epochs,
        "backbone": backbone,
        "gpu_count": gpu_count,
        "gpu_type": gpu_type,
        "mlflow_tracking_uri": mlflow_uri,
        "experiment": experiment,
    }
    return {k: v for k, v in given.items() if v is not None}


SourceArg = Annotated[str | None, typer.Option("--source", help="data source URI (folder, .zip, gs://)")]
DataVersionArg = Annotated[str | None, typer.Option("--data-version", help="data hash, part of ingest's cache key")]
ImageSizeArg = Annotated[int | None, typer.Option("--image-size", min=75)]
EpochsArg = Annotated[int | None, typer.Option("--epochs", min=1)]
BackboneArg = Annotated[str | None, typer.Option("--backbone")]
GpuCountArg = Annotated[int | None, typer.Option("--gpu-count", min=0)]
GpuTypeArg = Annotated[str | None, typer.Option("--gpu-type", help="accelerator resource, e.g. nvidia.com/gpu")]
MlflowUriArg = Annotated[str | None, typer.Option("--mlflow-uri", help="MLflow tracking URI seen from the steps")]
ExperimentArg = Annotated[str | None, typer.Option("--experiment", help="MLflow and KFP experiment")]


@pipeline_app.command("compile")
@friendly_errors
def pipeline_compile(
    out: out_option("where to write the pipeline YAML (default: build/boneage[-batch]-pipeline.yaml)", required=False) = None,
    batch: Annotated[bool, typer.Option("--batch", help="the batch-scoring pipeline instead of the training one")] = False,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    set_: SetOption = None,
) -> None:
    """Compile the pipeline (defaults from params.yaml) to a YAML package for a KFP cluster."""
    from boneage.orchestrate.kfp_runner import DEFAULT_BATCH_PACKAGE, DEFAULT_PACKAGE, compile_pipeline

    out = out or (DEFAULT_BATCH_PACKAGE if batch else DEFAULT_PACKAGE)
    path = compile_pipeline(load_params(params, _overrides(set_)), out, batch=batch)
    typer.echo(f"compiled pipeline -> {path}")


@pipeline_app.command("run-local")
@friendly_errors
def pipeline_run_local(
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    pipeline_root: Annotated[Path, typer.Option("--pipeline-root", help="where kfp.local writes the artifacts")] = Path(
        "local_outputs"
    ),
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse kfp.local's cached step outputs")] = False,
    runner: Annotated[
        str, typer.Option("--runner", help="subprocess: this environment; docker: each step in a container of --image")
    ] = "subprocess",
    image: Annotated[
        str | None, typer.Option("--image", help="with --runner docker: the image (default: kfp.cpu_image, from make image)")
    ] = None,
    source: SourceArg = None,
    data_version: DataVersionArg = None,
    image_size: ImageSizeArg = None,
    epochs: EpochsArg = None,
    backbone: BackboneArg = None,
    mlflow_uri: MlflowUriArg = None,
    experiment: ExperimentArg = None,
    set_: SetOption = None,
    batch: Annotated[bool, typer.Option("--batch", help="the batch-scoring pipeline: --worklist, --scored-out, --model")] = False,
    worklist: Annotated[str | None, typer.Option("--worklist", help="--batch: the worklist CSV (gs:// or a path)")] = None,
    scored_out: Annotated[
        str | None, typer.Option("--scored-out", help="--batch: where the scored worklist and its summary go (gs:// or a folder)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="--batch: MLflow model URI or gs:// model folder")] = None,
) -> None:
    """Run the whole pipeline here with kfp.local, on CPU: each step in this environment, or with
    --runner docker in its own container of the project's image. --batch: the batch-scoring one."""
    from boneage.orchestrate.kfp_runner import run_local

    if batch:
        given = {"worklist_uri": worklist, "out_uri": scored_out, "model_uri": model, "mlflow_tracking_uri": mlflow_uri}
        args = {k: v for k, v in {**given, "experiment": experiment}.items() if v is not None}
    else:
        args = _pipeline_arguments(source, data_version, image_size, epochs, backbone, None, None, mlflow_uri, experiment)
    result = run_local(
        load_params(params, _overrides(set_)), args, pipeline_root, enable_caching=cache, runner=runner, image=image, batch=batch
    )
    typer.echo(f"local pipeline run finished in {result.wall_seconds:.0f} s; artifacts under {result.pipeline_root}")
    if result.step_seconds:
        steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.step_seconds.items())
        typer.echo(f"steps' own work: {steps}; orchestration overhead {result.overhead_seconds:.0f} s")


@pipeline_app.command("submit")
@friendly_errors
def pipeline_submit(
    host: Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. https://kfp.example.org")],
    package: PackageOption = Path("pipeline/boneage-pipeline.yaml"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    token: Annotated[str | None, typer.Option("--token", envvar="KFP_TOKEN", help="bearer token (or $KFP_TOKEN)")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Kubeflow profile namespace")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
    source: SourceArg = None,
    data_version: DataVersionArg = None,
    image_size: ImageSizeArg = None,
    epochs: EpochsArg = None,
    backbone: BackboneArg = None,
    gpu_count: GpuCountArg = None,
    gpu_type: GpuTypeArg = None,
    mlflow_uri: MlflowUriArg = None,
    experiment: ExperimentArg = None,
) -> None:
    """Upload the compiled pipeline as a new version and start a run; prints the run's URL."""
    from boneage.orchestrate.kfp_runner import submit

    args = _pipeline_arguments(source, data_version, image_size, epochs, backbone, gpu_count, gpu_type, mlflow_uri, experiment)
    result = submit(
        load_params(params), host, package, args, experiment=experiment, run_name=run_name, token=token, namespace=namespace
    )
    typer.echo(f"submitted run {result.run_id}: {result.run_url}")


@serve_app.command("manifest")
@friendly_errors
def serve_manifest(
    version: Annotated[str, typer.Option("--version", help="the registered version: a number or an alias")] = "champion",
    name: Annotated[str | None, typer.Option("--name", help="registered model (default: mlflow.registered_model)")] = None,
    canary: Annotated[
        bool,
        typer.Option(
            "--canary", help="a challenger: kserve.canary_traffic_percent of the traffic when applied over the champion"
        ),
    ] = False,
    out: out_option("where to write the InferenceService YAML") = Path("build/inferenceservice.yaml"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    set_: SetOption = None,
) -> None:
    """Write the KServe InferenceService for a registered version (apply it with kubectl)."""
    from boneage.orchestrate.kserve_manifest import write_manifest

    loaded = load_params(params, _overrides(set_))
    path, manifest = write_manifest(loaded, name or loaded.mlflow.registered_model, version, out, canary)
    env = {e["name"]: e["value"] for e in manifest["spec"]["predictor"]["containers"][0]["env"]}
    typer.echo(
        f"InferenceService {manifest['metadata']['name']} for {env['BONEAGE_MODEL_NAME']} from {env['STORAGE_URI']} -> {path}"
    )


@app.command()
@friendly_errors
def monitor(
    records: Annotated[str, typer.Option("--records", help="the servers' records: a folder or gs://bucket/prefix")],
    model: Annotated[
        str, typer.Option("--model", help="the served model: folder or MLflow model URI")
    ] = "models:/boneage@champion",
    since: Annotated[str | None, typer.Option("--since", help="window start, ISO time (UTC unless it names a zone)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="window end, ISO time (excluded)")] = None,
    out: out_option("where to write monitor.html and monitor.json") = Path("reports/monitor"),
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log the report as an MLflow run")] = True,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Compare a window of the servers' records with the model's validation films: the check's
    scores, the predicted ages, the refusal rate and the share of films not upright. Exit status 0:
    no alert; 3: an alert (each printed, and in the report); 4: too few films to judge."""
    from boneage.serve.monitor_report import MonitorRequest, run_monitor

    _, status = run_monitor(load_params(params), MonitorRequest(records, model, out, since, until, mlflow_log))
    raise typer.Exit(code=status)


ServicesRoot = Annotated[Path, typer.Option("--root", help="folder for the services' data, logs and state")]


@services_app.command("up")
@friendly_errors
def services_up(
    root: ServicesRoot = Path(".services"),
    postgres_port: Annotated[int, typer.Option("--postgres-port")] = 55432,
    gcs_port: Annotated[int, typer.Option("--gcs-port")] = 9023,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port")] = 5001,
) -> None:
    """Start PostgreSQL, the GCS emulator and an MLflow server (basic auth) on 127.0.0.1."""
    from boneage.orchestrate import services

    stack = services.start(root, {"postgres": postgres_port, "gcs": gcs_port, "mlflow": mlflow_port})
    typer.echo(
        f"PostgreSQL  127.0.0.1:{stack.postgres_port} (data in {root}/postgres)\n"
        f"GCS         {stack.gcs_endpoint} (buckets {services.ARTIFACT_BUCKET}, {services.DATA_BUCKET})\n"
        f"MLflow      {stack.mlflow_uri} (user {services.MLFLOW_ADMIN}, basic auth)\n"
        f'Use them:   eval "$(boneage services env --root {root})"'
    )


@services_app.command("env")
@friendly_errors
def services_env(root: ServicesRoot = Path(".services")) -> None:
    """Print the `export` lines that point boneage, DVC and MLflow at the running services."""
    from boneage.orchestrate import services

    stack = services.load(root)
    if stack is None:
        raise BoneageError(f"no services running under {root} (start them: make services)")
    typer.echo(services.env_lines(stack), nl=False)


@services_app.command("down")
@friendly_errors
def services_down(root: ServicesRoot = Path(".services")) -> None:
    """Stop the services started by `boneage services up` (their data stays in --root)."""
    from boneage.orchestrate import services

    typer.echo("stopped" if services.stop(root) else f"nothing running under {root}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
