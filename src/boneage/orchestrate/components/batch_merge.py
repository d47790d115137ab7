from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def batch_merge(
    params_yaml: str,
    worklist_uri: str,
    model_uri: str,
    out_uri: str,
    mlflow_tracking_uri: str,
    experiment: str,
    scored_shards: Input[list[Dataset]],
    merged: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """Put the shards' rows back in worklist order, count every row of the worklist (a row no shard
    returned fails the step, after the summary says which), write the scored worklist and its
    summary to `out_uri` and log one MLflow run; returns its id."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(params_yaml, {"mlflow.tracking_uri": mlflow_tracking_uri, "mlflow.experiment": experiment})
    outcome = kfp_steps.batch_merge(params, worklist_uri, model_uri, [s.path for s in scored_shards], out_uri)
    outcome.write_markdown(summary.path)
    merged.metadata.update(outcome.metadata)
    for name, value in outcome.metrics.items():
        metrics.log_metric(name, value)
    return outcome.run_id
