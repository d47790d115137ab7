"""Compile, run locally and submit the Kubeflow pipeline (boneage.orchestrate.pipeline)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from boneage.config import Params
from boneage.contracts import THREAD_VARIABLES
from boneage.data.sources import resolve_source
from boneage.errors import BoneageError
from boneage.orchestrate.batch_pipeline import build_batch
from boneage.orchestrate.pipeline import build

DEFAULT_PACKAGE = Path("build/boneage-pipeline.yaml")
DEFAULT_BATCH_PACKAGE = Path("build/boneage-batch-pipeline.yaml")
LOCAL_ROOT = Path("local_outputs")


def compile_pipeline(params: Params, package_path: Path = DEFAULT_PACKAGE, batch: bool = False) -> Path:
    """The training pipeline (or with ``batch`` the batch-scoring one) compiled to a YAML package."""
    from kfp import compiler

    package_path = Path(package_path)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_batch(params) if batch else build(params), package_path=str(package_path))
    return package_path


@dataclass
class LocalRun:
    outputs: dict
    pipeline_root: Path
    wall_seconds: float
    # Each step's own work (kfp_steps' work_seconds), read back from kfp.local's executor outputs.
    step_seconds: dict[str, float] = field(default_factory=dict)
    # And what each step used: peak memory and CPU time per second of work.
    step_usage: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def overhead_seconds(self) -> float:
        """What orchestration adds: process starts, imports, artifact copies, kfp.local's own work."""
        return self.wall_seconds - sum(self.step_seconds.values())


def step_usage(run_dir: Path) -> dict[str, dict[str, float]]:
    """{task: {work_seconds, peak_memory_mb, cpu_seconds_per_second}} from the executor_output.json
    that kfp.local leaves in each task's folder (what kfp_steps records on each step's artifact)."""
    keys = ("work_seconds", "peak_memory_mb", "cpu_seconds_per_second")
    usage = {}
    for output_file in sorted(Path(run_dir).glob("**/executor_output.json")):
        outputs = json.loads(output_file.read_text()).get("artifacts", {})
        for artifact_list in outputs.values():
            for artifact in artifact_list.get("artifacts", []):
                metadata = artifact.get("metadata", {})
                if "work_seconds" in metadata:
                    usage[_task_name(output_file.parent.relative_to(run_dir))] = {
                        k: float(metadata[k]) for k in keys if k in metadata
                    }
    return usage


def _task_name(folder: Path) -> str:
    """A task's name from its folder: ``member`` under ``for-loop-1-iteration-2`` is ``member@2``."""
    loops = [part.rsplit("-", 1)[-1] for part in folder.parts[:-1] if "-iteration-" in part]
    return folder.name + "".join(f"@{i}" for i in loops)


def step_work_seconds(run_dir: Path) -> dict[str, float]:
    """{task: work_seconds}: each step's own work, without process starts, imports and copies."""
    return {task: u["work_seconds"] for task, u in step_usage(run_dir).items()}


def _artifact_path(value) -> str:
    return getattr(value, "path", None) or str(value)


RUNNERS = ("subprocess", "docker")
# What a step in a container needs from this shell's environment: the MLflow server's credentials,
# the GCS emulator (`boneage services env`) and the CPU threads the caller gave TensorFlow (a step
# in a container then computes as the same step run here does: thread count changes the order of
# float sums, and a short training amplifies it). Nothing else of the host's environment goes in.
CONTAINER_ENV_PASSTHROUGH = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "STORAGE_EMULATOR_HOST",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    *THREAD_VARIABLES,
)


def docker_runner(image: str, source: str):
    """kfp.local's DockerRunner for the project's image. Containers share the host's network, so
    services on 127.0.0.1 (MLflow, the GCS emulator) are the same address inside; they run as this
    user, so the artifacts they write under the pipeline root are this user's; a local data source is
    mounted read-only at its own path."""
    import os

    from kfp import local

    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(image)
    except ImportError:
        raise BoneageError("the docker runner needs the `docker` Python package (make setup installs it)") from None
    except Exception as exc:  # docker.errors.DockerException and friends: no daemon, or no image
        if type(exc).__name__ == "ImageNotFound":
            raise BoneageError(f"image {image} not found here; build it with `make image` (or pass --image)") from None
        raise BoneageError(f"Docker is not available ({type(exc).__name__}); start it: docker/ensure-docker.sh") from None
    finally:
        if "client" in locals():
            client.close()
    mounts = [] if "://" in source else [docker.types.Mount(source, source, type="bind", read_only=True)]
    environment = {"HOME": "/tmp", **{k: os.environ[k] for k in CONTAINER_ENV_PASSTHROUGH if os.environ.get(k)}}
    return local.DockerRunner(network_mode="host", user=f"{os.getuid()}:{os.getgid()}", environment=environment, mounts=mounts)


