"""The TFRecord schema shared by preprocess (writer) and train/evaluate (reader)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from boneage.contracts import atomic_path

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),  # PNG, uint8 grayscale, square
    "male": tf.io.FixedLenFeature([], tf.int64),
    "boneage": tf.io.FixedLenFeature([], tf.float32),
    "id": tf.io.FixedLenFeature([], tf.string),
}


def serialize_example(png: bytes, male: bool, boneage: float, image_id: str) -> bytes:
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                "male": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(male)])),
                "boneage": tf.train.Feature(float_list=tf.train.FloatList(value=[float(boneage)])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
            }
        )
    )
    # deterministic=True fixes the map order, so equal inputs give byte-identical shards.
    return example.SerializeToString(deterministic=True)


def parse_example(record: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    parsed = tf.io.parse_single_example(record, FEATURES)
    image = tf.io.decode_png(parsed["image"], channels=1)
    image = tf.ensure_shape(image, [image_size, image_size, 1])
    return {
        "image": image,
        "male": tf.cast(parsed["male"], tf.float32),
        "boneage": parsed["boneage"],
        "id": parsed["id"],
    }


def shard_paths(directory: Path, split: str) -> list[Path]:
    return sorted(directory.glob(f"{split}-*.tfrecord"))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def write_shards(directory: Path, split: str, records: list[bytes], shard_size: int) -> list[str]:
    """Write ``records`` into ceil(n/shard_size) shards; each is renamed into place when complete."""
    count = max(1, -(-len(records) // shard_size))
    names = []
    for index in range(count):
        name = shard_name(split, index, count)
        with atomic_path(directory / name) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
            for record in records[index * shard_size : (index + 1) * shard_size]:
                writer.write(record)
        names.append(name)
    return names
