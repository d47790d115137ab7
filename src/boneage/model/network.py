"""The bone-age regressor: a Keras backbone on the hand image, a small dense embedding of sex,
and a dense head predicting the standardised age; a final rescaling reports months.

The model takes raw uint8 pixels: every normalisation a backbone needs is a layer of the model,
so the saved model is all a server needs (and it loads in Keras safe mode: no Lambda layers).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from boneage.config import ModelConfig
from boneage.contracts import atomic_path
from boneage.errors import BoneageError

IMAGE_INPUT = "image"
SEX_INPUT = "male"
OUTPUT = "boneage"
# An ensemble (boneage.training.ensemble) holds each member as a nested model named with this prefix.
ENSEMBLE_MEMBER_PREFIX = "member_"


@dataclass(frozen=True)
class BackboneSpec:
    factory: str  # name in keras.applications
    weights_file: str  # the file keras.applications fetches for weights="imagenet", include_top=False
    min_size: int
    # How 0..255 RGB becomes this backbone's input: (scale, per-channel offset)
    scale: float
    offset: tuple[float, float, float]


WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
BACKBONES = {
    "inception_v3": BackboneSpec(
        "InceptionV3", "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", 75, 1 / 127.5, (-1.0, -1.0, -1.0)
    ),
    "resnet50": BackboneSpec(
        "ResNet50", "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 32, 1.0, (-103.939, -116.779, -123.68)
    ),
    # EfficientNet and MobileNetV3 carry their own input normalisation and expect 0..255.
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "efficientnetb0_notop.h5", 32, 1.0, (0.0, 0.0, 0.0)),
    "efficientnet_b3": BackboneSpec("EfficientNetB3", "efficientnetb3_notop.h5", 32, 1.0, (0.0, 0.0, 0.0)),
    "small_cnn": BackboneSpec("", "", 32, 1 / 127.5, (-1.0, -1.0, -1.0)),
    "mobilenet_v3_small": BackboneSpec(
        "MobileNetV3Small", "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", 32, 1.0, (0.0, 0.0, 0.0)
    ),
}


def _keras_cache_path(spec: BackboneSpec) -> Path:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return keras_home / "models" / Path(spec.weights_file).name


def resolve_weights(cfg: ModelConfig) -> str | None:
    """The ``weights=`` argument for keras.applications, or a clear error. Never a silent fallback.
    "imagenet" is Keras' own file where a download left it (KERAS_HOME/models/), else Keras downloads it."""
    spec = BACKBONES[cfg.backbone]
    choice = cfg.weights.strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "imagenet":
        cached = _keras_cache_path(spec)
        return str(cached) if cached.is_file() else "imagenet"
    path = Path(choice).expanduser()
    if not path.is_file():
        raise BoneageError(
            f"model.weights: {choice!r} is not a file. Use 'imagenet', 'none', or the path to "
            f"{Path(spec.weights_file).name} (from {WEIGHTS_URL}{spec.weights_file})"
        )
    return str(path)


# An attribute of the weights files `write_stand_in_weights` makes: tests and benchmarks run the
# ImageNet path offline with them, and a model started from one never claims ImageNet weights.
STAND_IN_ATTRIBUTE = "boneage_stand_in"


def write_stand_in_weights(backbone: str, keras_home: Path) -> Path:
    """A stand-in for Keras' ImageNet weights file of ``backbone`` (without its top): the same file
    name, format and layers, random values, marked as a stand-in. For offline tests and benchmarks
    of the ImageNet path only; nothing trained from it is an ImageNet-initialised model."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    spec = BACKBONES[backbone]
    path = Path(keras_home) / "models" / Path(spec.weights_file).name
    path.parent.mkdir(parents=True, exist_ok=True)
    network = getattr(keras.applications, spec.factory)(include_top=False, weights=None)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, network)
        fh.attrs[STAND_IN_ATTRIBUTE] = True
    return path


def weights_origin(cfg: ModelConfig) -> str:
    """What a model's backbone started from, for its provenance: none, imagenet, stand-in (random
    values in Keras' file, see write_stand_in_weights) or the path of a weights file."""
    choice = resolve_weights(cfg)
    if choice is None or choice == "imagenet":
        return choice or "none"
    import h5py

    try:
        with h5py.File(choice, "r") as fh:
            stand_in = bool(fh.attrs.get(STAND_IN_ATTRIBUTE, False))
    except OSError:
        stand_in = False
    if stand_in:
        return "stand-in"
    return "imagenet" if cfg.weights.strip().lower() == "imagenet" else choice


