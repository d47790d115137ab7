from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    params_yaml: str,
    image_size: int,
    mlflow_tracking_uri: str,
    experiment: str,
    mlflow_run_id: str,
    data: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """MAE and friends on validation and test, overall, by sex and by age band; plots and
    metrics go to the MLflow run of the training step."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(
        params_yaml,
        {"preprocess.image_size": image_size, "mlflow.tracking_uri": mlflow_tracking_uri, "mlflow.experiment": experiment},
    )
    outcome = kfp_steps.evaluate(params, data.path, model.path, evaluation.path, mlflow_run_id)
    outcome.write_markdown(summary.path)
    evaluation.metadata.update(outcome.metadata)
    for name, value in outcome.metrics.items():
        metrics.log_metric(name, value)
