"""The training input pipeline: what order it serves films in, and that the order is a function of
the seed alone (precise BN and each phase's `fit` open their own iterator on the same dataset)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

FILMS = 40  # more than one batch, so a pass ends inside the second batch
SIZE = 8
BATCH = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two train shards of tiny films whose ids are their numbers."""
    from boneage.data.tfrecords import serialize_example, write_shards

    folder = tmp_path_factory.mktemp("shards")
    records = []
    for i in range(FILMS):
        png = io.BytesIO()
        Image.fromarray(np.full((SIZE, SIZE), i, np.uint8)).save(png, format="PNG")
        records.append(serialize_example(png.getvalue(), male=bool(i % 2), boneage=float(i), image_id=str(i)))
    write_shards(folder, "train", records, shard_size=FILMS // 2)
    return folder


def _ids(dataset, batches: int, linger: float) -> list[int]:
    """The ids of the first ``batches`` batches of a new iterator; it then lingers, so its prefetching
    runs ahead into passes it never serves, as an iterator that Keras drops at an epoch's end does."""
    iterator = iter(dataset)
    ids = [int(y) for _ in range(batches) for y in np.asarray(next(iterator)[1]).reshape(-1)]
    time.sleep(linger)
    del iterator
    return ids


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cached"])
def test_every_iterator_of_a_training_dataset_serves_the_same_order(shards, cache):
    from boneage.training.dataset import make_dataset

    dataset = make_dataset(shards, "train", SIZE, BATCH, training=True, shuffle_buffer=64, seed=3, examples=FILMS, cache=cache)
    passes = 2 * FILMS // BATCH + 1  # batches that cover two passes
    first = _ids(dataset, passes, linger=0.5)
    assert _ids(dataset, passes, linger=0.5) == first
    assert _ids(dataset, passes, linger=0.0) == first
    # Each pass holds every film once, in an order of its own.
    one, two = first[:FILMS], first[FILMS : 2 * FILMS]
    assert sorted(one) == sorted(two) == list(range(FILMS)) and one != two


def test_another_seed_serves_another_order(shards):
    from boneage.training.dataset import make_dataset

    orders = [
        _ids(make_dataset(shards, "train", SIZE, BATCH, training=True, shuffle_buffer=64, seed=seed), 2, linger=0.0)
        for seed in (3, 4)
    ]
    assert orders[0] != orders[1]


def test_the_order_ignores_tensorflows_global_seed(shards):
    """The order is the dataset's seed's alone: a global seed (0 included, which TensorFlow's own
    seed plumbing treats apart) leaves it as it is."""
    import tensorflow as tf

    from boneage.training.dataset import make_dataset

    def order():
        dataset = make_dataset(shards, "train", SIZE, BATCH, training=True, shuffle_buffer=64, seed=3, examples=FILMS)
        return _ids(dataset, 3, linger=0.0)

    unseeded = order()
    try:
        for global_seed in (0, 7):
            tf.random.set_seed(global_seed)
            assert order() == unseeded, global_seed
    finally:
        tf.random.set_seed(None)