def _imagenet_error(cfg: ModelConfig, exc: Exception) -> BoneageError:
    spec = BACKBONES[cfg.backbone]
    url = WEIGHTS_URL + spec.weights_file
    return BoneageError(
        f"could not load ImageNet weights for {cfg.backbone}: {type(exc).__name__}: {exc}\n"
        f"  This machine cannot download them (offline?). Either:\n"
        f"  - fetch {url} on a machine with internet and copy it to {_keras_cache_path(spec)}\n"
        f"    (or set model.weights: /path/to/{Path(spec.weights_file).name}), or\n"
        f"  - set model.weights: none to train from random initialisation, knowingly."
    )


def _small_cnn(cfg: ModelConfig, image_size: int) -> keras.Model:
    if cfg.weights.lower() != "none":
        raise BoneageError("model.backbone small_cnn has no pretrained weights; set model.weights: none")
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=cfg.batchnorm_momentum)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    return keras.Model(inputs, x, name="backbone")


def build_backbone(cfg: ModelConfig, image_size: int) -> keras.Model:
    spec = BACKBONES[cfg.backbone]
    if image_size < spec.min_size:
        raise BoneageError(f"image size {image_size} is below {cfg.backbone}'s minimum of {spec.min_size}")
    if cfg.backbone == "small_cnn":
        return _small_cnn(cfg, image_size)
    weights = resolve_weights(cfg)
    factory = getattr(keras.applications, spec.factory)
    kwargs = {"include_top": False, "weights": weights, "input_shape": (image_size, image_size, 3)}
    if cfg.backbone.startswith("mobilenet"):
        kwargs["include_preprocessing"] = True
    try:
        backbone = factory(**kwargs)
    except Exception as exc:  # keras raises URL, OS and value errors for unreachable or bad weights
        if weights == "imagenet":
            raise _imagenet_error(cfg, exc) from None
        if weights is not None:
            raise BoneageError(f"model.weights: {weights} does not fit {cfg.backbone} without its top: {exc}") from None
        raise
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.batchnorm_momentum
    backbone.name = "backbone"
    return backbone


@dataclass
class BoneAgeModel:
    """``train``: outputs the standardised age (what the loss sees). ``predict``: outputs months.
    Both share every layer; ``backbone`` is exposed for freezing during warm-up."""

    train: keras.Model
    predict: keras.Model
    backbone: keras.Model


def build_model(cfg: ModelConfig, image_size: int, target_mean: float, target_sd: float) -> BoneAgeModel:
    spec = BACKBONES[cfg.backbone]
    image = keras.Input((image_size, image_size, 1), name=IMAGE_INPUT, dtype="uint8")
    male = keras.Input((1,), name=SEX_INPUT, dtype="float32")
    x = layers.Rescaling(1.0, name="to_float")(image)
    side = cfg.image_size or image_size
    if side != image_size:
        x = layers.Resizing(side, side, interpolation="bilinear", name="to_backbone_size")(x)
    x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = layers.Rescaling(spec.scale, offset=list(spec.offset), name="backbone_input")(x)
    backbone = build_backbone(cfg, side)
    features = backbone(x)
    if cfg.pooling == "avg":
        features = layers.GlobalAveragePooling2D(name="pool")(features)
    else:
        features = layers.Flatten(name="pool")(features)
    parts = [features]
    if cfg.use_sex:
        parts.append(layers.Dense(cfg.sex_units, activation="relu", name="sex_embedding")(male))
    x = layers.Concatenate(name="features")(parts) if len(parts) > 1 else features
    for i, units in enumerate(cfg.head_units):
        x = layers.Dense(units, activation="relu", name=f"head_{i}")(x)
        if cfg.head_dropout > 0:
            x = layers.Dropout(cfg.head_dropout, name=f"head_dropout_{i}")(x)
    z = layers.Dense(1, dtype="float32", name="age_z")(x)
    inputs = {IMAGE_INPUT: image, SEX_INPUT: male}
    return from_train_model(keras.Model(inputs, z, name="boneage_train"), target_mean, target_sd)


