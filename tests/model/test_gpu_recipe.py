"""The GPU recipe (`rsna-gpu`) at its real size, run here on the CPU for a few steps: the 40
full-resolution real samples at 384 px, InceptionV3 through the ImageNet path with a stand-in for
Keras' weights file (its name, format and layers; random values), the frozen warm-up, fine-tuning,
plateau decay, early stopping and precise BatchNorm in passes, and the precision put back after."""

from __future__ import annotations

from pathlib import Path

import keras
import pandas as pd
import pytest
import tensorflow as tf

from boneage.config import load_params
from boneage.training import train as train_module
from boneage.training.precision import ONEDNN_BF16_OPTION, choose, cpu_has_native_bf16
from tests.conftest import REPO, RSNA_SAMPLE, require

# A few steps of the recipe: one warm-up epoch, then fine-tuning that can never improve on its first
# epoch (an improvement must beat 1000 months), so that plateau decay fires after one epoch without
# improvement and early stopping after two: the run stops after epoch 4 of 6.
FEW_STEPS = {
    "train.batch_size": 4,
    "train.steps_per_epoch": 2,
    "train.epochs": 6,
    "train.warmup_epochs": 1,
    "train.reduce_lr_patience": 1,
    "train.early_stopping_patience": 2,
    "train.min_improvement_months": 1000.0,
    "train.bn_recalibration_images": 8,
    "train.bn_recalibration_batch_size": 4,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, monkeypatch_module):
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.model.network import write_stand_in_weights
    from boneage.training.train import train

    tmp = tmp_path_factory.mktemp("gpu-recipe")
    monkeypatch_module.setenv("KERAS_HOME", str(tmp / "keras"))
    weights = write_stand_in_weights("inception_v3", tmp / "keras")
    params = load_params(
        REPO / "params.yaml",
        {
            "preset": "rsna-gpu",
            "data.source": str(require(RSNA_SAMPLE)),
            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlruns.db",
            "mlflow.artifact_root": str(tmp / "artifacts"),
            "mlflow.log_system_metrics": False,
            **FEW_STEPS,
        },
    )
    assert params.model.weights == "imagenet" and params.preprocess.image_size == 384
    ingested = ingest(params, tmp / "ingest")
    preprocess(params, ingested.manifest_path, tmp / "pre")
    passes = []

    def counted(model, batches):  # the real re-estimate, counting its passes
        batches = list(batches)
        passes.append(len(batches))
        return recalibrate(model, batches)

    recalibrate = train_module.recalibrate_batchnorm
    monkeypatch_module.setattr(train_module, "recalibrate_batchnorm", counted)
    policy_before = keras.mixed_precision.global_policy().name
    result = train(params, tmp / "pre", tmp / "models")
    return {
        "params": params,
        "result": result,
        "history": pd.read_csv(tmp / "models" / "history.csv"),
        "passes": passes,
        "policy_before": policy_before,
        "weights": weights,
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
def test_the_gpu_recipe_warms_up_frozen_then_fine_tunes(run):
    history, params = run["history"], run["params"]
    assert list(history["phase"]) == ["warmup", "finetune", "finetune", "finetune"]
    assert history["learning_rate"].iloc[0] == pytest.approx(params.train.learning_rate)
    assert history["learning_rate"].iloc[1] == pytest.approx(params.train.fine_tune_learning_rate)


@pytest.mark.slow
def test_plateau_decay_then_early_stopping_end_the_gpu_recipe(run):
    history, params = run["history"], run["params"]
    # Epoch 3 did not improve on epoch 2: the rate halves for epoch 4; epoch 4 neither: it stops there.
    assert history["learning_rate"].iloc[3] == pytest.approx(params.train.reduce_lr_factor * history["learning_rate"].iloc[2])
    assert run["result"].epochs_run == 4 < params.train.epochs


@pytest.mark.slow
def test_precise_batchnorm_runs_in_passes_each_epoch(run):
    params = run["params"].train
    assert run["passes"] == [params.bn_recalibration_images // params.bn_recalibration_batch_size] * 4


@pytest.mark.slow
def test_the_imagenet_path_loads_keras_file_and_says_it_was_a_stand_in(run):
    import mlflow

    tags = mlflow.MlflowClient(run["params"].mlflow.tracking_uri).get_run(run["result"].run_id).data.tags
    assert Path(run["weights"]).name == "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert tags["provenance.backbone_weights"] == "stand-in"


@pytest.mark.slow
def test_training_precision_is_put_back_after_the_gpu_recipe(run):
    import mlflow

    tags = mlflow.MlflowClient(run["params"].mlflow.tracking_uri).get_run(run["result"].run_id).data.tags
    assert tags["boneage.training_precision"] == choose(
        "auto", bool(tf.config.list_physical_devices("GPU")), cpu_has_native_bf16()
    )
    assert keras.mixed_precision.global_policy().name == run["policy_before"] == "float32"
    assert not tf.config.optimizer.get_experimental_options().get(ONEDNN_BF16_OPTION, False)
