"""MLflow plumbing shared by train, evaluate and register.

One pipeline run is one MLflow run: ``train`` opens it and writes its id to ``run.json``;
``evaluate`` and ``register`` (and the KFP steps) reopen the same run by id, so params, curves,
metrics, plots, the model and the registry decision all sit on one run in the UI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from boneage.config import Params
from boneage.contracts import MANIFEST_FILE, PREDICTOR_FILE, RUN_FILE, write_json_atomic
from boneage.errors import BoneageError

QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")

# Never logged as params or tags, whatever a config or environment holds.
SECRET_MARKERS = ("password", "secret", "token", "credential", "key")


# mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ; remember every store we
# wrote there, so that a later run in the same process follows its own params, not an earlier run's
# store (whichever of them the variable holds now).
_uris_we_set: set[str] = set()


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI as the user set it wins; otherwise params' mlflow.tracking_uri."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _uris_we_set else params.mlflow.tracking_uri


def _ensure_local_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def probe_server(uri: str, timeout: float) -> None:
    """For an MLflow server: is it up, and does it accept our credentials? One quick request each,
    instead of the client's minutes of retries (and never after an hour of training)."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as exc:
        raise BoneageError(
            f"MLflow server {redact_uri(uri)} is unreachable ({type(exc).__name__}); start it "
            "(make services) or point MLFLOW_TRACKING_URI elsewhere"
        ) from None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password) if user and password else None
    reply = requests.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=timeout
    )
    if reply.status_code in (401, 403):
        given = "with" if auth else "without"
        raise BoneageError(
            f"MLflow server {redact_uri(uri)} refused the request {given} credentials (HTTP "
            f"{reply.status_code}): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )


def connect(params: Params) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; fail fast and
    clearly when the tracking server cannot be reached, before any training starts."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # A new SQLite store announces its schema migrations at INFO; keep first runs readable.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(params)
    if uri.startswith(("http://", "https://")):
        try:
            probe_server(uri, params.mlflow.probe_timeout_seconds)
        except BoneageError as exc:
            if not params.mlflow.fallback_to_local:
                raise
            local = params.mlflow.local_fallback_uri
            print(
                f"warning: {exc}\nwarning: mlflow.fallback_to_local is set: logging to {local} instead; "
                "import the run later with mlflow's export tools",
                file=sys.stderr,
            )
            uri = local
            os.environ["MLFLOW_TRACKING_URI"] = local  # the later steps of this run follow
    _ensure_local_store(uri)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI") not in (user_env, None):
        _uris_we_set.add(os.environ["MLFLOW_TRACKING_URI"])
    try:
        experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
        if experiment is None:
            artifact_location = None
            if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
                artifact_location = Path(params.mlflow.artifact_root).resolve().as_uri()
            experiment_id = mlflow.create_experiment(params.mlflow.experiment, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
    except (MlflowException, OSError) as exc:
        raise BoneageError(f"MLflow tracking store {redact_uri(uri)} is unreachable or refused us: {exc}") from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def redact_uri(uri: str) -> str:
    """Hide a password embedded in a URI (user:pass@host)."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif not any(marker in key.lower() for marker in SECRET_MARKERS):
            out[name] = value if not isinstance(value, list | tuple) else json.dumps(list(value))
    return out


# Set by the project's Docker image (its build arguments; there is no .git inside the image).
IMAGE_LINEAGE_ENV = {
    "git.commit": "BONEAGE_GIT_COMMIT",
    "image.version": "BONEAGE_IMAGE_VERSION",
    "image.lock_sha256": "BONEAGE_LOCK_SHA256",
}


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def image_lineage() -> dict[str, str]:
    """What the image this step runs in was built from, as run tags (empty outside the image)."""
    return {tag: os.environ[env] for tag, env in IMAGE_LINEAGE_ENV.items() if os.environ.get(env)}


def git_commit() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes), or inside the project's image,
    the commit it was built from."""
    built_from = os.environ.get(IMAGE_LINEAGE_ENV["git.commit"])
    if built_from and built_from != "unknown" and not Path(".git").exists():
        return built_from
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # dvc.lock is rewritten by `dvc repro` itself; it does not make the code dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_lineage(data_dir: Path) -> dict[str, str]:
    """The hashes that tie a run to its data: DVC's, from dvc.lock when present, and the
    preprocessed manifest's own md5 (which also covers runs outside DVC)."""
    tags = {}
    manifest = Path(data_dir) / MANIFEST_FILE
    if manifest.is_file():
        tags["data.manifest_md5"] = file_md5(manifest)
    lock = Path("dvc.lock")
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in ("ingest", "preprocess"):
            for entry in stages.get(stage, {}).get("deps", []) + stages.get(stage, {}).get("outs", []):
                if "md5" in entry and not entry["path"].startswith("src"):
                    tags[f"dvc.{stage}.{entry['path']}"] = entry["md5"]
    for dvc_file in (p for p in Path(".").glob("*.dvc") if p.is_file()):
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        for entry in outs:
            tags[f"dvc.{dvc_file.name}.{entry['path']}"] = entry.get("md5", "untracked")
    return tags


def write_run_file(out_dir: Path, run_id: str, experiment_id: str, uri: str, model_uri: str) -> Path:
    path = Path(out_dir) / RUN_FILE
    write_json_atomic(
        path, {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": redact_uri(uri), "model_uri": model_uri}
    )
    return path


def read_run_file(model_dir: Path) -> dict:
    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise BoneageError(f"{path}: no MLflow run recorded (run `boneage train` first)")
    return json.loads(path.read_text())


def read_provenance(model_dir: Path) -> dict:
    """The provenance train wrote into the model's predictor.json ({} for older models)."""
    path = Path(model_dir) / PREDICTOR_FILE
    return json.loads(path.read_text()).get("provenance", {}) if path.is_file() else {}


def describe_run(provenance: dict, metrics: dict) -> str:
    """One paragraph for the run's description in the MLflow UI: its data, recipe and test MAE."""
    films = provenance.get("films", {})
    test = metrics.get("test", {})
    baseline = metrics.get("baseline", {}).get("predict_the_mean_mae")
    mae = f"test MAE {test['mae']:.2f} months on {test['n']} films" if test.get("mae") is not None else "no test MAE"
    if baseline:
        mae += f" ({100 * test['mae'] / baseline:.0f}% of predict-the-mean, {baseline:.2f})"
    return (
        f"Trained on {provenance.get('dataset_kind', 'unknown')} data "
        f"({films.get('train', '?')} training, {films.get('val', '?')} validation and {films.get('test', '?')} test films; "
        f"fingerprint {provenance.get('dataset_fingerprint', 'unknown')}, from {provenance.get('dataset_source', 'unknown')}) "
        f"with the {provenance.get('preset', '?')} recipe: {provenance.get('backbone', '?')} at "
        f"{provenance.get('image_size', '?')} px, {provenance.get('crop', '?')} crop. {mae}."
    )