@keras.saving.register_keras_serializable(package="boneage")
class FixedView(layers.Layer):
    """uint8 images [B, S, S, 1] rotated by ``degrees`` and scaled by ``scale`` about their centre,
    bilinear, black outside: one fixed view for test-time augmentation (the same transform as the
    training augmentation's, with fixed parameters). A layer, so the ensemble stays one safe model."""

    def __init__(self, degrees: float = 0.0, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.degrees, self.scale = float(degrees), float(scale)

    def call(self, images):
        ops = keras.ops
        height, width = images.shape[1], images.shape[2]
        angle = math.radians(self.degrees)
        cos, sin = math.cos(angle) / self.scale, math.sin(angle) / self.scale
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        # Output pixel -> input pixel: rotate and scale about the centre.
        row = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
        transform = ops.tile(ops.convert_to_tensor([row], dtype="float32"), [ops.shape(images)[0], 1])
        out = ops.image.affine_transform(
            ops.cast(images, "float32"), transform, interpolation="bilinear", fill_mode="constant", fill_value=0
        )
        return ops.cast(ops.clip(ops.round(out), 0, 255), images.dtype)

    def get_config(self):
        return {**super().get_config(), "degrees": self.degrees, "scale": self.scale}


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """Save a model so that a reader never sees half of the file."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def load_predict_model(path: Path) -> keras.Model:
    """Load a saved model in safe mode: no arbitrary code runs from the file."""
    if not Path(path).is_file():
        raise BoneageError(f"{path}: model file not found (run `boneage train` first)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise BoneageError(f"{path}: not a loadable Keras model: {type(exc).__name__}: {exc}") from None


@keras.saving.register_keras_serializable(package="boneage")
class MonthsMAE(keras.metrics.Mean):
    """MAE in months, computed from standardised targets and predictions."""

    def __init__(self, target_sd: float = 1.0, name: str = "mae_months", **kwargs):
        super().__init__(name=name, **kwargs)
        self.target_sd = float(target_sd)

    def update_state(self, y_true, y_pred, sample_weight=None):
        err = keras.ops.abs(keras.ops.cast(y_true, "float32") - keras.ops.cast(y_pred, "float32")) * self.target_sd
        return super().update_state(err, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "target_sd": self.target_sd}


def make_loss(name: str, huber_delta: float) -> keras.losses.Loss:
    return {
        "mae": lambda: keras.losses.MeanAbsoluteError(),
        "huber": lambda: keras.losses.Huber(delta=huber_delta),
        "mse": lambda: keras.losses.MeanSquaredError(),
    }[name]()


def from_train_model(train: keras.Model, target_mean: float, target_sd: float, offset_months: float = 0.0) -> BoneAgeModel:
    """Rebuild the months-reporting view over a (resumed) training model, sharing its layers.
    ``offset_months`` is the bias correction measured on the validation split (0 while training)."""
    months = layers.Rescaling(float(target_sd), offset=float(target_mean) + float(offset_months), dtype="float32", name=OUTPUT)(
        train.output
    )
    return BoneAgeModel(
        train=train, predict=keras.Model(train.input, months, name="boneage"), backbone=train.get_layer("backbone")
    )


def batchnorm_layers(model: keras.Model) -> list[layers.BatchNormalization]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
        elif isinstance(layer, layers.BatchNormalization):
            found.append(layer)
    return found


def recalibrate_batchnorm(model: keras.Model, batches) -> None:
    """Set BatchNorm moving statistics to the statistics of all the images in ``batches`` (an
    iterable of input batches) under the current weights ("precise BN"). Weights are untouched.

    Several batches bound the memory (one batch of 128 images at 299 px took 16.5 GB). Each layer's
    statistics are pooled exactly over the batches, but within a pass the earlier layers are
    normalised by that batch's own statistics, so for a deep network several small batches are an
    approximation of one large batch, not equal to it (``train.bn_recalibration_batch_size``)."""
    bns = [bn for bn in batchnorm_layers(model) if bn.trainable]
    saved = [bn.momentum for bn in bns]
    sums = [[0.0, 0.0] for _ in bns]  # per layer: sum of batch means, sum of (variance + mean^2)
    seen = 0
    try:
        for bn in bns:
            bn.momentum = 0.0  # moving statistics := this batch's statistics, read after each pass
        for inputs in batches:
            model(inputs, training=True)
            seen += 1
            for bn, acc in zip(bns, sums, strict=True):
                mean = bn.moving_mean.numpy()
                acc[0] = acc[0] + mean
                acc[1] = acc[1] + bn.moving_variance.numpy() + mean**2
        if seen > 1:  # one batch already left its own statistics: nothing to pool
            # Pooled: E[x] is the mean of the batch means; Var[x] = E[var + mean^2] - E[x]^2, which
            # keeps the spread between batches that an average of variances would drop.
            for bn, (mean_sum, square_sum) in zip(bns, sums, strict=True):
                mean = mean_sum / seen
                bn.moving_mean.assign(mean)
                bn.moving_variance.assign(np.maximum(square_sum / seen - mean**2, 0.0))
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
