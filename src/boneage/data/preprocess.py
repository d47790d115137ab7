"""Preprocess: manifest -> sharded TFRecords of cropped, normalised hands, plus a contact sheet.

Images are processed in worker processes (OpenCV only); the parent writes shards in manifest order,
so the output is byte-identical for the same input.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from boneage.config import Params, PreprocessConfig
from boneage.contracts import (
    CONTACT_SHEET_FILE,
    DATASET_CARD_FILE,
    LABEL_COLUMNS,
    MANIFEST_FILE,
    PREPROCESSED_COLUMNS,
    QUARANTINE_COLUMNS,
    QUARANTINE_FILE,
    SPLITS,
    atomic_path,
    read_dataset_card,
    read_manifest,
    write_csv_atomic,
    write_json_atomic,
)
from boneage.errors import BadInputError, BoneageError
from boneage.data.handcrop import prepare
from boneage.data.imaging import read_radiograph

PNG_COMPRESSION = 1  # fast; level 9 saves ~10% space for 5x the time


@dataclass
class _Job:
    image_id: str
    path: str
    cfg: PreprocessConfig
    max_pixels: int


def _process(job: _Job) -> tuple[str, bytes | None, tuple[int, int, int, int] | None, str | None]:
    try:
        rad = read_radiograph(job.path, job.max_pixels)
        image, box = prepare(rad.pixels, job.cfg)
    except BadInputError as exc:
        return job.image_id, None, None, exc.reason
    except (cv2.error, MemoryError, ValueError) as exc:  # never let one image kill the run
        return job.image_id, None, None, f"preprocessing failed: {type(exc).__name__}: {exc}"
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        return job.image_id, None, None, "PNG encoding failed"
    return job.image_id, png.tobytes(), (box.x0, box.y0, box.x1, box.y1), None


def resolve_workers(requested: int) -> int:
    return requested or os.cpu_count() or 1


def process_images(jobs: list[_Job], workers: int, desc: str):
    """Yield results in job order, from a process pool (spawned: safe beside TensorFlow's threads)."""
    if workers <= 1 or len(jobs) < 4:
        for job in tqdm(jobs, desc=desc, unit="img"):
            yield _process(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        chunks = max(1, min(16, len(jobs) // (workers * 8)))
        yield from tqdm(pool.map(_process, jobs, chunksize=chunks), total=len(jobs), desc=desc, unit="img")


def contact_sheet(images: list[tuple[str, np.ndarray]], path: Path, tile: int = 160, columns: int = 8) -> None:
    """A grid of crops with their ids, so a person can check the cropping at a glance."""
    if not images:
        return
    rows = -(-len(images) // columns)
    sheet = Image.new("L", (columns * tile, rows * tile), color=40)
    draw = ImageDraw.Draw(sheet)
    for i, (image_id, img) in enumerate(images):
        x, y = (i % columns) * tile, (i // columns) * tile
        sheet.paste(Image.fromarray(img).resize((tile - 4, tile - 4)), (x + 2, y + 2))
        draw.text((x + 5, y + 4), image_id, fill=255)
    with atomic_path(path) as tmp:
        sheet.save(tmp)


def preprocess(params: Params, manifest_path: Path, out_dir: Path) -> pd.DataFrame:
    from boneage.data.tfrecords import serialize_example, write_shards  # TensorFlow only in the parent

    cfg = params.preprocess
    manifest = read_manifest(manifest_path, required=[*LABEL_COLUMNS, "path"])
    base = manifest_path.parent
    jobs = [_Job(str(r.id), str((base / r.path).resolve()), cfg, params.data.max_image_pixels) for r in manifest.itertuples()]
    # Build in a side folder and swap it in at the end: a crash never leaves half a dataset behind.
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    by_id = manifest.set_index("id")
    records: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    rows, quarantine, sheet = [], [], []
    for image_id, png, box, reason in process_images(jobs, resolve_workers(cfg.workers), "preprocess"):
        row = by_id.loc[image_id]
        if reason:
            quarantine.append({"id": image_id, "path": row["path"], "reason": reason, "csv_line": row.get("csv_line", "")})
            continue
        split = str(row["split"])
        records.setdefault(split, []).append(serialize_example(png, bool(row["male"]), float(row["boneage"]), image_id))
        rows.append(
            {
                "id": image_id,
                "boneage": row["boneage"],
                "male": bool(row["male"]),
                "split": split,
                "age_band": row.get("age_band", ""),
                "crop_x0": box[0],
                "crop_y0": box[1],
                "crop_x1": box[2],
                "crop_y1": box[3],
            }
        )
        if len(sheet) < cfg.contact_sheet_count:
            sheet.append((image_id, cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)))

    if not rows:
        shutil.rmtree(staging, ignore_errors=True)
        raise BoneageError(f"{manifest_path}: no image could be preprocessed; see the reasons above")
    for split, split_records in records.items():
        if split_records:
            write_shards(staging, split, split_records, cfg.shard_size)
    out_manifest = pd.DataFrame(rows, columns=PREPROCESSED_COLUMNS)
    write_csv_atomic(out_manifest, staging / MANIFEST_FILE)
    write_csv_atomic(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), staging / QUARANTINE_FILE)
    contact_sheet(sheet, staging / CONTACT_SHEET_FILE)
    # The dataset card travels on, with what this stage made of the films.
    card = read_dataset_card(manifest_path.parent)
    if card:
        card["preprocessed"] = {"films": len(rows), "image_size": cfg.image_size, "crop": cfg.crop}
        write_json_atomic(staging / DATASET_CARD_FILE, card)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_manifest
