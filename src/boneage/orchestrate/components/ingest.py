from kfp.dsl import Dataset, Markdown, Output


def ingest(params_yaml: str, source_uri: str, data_version: str, dataset: Output[Dataset], summary: Output[Markdown]):
    """Validate the labels and images at source_uri (folder, .zip or gs://), quarantine bad rows,
    split, and bundle the accepted images into the dataset artifact.

    data_version (for example the DVC hash of the data) is unused by the step itself: it is part of
    the cache key, so that new data at the same URI is not served from the cache."""
    from boneage.orchestrate import kfp_steps

    outcome = kfp_steps.ingest(kfp_steps.load(params_yaml, {}), source_uri, dataset.path)
    outcome.write_markdown(summary.path)
    dataset.metadata.update({**outcome.metadata, "data_version": data_version})