def run_local(
    params: Params,
    arguments: dict | None = None,
    pipeline_root: Path = LOCAL_ROOT,
    enable_caching: bool = False,
    runner: str = "subprocess",
    image: str | None = None,
    batch: bool = False,
) -> LocalRun:
    """The whole pipeline with kfp.local, with artifacts as folders under ``pipeline_root``: the same
    components as on a cluster, each step in this Python environment (``subprocess``) or in its own
    container of the project's ``image`` (``docker``; every step, training included, in that one
    CPU image). ``batch``: the batch-scoring pipeline (its arguments name the worklist, the model
    and where the outputs go)."""
    from kfp import local

    if runner not in RUNNERS:
        raise BoneageError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    arguments = dict(arguments or {})
    if batch:
        missing = [k for k in ("worklist_uri", "out_uri") if not arguments.get(k)]
        if missing:
            raise BoneageError(f"the batch pipeline needs {' and '.join(missing)} (--worklist, --out)")
        source = arguments["worklist_uri"]
    else:
        source = arguments.get("source_uri") or params.data.source
        if "://" not in source:
            # A local folder (the embedded default is generated here, once) goes to ingest as an absolute path.
            source = str(Path(resolve_source(params, source)).resolve())
        arguments["source_uri"] = source
    task_runner, params = _task_runner(params, arguments, runner, image, source)
    pipeline = build_batch(params) if batch else build(params, local=True)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True, enable_caching=enable_caching)
    earlier = set(root.iterdir()) if root.is_dir() else set()
    start = time.monotonic()
    try:
        task = pipeline(**arguments)
    except RuntimeError as exc:  # kfp.local reports a failed task as RuntimeError; its log is above
        raise BoneageError(f"the local pipeline run failed: {exc}") from None
    wall = time.monotonic() - start
    this_run = [d for d in root.iterdir() if d.is_dir() and d not in earlier]
    return LocalRun(
        outputs=dict(getattr(task, "outputs", {}) or {}),
        pipeline_root=root,
        wall_seconds=wall,
        step_seconds=step_work_seconds(this_run[0]) if len(this_run) == 1 else {},
        step_usage=step_usage(this_run[0]) if len(this_run) == 1 else {},
    )


def _task_runner(params: Params, arguments: dict, runner: str, image: str | None, source: str):
    """kfp.local's runner, and the params the pipeline is built with (the docker runner runs every
    step in one image and passes credentials from this environment, not Kubernetes secrets)."""
    from kfp import local

    if runner != "docker":
        return local.SubprocessRunner(use_venv=False), params
    from boneage.tracking import tracking_uri

    store = arguments.get("mlflow_tracking_uri") or tracking_uri(params)
    if not store.startswith(("http://", "https://")):
        raise BoneageError(
            f"the docker runner logs to an MLflow server, and {store} is not one (each step's container has "
            'its own files); start one with `make services` and `eval "$(boneage services env)"`, or pass --mlflow-uri'
        )
    image = image or params.kfp.cpu_image
    local_kfp = params.kfp.model_copy(update={"image": image, "cpu_image": image, "gcs_secret": None})
    return docker_runner(image, source), params.model_copy(update={"kfp": local_kfp})


def _kfp_error(host: str, exc: Exception | None = None, status: int | None = None) -> BoneageError:
    status = status or getattr(exc, "status", None)
    if status in (401, 403):
        return BoneageError(
            f"{host}: KFP refused the credentials (HTTP {status}); pass --token or set "
            "KF_PIPELINES_SA_TOKEN_PATH, or log in to the cluster's auth proxy"
        )
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:300]
    return BoneageError(
        f"{host}: cannot reach the Kubeflow Pipelines API ({type(exc).__name__}: {reason}); "
        "check --host (e.g. http://localhost:8080 after `kubectl port-forward "
        "-n kubeflow svc/ml-pipeline-ui 8080:80`)"
    )


@dataclass
class Submission:
    run_id: str
    run_url: str
    experiment_id: str
    pipeline_id: str
    version_id: str


def submit(
    params: Params,
    host: str,
    package_path: Path,
    arguments: dict | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    timeout_seconds: float = 10.0,
) -> Submission:
    """Upload the compiled pipeline as a new version (creating the pipeline the first time), start a
    run in the experiment (created if missing) and return its URL."""
    import kfp
    import requests
    import urllib3

    package_path = Path(package_path)
    if not package_path.is_file():
        raise BoneageError(f"{package_path}: no compiled pipeline (run `boneage pipeline compile` first)")
    host = host.rstrip("/")
    # Probe first: kfp.Client retries a dead host for minutes before it says anything.
    try:
        probe = requests.get(
            f"{host}/apis/v2beta1/healthz", timeout=timeout_seconds, headers={"Authorization": f"Bearer {token}"} if token else {}
        )
    except requests.RequestException as exc:
        raise _kfp_error(host, exc) from None
    if probe.status_code in (401, 403):
        raise _kfp_error(host, status=probe.status_code)

    name = params.kfp.pipeline_name
    experiment = experiment or params.mlflow.experiment
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=namespace)
        exp = client.create_experiment(experiment, namespace=namespace)  # returns the existing one if present
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            uploaded = client.upload_pipeline(str(package_path), pipeline_name=name, namespace=namespace)
            pipeline_id = uploaded.pipeline_id
        version = client.upload_pipeline_version(
            str(package_path), pipeline_version_name=f"{name}-{stamp}", pipeline_id=pipeline_id
        )
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{name}-{stamp}",
            params=arguments or {},
            pipeline_id=pipeline_id,
            version_id=version.pipeline_version_id,
        )
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise _kfp_error(host, exc) from None
    except Exception as exc:  # kfp_server_api.ApiException and friends carry an HTTP status
        if getattr(exc, "status", None) is not None:
            raise _kfp_error(host, exc) from None
        raise
    return Submission(
        run.run_id, f"{host}/#/runs/details/{run.run_id}", exp.experiment_id, pipeline_id, version.pipeline_version_id
    )


def describe(submission: Submission) -> str:
    return json.dumps(submission.__dict__, indent=2)
