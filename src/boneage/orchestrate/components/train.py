from kfp.dsl import Dataset, Input, Markdown, Model, Output


def train(
    params_yaml: str,
    image_size: int,
    epochs: int,
    backbone: str,
    mlflow_tracking_uri: str,
    experiment: str,
    data: Input[Dataset],
    model: Output[Model],
    summary: Output[Markdown],
) -> str:
    """Train (resuming from the artifact's checkpoint after a retry); returns the MLflow run id that
    the evaluate and register steps log into."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(
        params_yaml,
        {
            "preprocess.image_size": image_size,
            "train.epochs": epochs,
            "model.backbone": backbone,
            "mlflow.tracking_uri": mlflow_tracking_uri,
            "mlflow.experiment": experiment,
        },
    )
    outcome = kfp_steps.train(params, data.path, model.path)
    outcome.write_markdown(summary.path)
    model.metadata.update(outcome.metadata)
    return outcome.run_id
