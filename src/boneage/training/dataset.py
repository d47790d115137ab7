"""tf.data input pipelines over the TFRecord shards: decoded in parallel, augmented on the fly,
prefetched. Training either streams the shards through a shuffle buffer, or (``cache``) decodes
the split once, holds it in memory and shuffles all of it every pass."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from boneage.config import AugmentConfig
from boneage.data.tfrecords import parse_example, shard_paths
from boneage.errors import BoneageError
from boneage.model.network import IMAGE_INPUT, SEX_INPUT

AUTOTUNE = tf.data.AUTOTUNE


def _affine_matrices(batch: int, size: int, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Per-image rotation, scale and shift, as the 8-vector ImageProjectiveTransform expects
    (maps output pixel coordinates to input coordinates)."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    angle = tf.random.stateless_uniform([batch], seeds[0], -1.0, 1.0) * cfg.rotation_deg * math.pi / 180
    scale = 1.0 + tf.random.stateless_uniform([batch], seeds[1], -1.0, 1.0) * cfg.scale
    shift = tf.random.stateless_uniform([batch, 2], seeds[2], -1.0, 1.0) * cfg.shift * size
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (size - 1) / 2.0
    # Rotate and scale about the centre, then shift.
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = centre - a0 * centre - a1 * centre - shift[:, 0]
    b2 = centre - b0 * centre - b1 * centre - shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """uint8 [B, S, S, 1] -> augmented uint8, deterministic for a given seed."""
    batch, size = tf.shape(images)[0], images.shape[1]
    transforms = _affine_matrices(batch, size, cfg, seed)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    seeds = tf.random.experimental.stateless_split(seed, 2)
    gain = 1.0 + tf.random.stateless_uniform([batch, 1, 1, 1], seeds[0], -1.0, 1.0) * cfg.contrast
    bias = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1], -1.0, 1.0) * cfg.brightness * 255.0
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * gain + mean + bias
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def make_dataset(
    directory: Path,
    split: str,
    image_size: int,
    batch_size: int,
    *,
    target_mean: float = 0.0,
    target_sd: float = 1.0,
    training: bool = False,
    augment: AugmentConfig | None = None,
    shuffle_buffer: int = 1024,
    seed: int = 0,
    with_ids: bool = False,
    examples: int | None = None,
    cache: bool = False,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batches of ({image, male}, standardised age); ids too for evaluation when ``with_ids``.

    A training dataset repeats forever; with ``cache`` (and its number of ``examples``) its decoded
    images are held in memory and all of them shuffled each pass. It is one stream of full batches
    whose order is the seed's alone; ``start_batch`` starts it there, which is what a run resumed
    after that many batches reads next, augmentation included. A finite one told its number of
    ``examples`` knows its length, so Keras ends each validation pass cleanly instead of running
    into the end of the data (and warning that it "ran out of data")."""
    files = [str(p) for p in shard_paths(Path(directory), split)]
    if not files:
        raise BoneageError(f"{directory}: no {split} shards ({split}-*.tfrecord); run `boneage preprocess` first")
    if training and cache:
        everything = max(examples or 0, shuffle_buffer)
        cached = _cached_examples(files, image_size)
        ds = _passes(seed, lambda key: _shuffled(cached, everything, key))
    else:
        ds = _streamed_examples(files, image_size, training, shuffle_buffer, seed)
    if training and start_batch:
        ds = ds.skip(start_batch * batch_size)
    ds = ds.batch(batch_size, drop_remainder=False)
    if training and augment is not None and augment.enabled:
        ds = ds.enumerate(start=start_batch).map(
            lambda step, b: {**b, "image": augment_batch(b["image"], tf.stack([tf.cast(seed, tf.int64), step]), augment)},
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )

    def to_xy(b):
        inputs = {IMAGE_INPUT: b["image"], SEX_INPUT: tf.reshape(b["male"], [-1, 1])}
        target = tf.reshape((b["boneage"] - target_mean) / target_sd, [-1, 1])
        return (inputs, target, b["id"]) if with_ids else (inputs, target)

    ds = ds.map(to_xy, num_parallel_calls=AUTOTUNE, deterministic=True)
    if examples is not None and not training:
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-examples // batch_size)))
    return ds.prefetch(AUTOTUNE)


