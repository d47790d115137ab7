"""The KServe ``InferenceService`` for a registered version (`boneage serve manifest`).

A custom predictor: the serving image (`make image-serve`) runs boneage.serve.kserve_model; the
``STORAGE_URI`` environment variable makes KServe's storage initializer copy the version's files
from the bucket to /mnt/models before the server starts. The version's files are found through the
registry: MLflow's download URI for the version, with the server's proxied ``mlflow-artifacts:/``
mapped to the bucket behind it (kserve.artifact_destination).

Champion and challenger: the champion's manifest routes all traffic to its revision; a challenger's
(``--canary``) carries ``canaryTrafficPercent``, so that applying it over the champion's
InferenceService gives the new revision that share of the traffic and leaves the rest on the
champion's (KServe's serverless canary rollout; promote by applying it again without the share).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from boneage.config import Params
from boneage.errors import BoneageError
from boneage.serve.monitoring import MODEL_ENV, RECORDS_ENV

API_VERSION = "serving.kserve.io/v1beta1"
# KServe's own names: the container it attaches the storage initializer to, the variable that asks
# for it and where it puts the files.
CONTAINER_NAME = "kserve-container"
STORAGE_ENV = "STORAGE_URI"
MODEL_MOUNT = "/mnt/models"
MLFLOW_PROXY_SCHEME = "mlflow-artifacts:/"
CLUSTER_SCHEMES = ("gs://", "s3://", "https://", "pvc://")


def storage_uri(download_uri: str, artifact_destination: str) -> str:
    """Where a cluster reads a version's files, from MLflow's download URI for it."""
    if download_uri.startswith(MLFLOW_PROXY_SCHEME):
        relative = download_uri[len(MLFLOW_PROXY_SCHEME) :].lstrip("/")
        return f"{artifact_destination.rstrip('/')}/{relative}"
    if download_uri.startswith(CLUSTER_SCHEMES):
        return download_uri
    raise BoneageError(
        f"the version's files are at {download_uri}, which a cluster cannot read; register it on an MLflow "
        "server whose artifacts live in a bucket (make services starts one against the GCS emulator)"
    )


def find_version(client, name: str, ref: str):
    """A registered version by number ("3") or alias ("champion")."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise BoneageError(f"{name}@{ref}: no such registered version ({str(exc).splitlines()[0]})") from None


def inference_service(params: Params, version, uri: str, canary: bool) -> dict:
    """The manifest (a dict) serving ``version`` (an MLflow ModelVersion) from ``uri``."""
    cfg = params.kserve
    served_as = f"{version.name}/{version.version}"
    env = [{"name": STORAGE_ENV, "value": uri}, {"name": MODEL_ENV, "value": served_as}]
    if cfg.records:
        env.append({"name": RECORDS_ENV, "value": cfg.records})
    container = {
        "name": CONTAINER_NAME,
        "image": cfg.image,
        "args": [f"--model_name={cfg.name}", f"--model_dir={MODEL_MOUNT}", f"--http_port={cfg.port}"],
        "env": env,
        "ports": [{"containerPort": cfg.port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
            "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
        },
    }
    predictor = {
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "scaleMetric": cfg.scale_metric,
        "scaleTarget": cfg.scale_target,
        "containers": [container],
    }
    if cfg.service_account:
        predictor["serviceAccountName"] = cfg.service_account
    if canary:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    metadata = {
        "name": cfg.name,
        "labels": {"app.kubernetes.io/name": "boneage", "boneage.io/registered-model": version.name},
        "annotations": {"boneage.io/version": served_as, "boneage.io/mlflow-run": version.run_id or ""},
    }
    if cfg.namespace:
        metadata["namespace"] = cfg.namespace
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata, "spec": {"predictor": predictor}}


def write_manifest(params: Params, name: str, ref: str, out: Path, canary: bool = False) -> tuple[Path, dict]:
    """Write the InferenceService YAML for registered version ``name``@``ref``; its path and content."""
    import mlflow

    from boneage.tracking import connect

    connect(params)
    client = mlflow.MlflowClient()
    version = find_version(client, name, ref)
    uri = storage_uri(client.get_model_version_download_uri(name, version.version), params.kserve.artifact_destination)
    manifest = inference_service(params, version, uri, canary)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out, manifest
