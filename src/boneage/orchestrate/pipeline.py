"""The Kubeflow pipeline: ingest -> preprocess -> train -> evaluate -> register; with
``ensemble.members`` in params.yaml: ingest -> preprocess -> ParallelFor(member) -> ensemble ->
evaluate -> register, each member on its own GPU node at the same time.

``build(params)`` returns the pipeline function. Its defaults come from params.yaml, and the
choices one makes per run (data, image size, epochs, backbone, GPUs, MLflow) are pipeline
parameters. The whole params.yaml travels, as JSON, in the ``params_yaml`` parameter, so every step sees the
same typed config as `dvc repro` does. Compile, run and submit with `boneage pipeline ...`.
"""

import json
from types import SimpleNamespace

from kfp import dsl, kubernetes

from boneage.config import Params
from boneage.orchestrate import components

# Where google-cloud-storage finds a mounted service-account key (when kfp.gcs_secret is set).
GCS_KEY_DIR = "/var/secrets/google"
GCS_KEY_FILE = "key.json"


def _sized(task, params: Params, step: str):
    """The CPU step's requests (kfp.step_resources)."""
    size = params.kfp.step_resources[step]
    return task.set_cpu_request(size.cpu).set_memory_request(size.memory)


def network_step(task, params: Params, retries: int | None = None):
    """Retries with backoff, and the credentials for GCS and MLflow."""
    cfg = params.kfp
    task.set_retry(cfg.retries if retries is None else retries, backoff_duration=cfg.retry_backoff, backoff_factor=2)
    if cfg.mlflow_secret:
        kubernetes.use_secret_as_env(task, cfg.mlflow_secret.name, cfg.mlflow_secret.keys_to_env, optional=True)
    if cfg.gcs_secret:
        kubernetes.use_secret_as_volume(task, cfg.gcs_secret, mount_path=GCS_KEY_DIR)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_DIR}/{GCS_KEY_FILE}")
    return task


def _on_gpu_node(task, params: Params, gpu_type, gpu_count):
    """A training step: the train requests, one GPU (of the pipeline's type and count), the GPU
    node pool's selector and tolerations. No other step asks for a GPU."""
    cfg = params.kfp
    task.set_cpu_request(cfg.train_cpu).set_memory_request(cfg.train_memory)
    task.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
    for label, value in cfg.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in cfg.gpu_tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    task.set_caching_options(enable_caching=cfg.cache_training)
    return task


def build(params: Params, local: bool = False):
    """The pipeline function. ``local`` (kfp.local runs): the members' GPU request takes the config's
    type and count rather than the run-time parameters, which kfp.local 2.17 cannot resolve inside a
    ParallelFor ("pipeline input argument 'pipelinechannel--gpu_type' not found"); it ignores
    accelerator requests anyway. A compiled pipeline always takes the run-time parameters."""
    cfg = params.kfp
    steps = components.build(cfg.image, cfg.cpu_image)
    # One line of JSON (which is YAML): KFP copies defaults into a comment header that a multi-line
    # value would break.
    params_text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    # The members are a pipeline parameter (a list of {name, seed, overrides}): a run may change them;
    # whether the pipeline trains members or one model is fixed when it is compiled.
    ensemble_members = [m.model_dump(mode="json") for m in params.ensemble.members]

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
        members: list = ensemble_members,
    ):
        run = SimpleNamespace(**locals())
        data = _data(steps, params, run)
        gpu = (cfg.gpu_type, cfg.gpu_count) if local else (gpu_type, gpu_count)
        model_step = (
            _members_then_ensemble(steps, params, run, data, gpu) if ensemble_members else _train(steps, params, run, data)
        )
        _evaluate_and_register(steps, params, run, data, model_step)

    return boneage_pipeline


def _data(steps, params: Params, run):
    """ingest -> preprocess; the preprocessed TFRecords."""
    ingest = steps.ingest(params_yaml=run.params_yaml, source_uri=run.source_uri, data_version=run.data_version)
    _sized(network_step(ingest, params), params, "ingest").set_display_name("ingest")
    preprocess = steps.preprocess(params_yaml=run.params_yaml, image_size=run.image_size, raw=ingest.outputs["dataset"])
    _sized(preprocess, params, "preprocess").set_display_name("preprocess")
    return preprocess.outputs["tfrecords"]


def _members_then_ensemble(steps, params: Params, run, data, gpu):
    """A ParallelFor of members, each on its own GPU node, then the ensemble of those that finished."""
    with dsl.ParallelFor(run.members, name="members") as member:
        trained = steps.member(
            params_yaml=run.params_yaml,
            members=run.members,
            member=member,
            image_size=run.image_size,
            epochs=run.epochs,
            mlflow_tracking_uri=run.mlflow_tracking_uri,
            experiment=run.experiment,
            data=data,
        )
        # A retried pod resumes from the checkpoint in its artifact; a member whose training keeps
        # failing records why there and ends, so that the others still make an ensemble.
        _on_gpu_node(network_step(trained, params, retries=1), params, *gpu).set_display_name("member")
    ensemble = steps.ensemble(
        params_yaml=run.params_yaml,
        members=run.members,
        image_size=run.image_size,
        mlflow_tracking_uri=run.mlflow_tracking_uri,
        experiment=run.experiment,
        data=data,
        member_models=dsl.Collected(trained.outputs["model"]),
    )
    return _sized(network_step(ensemble, params), params, "ensemble").set_display_name("ensemble")


def _train(steps, params: Params, run, data):
    """One model on a GPU node; a retried training pod resumes from the checkpoint in its artifact."""
    train = steps.train(
        params_yaml=run.params_yaml,
        image_size=run.image_size,
        epochs=run.epochs,
        backbone=run.backbone,
        mlflow_tracking_uri=run.mlflow_tracking_uri,
        experiment=run.experiment,
        data=data,
    )
    return _on_gpu_node(network_step(train, params, retries=1), params, run.gpu_type, run.gpu_count).set_display_name("train")


def _evaluate_and_register(steps, params: Params, run, data, model_step) -> None:
    """evaluate into the model's MLflow run, then register (never cached: the decision depends on
    the champion of the moment)."""
    evaluate = steps.evaluate(
        params_yaml=run.params_yaml,
        image_size=run.image_size,
        mlflow_tracking_uri=run.mlflow_tracking_uri,
        experiment=run.experiment,
        mlflow_run_id=model_step.outputs["Output"],
        data=data,
        model=model_step.outputs["model"],
    )
    _sized(network_step(evaluate, params), params, "evaluate").set_display_name("evaluate")
    register = steps.register(
        params_yaml=run.params_yaml,
        source_uri=run.source_uri,
        mlflow_tracking_uri=run.mlflow_tracking_uri,
        experiment=run.experiment,
        mlflow_run_id=model_step.outputs["Output"],
        model=model_step.outputs["model"],
        evaluation=evaluate.outputs["evaluation"],
    )
    _sized(network_step(register, params), params, "register").set_display_name("register")
    register.set_caching_options(enable_caching=False)