def _passes(seed: int, one_pass) -> tf.data.Dataset:
    """``one_pass(key)`` for passes p = 0, 1, 2, ... forever, ``key`` the stateless random key of
    (``seed``, p): each pass's order is a function of the seed and the pass number alone, whichever
    iterator asks and however far tf.data's prefetching ran ahead. (``shuffle(..., reshuffle_each_
    iteration=True).repeat()`` drew each pass's seed from a generator that all iterators of a dataset
    share, and prefetching ran into passes it never served: the next precise-BN pass and the next
    phase's ``fit`` got another order on every run.) A new iterator starts again at pass 0."""
    base = tf.constant([seed, 0], tf.int64)
    return tf.data.Dataset.counter().flat_map(lambda p: one_pass(tf.random.experimental.stateless_fold_in(base, p)))


def _shuffled(ds: tf.data.Dataset, window: int, key: tf.Tensor) -> tf.data.Dataset:
    """``ds`` in windows of ``window`` elements, each put in a random order drawn from ``key`` and
    the window's number (stateless: no seed generator, no global seed involved)."""

    def permute(i, elements):
        n = tf.shape(tf.nest.flatten(elements)[0])[0]
        order = tf.argsort(tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(key, i)))
        return tf.nest.map_structure(lambda t: tf.gather(t, order), elements)

    return ds.batch(window).enumerate().map(permute).unbatch()


def _streamed_examples(files: list[str], image_size: int, training: bool, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """Records read from the shards and decoded; when training, pass after pass forever, each in a
    shuffled shard order and through windows of ``shuffle_buffer`` records in a shuffled order."""

    def one_pass(key=None) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            ds = _shuffled(ds, len(files), tf.random.experimental.stateless_fold_in(key, -1))
        cycle = min(4, len(files))
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=AUTOTUNE, deterministic=True)
        return _shuffled(ds, shuffle_buffer, key) if training else ds

    ds = _passes(seed, one_pass) if training else one_pass()
    return ds.map(lambda r: parse_example(r, image_size), num_parallel_calls=AUTOTUNE, deterministic=True)


def _cached_examples(files: list[str], image_size: int) -> tf.data.Dataset:
    """Every record of the shards decoded once, in shard order, then served from memory."""
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(4, len(files)))
    return ds.map(lambda r: parse_example(r, image_size), num_parallel_calls=AUTOTUNE, deterministic=True).cache()


def predict_split(model: keras.Model, data_dir: Path, split: str, image_size: int, batch_size: int, ood=None) -> pd.DataFrame:
    """Predicted months for every record of one split: columns id, predicted; with an
    out-of-distribution check (boneage.model.ood.OodCheck), each film is put upright first (the check's
    `score_checked`, as in serving) and ood_score and view come too (ood_score above 1: refused)."""
    if ood is None:
        rows = []
        for inputs, _, ids in make_dataset(data_dir, split, image_size, batch_size, with_ids=True):
            pred = model.predict_on_batch(inputs).reshape(-1)
            rows.extend(zip([i.decode() for i in ids.numpy()], pred.tolist(), strict=True))
        return pd.DataFrame(rows, columns=["id", "predicted"])
    from boneage.model.ood import score_checked, scoring_model

    scorer, frames = scoring_model(model), []
    for inputs, _, ids in make_dataset(data_dir, split, image_size, batch_size, with_ids=True):
        judged = score_checked(scorer, ood, {k: v.numpy() for k, v in inputs.items()})
        frames.append(
            pd.DataFrame(
                {
                    "id": [i.decode() for i in ids.numpy()],
                    "predicted": judged.months,
                    "ood_score": judged.ratios,
                    "view": judged.views,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
