from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def register(
    params_yaml: str,
    source_uri: str,
    mlflow_tracking_uri: str,
    experiment: str,
    mlflow_run_id: str,
    model: Input[Model],
    evaluation: Input[Dataset],
    decision: Output[Artifact],
    summary: Output[Markdown],
) -> str:
    """Register the model in MLflow; it becomes `champion` only if it beats the current one.
    Returns the alias it got. The source decides the registered name: synthetic data never
    registers under the name of models trained on real films."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(
        params_yaml, {"data.source": source_uri, "mlflow.tracking_uri": mlflow_tracking_uri, "mlflow.experiment": experiment}
    )
    outcome = kfp_steps.register(params, model.path, evaluation.path, decision.path, mlflow_run_id)
    outcome.write_markdown(summary.path)
    decision.metadata.update(outcome.metadata)
    return outcome.metadata["alias"]
