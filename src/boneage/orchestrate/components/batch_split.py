from kfp.dsl import Dataset, Markdown, Output


def batch_split(
    params_yaml: str, worklist_uri: str, shard_films: int, shards: Output[Dataset], summary: Output[Markdown]
) -> list:
    """Cut a worklist CSV (gs:// or a path the step can read) into shards of about `shard_films`
    rows, each row with its worklist line and its film's absolute location; returns the shards'
    names, which the ParallelFor of `batch_score` runs over."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(params_yaml, {"batch.shard_films": shard_films})
    outcome = kfp_steps.batch_split(params, worklist_uri, shards.path)
    outcome.write_markdown(summary.path)
    shards.metadata.update(outcome.metadata)
    return outcome.metadata["names"]
