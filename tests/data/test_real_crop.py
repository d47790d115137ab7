"""The hand crop on real films: all 12,611 RSNA training films at 100 px (refusals), people's hand
boxes on 400 of them (good crops), and films already cropped to the hand (nothing cut off)."""

from __future__ import annotations

import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import cv2
import pandas as pd
import pytest

from boneage.config import PreprocessConfig
from boneage.errors import BadInputError
from boneage.handcrop import Box, locate_hand, locate_hand_v1
from boneage.imaging import read_radiograph
from tests.conftest import FIXTURES, RSNA_SAMPLE, SHARED_DATA, require

RSNA_100PX = SHARED_DATA / "rsna-100px"
CFG = PreprocessConfig(image_size=96)
# BoneXpert refuses 0.4% of films, and only bad ones: no more than that.
MAX_REFUSED_SHARE = 0.004
# Good crops on the 400 people's boxes: 84.8% when this crop was made (the first crop: 44%). The
# goal is 98%; this guards what has been reached, with a film or so of margin.
MIN_GOOD_SHARE = 0.84


def _crop(job: tuple[str, str]) -> tuple[str, tuple | None]:
    image_id, crop = job
    pixels = cv2.imread(str(RSNA_100PX / "boneage-training-dataset" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
    try:
        box = (locate_hand_v1 if crop == "hand-v1" else locate_hand)(pixels, CFG)
    except BadInputError:
        return image_id, None
    return image_id, (box.x0, box.y0, box.x1, box.y1)


def _crops(ids: list[str], crop: str) -> dict[str, Box | None]:
    # Spawned, not forked: other tests may have started TensorFlow's threads in this process.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return {i: (Box(*b) if b else None) for i, b in pool.map(_crop, [(i, crop) for i in ids], chunksize=128)}


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return pd.read_csv(require(RSNA_100PX) / "boneage-training-dataset.csv", dtype={"id": str})


@pytest.fixture(scope="module")
def people_boxes() -> pd.DataFrame:
    return pd.read_csv(require(RSNA_100PX / "hand-boxes.csv"), dtype={"id": str})


def test_crop_refuses_at_most_as_many_real_films_as_bonexpert(labels):
    crops = _crops(list(labels["id"]), "hand")
    refused = [i for i, b in crops.items() if b is None]
    assert len(crops) == 12_611
    assert len(refused) <= MAX_REFUSED_SHARE * len(crops), f"{len(refused)} refused: {refused[:20]}"


def _good_share(crops: dict[str, Box | None], people: pd.DataFrame) -> float:
    good = [crops[r.id] is not None and crops[r.id].is_good_crop_of(Box(r.x0_100, r.y0_100, r.x1_100, r.y1_100))
            for r in people.itertuples()]
    return sum(good) / len(good)


def test_crop_agrees_with_peoples_hand_boxes(people_boxes):
    share = _good_share(_crops(list(people_boxes["id"]), "hand"), people_boxes)
    assert share >= MIN_GOOD_SHARE, f"good crops on {100 * share:.1f}% of the {len(people_boxes)} boxes"


def test_the_first_crop_fails_the_same_boxes_far_more_often(people_boxes):
    """The rule can tell a bad crop: the first crop, which keeps the collimation field, scores low."""
    assert _good_share(_crops(list(people_boxes["id"]), "hand-v1"), people_boxes) < 0.5


def test_a_film_cropped_to_the_hand_keeps_its_whole_hand():
    """The 40 full-resolution samples cut to their hand boxes, as a film already cropped to the hand
    would be: nothing is refused and the crop keeps (nearly) the whole film."""
    image_dir = require(RSNA_SAMPLE / "boneage-training-dataset")
    with open(FIXTURES / "rsna_sample_hand_boxes.csv") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    for row in rows:
        pixels = read_radiograph(image_dir / f"{row['id']}.png", 10**8).pixels
        h, w = pixels.shape
        x0, y0, x1, y1 = (int(float(row[k]) * s / 100) for k, s in (("x0", w), ("y0", h), ("x1", w), ("y1", h)))
        hand_only = pixels[y0:y1, x0:x1]
        box = locate_hand(hand_only, PreprocessConfig())
        whole = Box(0, 0, hand_only.shape[1], hand_only.shape[0])
        assert box.covered_fraction(whole) >= 0.95, (row["id"], box, whole)
