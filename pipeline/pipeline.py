"""The Kubeflow pipeline: ingest -> preprocess -> train -> evaluate -> register.

``build(params)`` returns the pipeline function. Its defaults come from params.yaml, and the
choices one makes per run (data, image size, epochs, backbone, GPUs, MLflow) are pipeline
parameters. The whole params.yaml travels, as JSON, in the ``params_yaml`` parameter, so every step sees the
same typed config as `dvc repro` does. Compile, run and submit with `boneage pipeline ...`.
"""

import json

from kfp import dsl, kubernetes

import components
from boneage.config import Params

# Where google-cloud-storage finds a mounted service-account key (when kfp.gcs_secret is set).
GCS_KEY_DIR = "/var/secrets/google"
GCS_KEY_FILE = "key.json"


def _sized(task, params: Params, step: str):
    """The CPU step's requests (kfp.step_resources)."""
    size = params.kfp.step_resources[step]
    return task.set_cpu_request(size.cpu).set_memory_request(size.memory)


def _network_step(task, params: Params, retries: int | None = None):
    """Retries with backoff, and the credentials for GCS and MLflow."""
    cfg = params.kfp
    task.set_retry(cfg.retries if retries is None else retries, backoff_duration=cfg.retry_backoff, backoff_factor=2)
    if cfg.mlflow_secret:
        kubernetes.use_secret_as_env(task, cfg.mlflow_secret.name, cfg.mlflow_secret.keys_to_env, optional=True)
    if cfg.gcs_secret:
        kubernetes.use_secret_as_volume(task, cfg.gcs_secret, mount_path=GCS_KEY_DIR)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_DIR}/{GCS_KEY_FILE}")
    return task


def build(params: Params):
    cfg = params.kfp
    steps = components.build(cfg.image, cfg.cpu_image)
    # One line of JSON (which is YAML): KFP copies defaults into a comment header that a multi-line
    # value would break.
    params_text = json.dumps(params.model_dump(mode="json"), sort_keys=True)

    @dsl.pipeline(
        name=cfg.pipeline_name,
        description="Pediatric bone age from hand radiographs: ingest, preprocess, train, evaluate, register",
    )
    def boneage_pipeline(
        source_uri: str = params.data.source,
        data_version: str = "",
        image_size: int = params.preprocess.image_size,
        epochs: int = params.train.epochs,
        backbone: str = params.model.backbone,
        gpu_count: int = cfg.gpu_count,
        gpu_type: str = cfg.gpu_type,
        mlflow_tracking_uri: str = "",
        experiment: str = params.mlflow.experiment,
        params_yaml: str = params_text,
    ):
        ingest = steps.ingest(params_yaml=params_yaml, source_uri=source_uri, data_version=data_version)
        _sized(_network_step(ingest, params), params, "ingest").set_display_name("ingest")

        preprocess = steps.preprocess(params_yaml=params_yaml, image_size=image_size, raw=ingest.outputs["dataset"])
        _sized(preprocess, params, "preprocess").set_display_name("preprocess")

        train = steps.train(
            params_yaml=params_yaml,
            image_size=image_size,
            epochs=epochs,
            backbone=backbone,
            mlflow_tracking_uri=mlflow_tracking_uri,
            experiment=experiment,
            data=preprocess.outputs["tfrecords"],
        )
        # A retried training pod resumes from the checkpoint in its model artifact.
        _network_step(train, params, retries=1).set_display_name("train")
        train.set_cpu_request(cfg.train_cpu).set_memory_request(cfg.train_memory)
        train.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
        for label, value in cfg.gpu_node_selector.items():
            kubernetes.add_node_selector(train, label_key=label, label_value=value)
        for tol in cfg.gpu_tolerations:
            kubernetes.add_toleration(train, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
        train.set_caching_options(enable_caching=cfg.cache_training)

        evaluate = steps.evaluate(
            params_yaml=params_yaml,
            image_size=image_size,
            mlflow_tracking_uri=mlflow_tracking_uri,
            experiment=experiment,
            mlflow_run_id=train.outputs["Output"],
            data=preprocess.outputs["tfrecords"],
            model=train.outputs["model"],
        )
        _sized(_network_step(evaluate, params), params, "evaluate").set_display_name("evaluate")

        # The registry decision depends on the champion at the time: never served from the cache.
        register = steps.register(
            params_yaml=params_yaml,
            source_uri=source_uri,
            mlflow_tracking_uri=mlflow_tracking_uri,
            experiment=experiment,
            mlflow_run_id=train.outputs["Output"],
            model=train.outputs["model"],
            evaluation=evaluate.outputs["evaluation"],
        )
        _sized(_network_step(register, params), params, "register").set_display_name("register")
        register.set_caching_options(enable_caching=False)

    return boneage_pipeline
