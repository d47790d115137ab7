"""Fit the packaged hand locator (src/boneage/resources/hand-locator-v1.npz) from the real films:
the rule crop's boxes on all 12,611 films of SOURCE, then people's boxes (SOURCE/hand-boxes.csv)
on the films that the recipe of record's split puts in training; self-trained over rounds
(boneage.data.handlocator.fit_rounds). Not in CI (about 20 minutes on 2 cores).

The boxes of the films in the validation and test splits are never fitted on: `bench_real crop`
measures the locator on them. The crop margin is chosen first, on a quarter of the fitted boxes
held out of a first fit: the widest whose share of good crops is within one box of the best.

    python -m benchmarks.fit_locator --source ../shared/data/rsna-100px
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from benchmarks.common import bench_params, machine
from boneage.data import handlocator
from boneage.data.handcrop import Box

NAME = "hand-locator-v1"
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)
SELECTION_SHARE = 0.25  # of the fitted boxes, held out of the first fit to choose the margin
BOXES_FILE = "hand-boxes.csv"


def _read(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def _rule_box(path: str) -> np.ndarray | None:
    from boneage.config import PreprocessConfig
    from boneage.data.handcrop import locate_hand
    from boneage.errors import BadInputError

    try:
        box = locate_hand(_read(path), PreprocessConfig(crop="hand", crop_margin=0.0))
    except BadInputError:
        return None
    return np.array([box.x0, box.y0, box.x1, box.y1], dtype=np.float32)


def crop_box(found: np.ndarray, margin: float, shape: tuple[int, int]) -> Box:
    """What the crop takes around a found box: the product's rule (handcrop.locate_hand_learned)."""
    return Box(*handlocator.padded(found, margin, shape))


def good_share(locator, people: list[tuple[np.ndarray, np.ndarray]], margin: float) -> float:
    good = [crop_box(handlocator.film_box(locator, film), margin, film.shape).is_good_crop_of(Box(*box)) for film, box in people]
    return sum(good) / len(good)


def widest_near_best(shares: dict[float, float], boxes: int) -> float:
    """The widest margin whose good share is within one box of the best: a bone-age crop wants a
    margin beyond the people's boxes, which end at the wrist where the radius and ulna epiphyses
    are; one box of the selection set is within its noise."""
    best = max(shares.values())
    return max(m for m, share in shares.items() if share >= best - 1.0 / boxes - 1e-9)


def main() -> None:
    from boneage.data.ingest import assign_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    args = parser.parse_args()
    params = bench_params(**{"preset": "rsna-cpu"})
    split = params.data.split
    labels = pd.read_csv(args.source / "boneage-training-dataset.csv", dtype={"id": str})
    paths = [str(args.source / "boneage-training-dataset" / f"{i}.png") for i in labels["id"]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        rule = list(pool.map(_rule_box, paths, chunksize=128))
    films = [_read(p) for p, b in zip(paths, rule, strict=True) if b is not None]
    rule_boxes = [b for b in rule if b is not None]
    boxes = pd.read_csv(args.source / BOXES_FILE, dtype={"id": str})
    boxes["split"] = [assign_split(i, params.seed, split.val, split.test) for i in boxes["id"]]
    fitted = boxes[boxes["split"] == "train"]
    selection = np.array([assign_split(i, params.seed + 1, SELECTION_SHARE, 0.0) == "val" for i in fitted["id"]])

    def people(frame: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (_read(str(args.source / "boneage-training-dataset" / f"{r.id}.png")),
             np.array([r.x0_100, r.y0_100, r.x1_100, r.y1_100], dtype=np.float32))
            for r in frame.itertuples()
        ]  # fmt: skip

    settings = handlocator.FitSettings()
    first = handlocator.fit_rounds(people(fitted[~selection]), films, rule_boxes, settings)
    chosen_on = people(fitted[selection])
    shares = {m: good_share(first, chosen_on, m) for m in MARGINS}
    margin = widest_near_best(shares, len(chosen_on))
    print(f"margin {margin}: good crops on the {len(chosen_on)} selection boxes {shares}", flush=True)
    final = handlocator.fit_rounds(people(fitted), films, rule_boxes, settings)
    final.save(handlocator.RESOURCES / f"{NAME}.npz")
    card = {
        "name": NAME,
        "fitted": date.today().isoformat(),
        "machine": machine(),
        "source": "RSNA Pediatric Bone Age training films at 100 px; people's hand boxes",
        "films_with_rule_boxes": len(films),
        "people_boxes_fitted": len(fitted),
        "people_boxes_fitted_are": f"the films the split (seed {params.seed}) puts in training",
        "people_boxes_never_fitted": int((boxes["split"] != "train").sum()),
        "margin_chosen": margin,
        "margin_chosen_on": f"{len(chosen_on)} of the fitted boxes, held out of a first fit",
        "margin_shares": {str(k): round(v, 3) for k, v in shares.items()},
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
    }
    (handlocator.RESOURCES / f"{NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
