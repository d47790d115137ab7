from kfp.dsl import Dataset, Input, Markdown, Model, Output


def member(
    params_yaml: str,
    members: list,
    member: dict,
    image_size: int,
    epochs: int,
    mlflow_tracking_uri: str,
    experiment: str,
    data: Input[Dataset],
    model: Output[Model],
    summary: Output[Markdown],
) -> str:
    """Train one ensemble member (one iteration of the ParallelFor, on its own GPU node). A failed
    member records its reason in its model artifact instead of failing the run: the ensemble step
    decides whether enough finished. Returns the member's MLflow run id ("" when it failed)."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(
        params_yaml,
        {
            "ensemble.members": members,
            "preprocess.image_size": image_size,
            "train.epochs": epochs,
            "mlflow.tracking_uri": mlflow_tracking_uri,
            "mlflow.experiment": experiment,
        },
    )
    outcome = kfp_steps.member(params, member["name"], data.path, model.path)
    outcome.write_markdown(summary.path)
    model.metadata.update(outcome.metadata)
    return outcome.run_id
