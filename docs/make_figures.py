"""Figures for the README and the issue notes: synthetic hands by age and sex beside real RSNA
films, and the preprocessing contact sheet of the 40 real samples.

    python docs/make_figures.py [--real ../shared/data/rsna-sample]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from boneage.config import PreprocessConfig
from boneage.data.handcrop import prepare
from boneage.data.imaging import read_radiograph
from boneage.data.synth import render

TILE_W, TILE_H = 150, 190
HERE = Path(__file__).parent


def tile(img: np.ndarray, label: str) -> np.ndarray:
    scale = min(TILE_W / img.shape[1], TILE_H / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = np.zeros((TILE_H, TILE_W), np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    cv2.putText(out, label, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, 255, 1, cv2.LINE_AA)
    return out


def synthetic_vs_real(real_dir: Path | None, out: Path) -> None:
    rows = []
    for male in (True, False):
        rows.append(
            np.hstack(
                [
                    tile(
                        render(years * 12 + 6, male, 512, np.random.default_rng(years))[0],
                        f"synth {'M' if male else 'F'} {years}y",
                    )
                    for years in range(0, 20, 2)
                ]
            )
        )
    if real_dir and (real_dir / "boneage-training-dataset.csv").exists():
        labels = pd.read_csv(real_dir / "boneage-training-dataset.csv").sort_values("boneage")
        picks = labels.iloc[np.linspace(0, len(labels) - 1, 10).astype(int)]
        rows.append(
            np.hstack(
                [
                    tile(
                        read_radiograph(real_dir / "boneage-training-dataset" / f"{r.id}.png", 10**8).pixels,
                        f"real {'M' if r.male else 'F'} {r.boneage / 12:.1f}y",
                    )
                    for r in picks.itertuples()
                ]
            )
        )
    cv2.imwrite(str(out), np.vstack(rows))


def real_crops(real_dir: Path, out: Path) -> None:
    files = sorted((real_dir / "boneage-training-dataset").glob("*.png"))
    cfg = PreprocessConfig(image_size=190)
    tiles = [tile(prepare(read_radiograph(f, 10**8).pixels, cfg)[0], f.stem) for f in files]
    cv2.imwrite(str(out), np.vstack([np.hstack(tiles[i : i + 10]) for i in range(0, len(tiles), 10)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", type=Path, default=HERE.parents[1] / "shared" / "data" / "rsna-sample")
    args = parser.parse_args()
    synthetic_vs_real(args.real, HERE / "synthetic-vs-real.png")
    if args.real.exists():
        real_crops(args.real, HERE / "rsna-sample-crops.png")
    print("wrote", HERE / "synthetic-vs-real.png")
