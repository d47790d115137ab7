from kfp.dsl import Dataset, Input, Markdown, Output


def batch_score(
    params_yaml: str,
    model_uri: str,
    mlflow_tracking_uri: str,
    shard: str,
    shards: Input[Dataset],
    scored: Output[Dataset],
    summary: Output[Markdown],
):
    """Score one shard with the registered model (one iteration of the ParallelFor, on a CPU node):
    one output row per input row, a film that cannot be scored a rejected row with its reason."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(params_yaml, {"mlflow.tracking_uri": mlflow_tracking_uri})
    outcome = kfp_steps.batch_score(params, model_uri, shards.path, shard, scored.path)
    outcome.write_markdown(summary.path)
    scored.metadata.update(outcome.metadata)
