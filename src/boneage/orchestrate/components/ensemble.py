from kfp.dsl import Dataset, Input, Markdown, Model, Output


def ensemble(
    params_yaml: str,
    members: list,
    image_size: int,
    mlflow_tracking_uri: str,
    experiment: str,
    data: Input[Dataset],
    member_models: Input[list[Model]],
    model: Output[Model],
    summary: Output[Markdown],
) -> str:
    """Combine the members that finished (at least ensemble.min_members) into one model with its
    own bias correction, interval and out-of-distribution check; returns its MLflow run id, the
    parent of the members' runs, that evaluate and register log into."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(
        params_yaml,
        {
            "ensemble.members": members,
            "preprocess.image_size": image_size,
            "mlflow.tracking_uri": mlflow_tracking_uri,
            "mlflow.experiment": experiment,
        },
    )
    outcome = kfp_steps.ensemble(params, [m.path for m in member_models], data.path, model.path)
    outcome.write_markdown(summary.path)
    model.metadata.update(outcome.metadata)
    return outcome.run_id
