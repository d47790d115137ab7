"""The model: shapes, the sex-input path, weight loading without silent fallback, presets."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from boneage.config import ModelConfig, Params, apply_preset
from boneage.errors import BoneageError
from boneage.model.network import build_backbone, build_model, load_predict_model, recalibrate_batchnorm

SIZE = 75  # InceptionV3's smallest input keeps these tests fast


def batch(n=4, male=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (n, SIZE, SIZE, 1), dtype=np.uint8), "male": np.full((n, 1), male, np.float32)}


def test_shapes_and_month_scale():
    m = build_model(ModelConfig(weights="none"), SIZE, target_mean=120.0, target_sd=40.0)
    z = m.train.predict_on_batch(batch())
    months = m.predict.predict_on_batch(batch())
    assert z.shape == (4, 1) and months.shape == (4, 1)
    np.testing.assert_allclose(months, z * 40.0 + 120.0, rtol=1e-4, atol=1e-3)
    assert set(m.predict.input) == {"image", "male"}


def test_sex_changes_the_prediction_only_when_used():
    with_sex = build_model(ModelConfig(weights="none", use_sex=True), SIZE, 0.0, 1.0).predict
    x_m, x_f = batch(male=1.0), batch(male=0.0)
    assert not np.allclose(with_sex.predict_on_batch(x_m), with_sex.predict_on_batch(x_f))
    no_sex = build_model(ModelConfig(weights="none", use_sex=False), SIZE, 0.0, 1.0).predict
    np.testing.assert_allclose(no_sex.predict_on_batch(x_m), no_sex.predict_on_batch(x_f))


def test_batchnorm_momentum_is_applied():
    backbone = build_backbone(ModelConfig(weights="none", batchnorm_momentum=0.9), SIZE)
    moms = {layer.momentum for layer in backbone.layers if layer.__class__.__name__ == "BatchNormalization"}
    assert moms == {0.9}


def test_imagenet_offline_is_a_clear_error_not_a_fallback(tmp_path):
    # Keras reads KERAS_HOME when it is imported, so the empty cache is set in a fresh process; a
    # proxy on a closed port makes the download fail on any machine, networked or not.
    script = (
        "from boneage.config import ModelConfig\n"
        "from boneage.errors import BoneageError\n"
        "from boneage.model.network import build_backbone\n"
        "try:\n"
        f"    build_backbone(ModelConfig(weights='imagenet'), {SIZE})\n"
        "except BoneageError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    dead_proxy = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "KERAS_HOME": str(tmp_path / "keras"),
        "HTTPS_PROXY": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "https_proxy": dead_proxy,
        "http_proxy": dead_proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, f"no clear error (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    text = proc.stdout
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in text
    assert str(tmp_path / "keras" / "models") in text, "the error must point at the cache Keras really reads"
    assert "model.weights: none" in text


def test_missing_weights_file_is_a_clear_error():
    with pytest.raises(BoneageError, match="is not a file"):
        build_backbone(ModelConfig(weights="/nonexistent/weights.h5"), SIZE)


def test_weights_from_a_path_are_really_loaded(tmp_path):
    source = build_backbone(ModelConfig(weights="none"), SIZE)
    path = tmp_path / "inception.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(ModelConfig(weights=str(path)), SIZE)
    for a, b in zip(source.weights[:5], loaded.weights[:5], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_b0"])
def test_other_backbones_build(backbone):
    m = build_model(ModelConfig(backbone=backbone, weights="none"), 64, 100.0, 30.0)
    assert m.predict.predict_on_batch(
        {"image": np.zeros((2, 64, 64, 1), np.uint8), "male": np.ones((2, 1), np.float32)}
    ).shape == (2, 1)


def test_seed_preset_is_the_seed_recipe():
    p = Params.model_validate(apply_preset({"preset": "seed"}))
    assert p.preprocess.image_size == 224 and p.preprocess.crop == "none"
    assert not p.model.use_sex and p.model.pooling == "flatten" and p.model.head_units == (512,)
    assert p.train.loss == "mse" and not p.train.augment.enabled
    m = build_model(p.model.model_copy(update={"weights": "none"}), 80, 0.0, 1.0)
    assert m.predict.get_layer("pool").__class__.__name__ == "Flatten"
    assert m.predict.get_layer("head_0").units == 512


def test_saved_model_round_trips_in_safe_mode(tmp_path):
    m = build_model(ModelConfig(weights="none"), SIZE, 100.0, 30.0)
    path = tmp_path / "model.keras"
    m.predict.save(path)
    again = load_predict_model(path)
    np.testing.assert_allclose(again.predict_on_batch(batch()), m.predict.predict_on_batch(batch()), rtol=1e-5, atol=1e-4)


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BoneageError, match="not a loadable Keras model"):
        load_predict_model(bad)


def test_a_model_carrying_code_is_refused_by_safe_mode(tmp_path):
    import keras

    inputs = keras.Input((2,))
    # A Lambda layer stores Python bytecode in the file: loading it would run someone's code.
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(BoneageError, match="not a loadable Keras model"):
        load_predict_model(path)


def test_precise_batchnorm_pools_every_batch_like_one_large_batch():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    batches = [
        np.random.default_rng(int(level)).normal(level, 1.0 + level / 10, (4, 2)).astype(np.float32)
        for level in (0.0, 10.0, 50.0)
    ]
    recalibrate_batchnorm(model, iter(batches))
    bn = model.layers[-1]
    everything = np.concatenate(batches)
    np.testing.assert_allclose(bn.moving_mean.numpy(), everything.mean(axis=0), rtol=1e-5)
    # The pooled variance includes the spread between the batches (levels 0, 10, 50), not only within.
    np.testing.assert_allclose(bn.moving_variance.numpy(), everything.var(axis=0), rtol=1e-4)
    assert bn.momentum == 0.9  # restored
