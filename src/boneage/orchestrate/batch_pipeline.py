"""The batch-scoring Kubeflow pipeline: a worklist on GCS scored by a registered model.

    batch_split -> ParallelFor(batch_score, one CPU node per shard) -> batch_merge

``build_batch(params)`` returns the pipeline function; its parameters are the worklist, the model
(an MLflow model URI such as models:/boneage@champion, or a gs:// folder of a model's files), where
the scored worklist and its summary go, the shard size and MLflow. Scoring steps are retried with
backoff (a shard is scored whole or again: its output is one artifact), and the merge counts every
row of the worklist, so a film is never dropped without being named. Compile and run it with
`boneage pipeline compile --batch` and `boneage pipeline run-local --batch`.
"""

import json

from kfp import dsl

from boneage.config import Params
from boneage.orchestrate import components
from boneage.orchestrate.pipeline import network_step


def build_batch(params: Params):
    cfg, steps = params.batch, components.build(params.kfp.image, params.kfp.cpu_image)
    params_text = json.dumps(params.model_dump(mode="json"), sort_keys=True)

    @dsl.pipeline(name=cfg.pipeline_name, description="Score a worklist of hand radiographs with a registered boneage model")
    def boneage_batch(
        worklist_uri: str,
        out_uri: str,
        model_uri: str = f"models:/{params.mlflow.registered_model}@champion",
        shard_films: int = cfg.shard_films,
        mlflow_tracking_uri: str = "",
        experiment: str = params.mlflow.experiment,
        params_yaml: str = params_text,
    ):
        split = steps.batch_split(params_yaml=params_yaml, worklist_uri=worklist_uri, shard_films=shard_films)
        network_step(split, params).set_display_name("split").set_caching_options(enable_caching=False)
        with dsl.ParallelFor(split.outputs["Output"], name="shards") as shard:
            score = steps.batch_score(
                params_yaml=params_yaml,
                model_uri=model_uri,
                mlflow_tracking_uri=mlflow_tracking_uri,
                shard=shard,
                shards=split.outputs["shards"],
            )
            network_step(score, params).set_display_name("score")
            score.set_cpu_request(cfg.shard_cpu).set_memory_request(cfg.shard_memory).set_caching_options(enable_caching=False)
        merge = steps.batch_merge(
            params_yaml=params_yaml,
            worklist_uri=worklist_uri,
            model_uri=model_uri,
            out_uri=out_uri,
            mlflow_tracking_uri=mlflow_tracking_uri,
            experiment=experiment,
            scored_shards=dsl.Collected(score.outputs["scored"]),
        )
        network_step(merge, params).set_display_name("merge").set_caching_options(enable_caching=False)

    return boneage_batch
