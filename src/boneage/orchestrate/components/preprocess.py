from kfp.dsl import Dataset, Input, Markdown, Output


def preprocess(params_yaml: str, image_size: int, raw: Input[Dataset], tfrecords: Output[Dataset], summary: Output[Markdown]):
    """Crop each image to the hand, normalise it and write sharded TFRecords."""
    from boneage.orchestrate import kfp_steps

    params = kfp_steps.load(params_yaml, {"preprocess.image_size": image_size})
    outcome = kfp_steps.preprocess(params, raw.path, tfrecords.path)
    outcome.write_markdown(summary.path)
    tfrecords.metadata.update(outcome.metadata)
