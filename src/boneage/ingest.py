"""Ingest: an RSNA-format dataset -> a validated, split ``manifest.csv`` and a ``quarantine.csv``.

Every refused row or file is written to the quarantine with its reason and CSV line; every good row
reaches the manifest. Only whole-dataset problems (no source, no usable columns, nothing usable
left) are fatal.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from boneage.config import Params
from boneage.errors import BadInputError, BoneageError
from boneage.imaging import IMAGE_SUFFIXES, check_image_file
from boneage.sources import materialise

MANIFEST_COLUMNS = ["id", "path", "boneage", "male", "split", "age_band", "csv_line"]
QUARANTINE_COLUMNS = ["id", "path", "reason", "csv_line"]

# Header spellings of the three columns in the RSNA releases (training, validation, test).
ID_HEADERS = ("id", "image id", "case id")
AGE_HEADERS = ("boneage", "bone age (months)", "bone age")
SEX_HEADERS = ("male", "sex", "gender")
KNOWN_CSV_NAMES = (
    "boneage-training-dataset.csv",
    "boneage-validation-dataset.csv",
    "validation dataset.csv",
    "train.csv",
)
SEX_VALUES = {"true": True, "1": True, "m": True, "male": True, "false": False, "0": False, "f": False, "female": False}
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    manifest_path: Path
    quarantine_path: Path


def parse_sex(value: str) -> bool:
    key = str(value).strip().lower()
    if key not in SEX_VALUES:
        raise BadInputError(f"unknown sex value {value!r} (expected True/False, 1/0, M/F or male/female)")
    return SEX_VALUES[key]


def parse_age(value: str, lo: float, hi: float) -> float:
    try:
        age = float(str(value).strip())
    except ValueError:
        raise BadInputError(f"bone age {value!r} is not a number") from None
    if not math.isfinite(age) or not lo <= age <= hi:
        raise BadInputError(f"bone age {value!r} outside {lo:g}-{hi:g} months")
    return age


def age_band(months: float, edges_years: tuple[float, ...]) -> str:
    years = months / 12.0
    for lo, hi in zip(edges_years, edges_years[1:], strict=False):
        if years < hi:
            return f"{lo:g}-{hi:g}y"
    return f"{edges_years[-2]:g}-{edges_years[-1]:g}y"


def assign_split(image_id: str, seed: int, val: float, test: float) -> str:
    """A split that depends on the id and the seed alone, so adding or removing other rows never
    moves an image between splits. Being a uniform draw per id, it holds the fractions within every
    sex x age-band stratum too (in expectation; tested on the real label distribution)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def _find_label_csv(root: Path) -> Path:
    for name in KNOWN_CSV_NAMES:
        for candidate in root.iterdir():
            if candidate.name.lower() == name and candidate.is_file():
                return candidate
    csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise BoneageError(f"{root}: no label CSV found (expected boneage-training-dataset.csv)")
    raise BoneageError(f"{root}: several CSVs and none of the known names: {[p.name for p in csvs]}")


def _pick_column(header: list[str], choices: tuple[str, ...], what: str, csv_path: Path) -> str:
    lowered = {h.strip().lower(): h for h in header}
    for choice in choices:
        if choice in lowered:
            return lowered[choice]
    raise BoneageError(
        f"{csv_path}: no {what} column; the header is {header}, expected one of {list(choices)}"
    )


def _index_images(root: Path) -> dict[str, Path]:
    """Map each image's stem to its path, anywhere below ``root`` (covers the split validation folders)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.stem, path)
    return index


def _natural_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


IMAGES_DIR = "images"


def ingest(params: Params, out_dir: Path, source: str | None = None, bundle_images: bool = False) -> IngestResult:
    """Validate the labels and images at ``source`` and write manifest.csv and quarantine.csv.

    ``bundle_images`` copies the accepted images into ``out_dir/images`` so that the folder stands
    alone (a KFP artifact moves between pods); otherwise the manifest points at the source."""
    source = source or params.data.source
    out_dir.mkdir(parents=True, exist_ok=True)
    root = materialise(source, out_dir / ".cache", params.data.download_workers, params.data.download_retry_seconds)
    csv_path = _find_label_csv(root)
    cfg = params.data
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise BoneageError(f"{csv_path}: the label CSV is empty") from None
        id_col = _pick_column(header, ID_HEADERS, "image id", csv_path)
        age_col = _pick_column(header, AGE_HEADERS, "bone age", csv_path)
        sex_col = _pick_column(header, SEX_HEADERS, "sex", csv_path)
        cols = {name: header.index(name) for name in (id_col, age_col, sex_col)}
        rows = [(line_no, row) for line_no, row in enumerate(reader, start=2) if any(c.strip() for c in row)]

    images = _index_images(root)
    quarantine: list[dict] = []
    candidates: list[dict] = []
    first_seen: dict[str, dict] = {}

    def refuse(image_id: str, path: str, reason: str, line: int | str) -> None:
        quarantine.append({"id": image_id, "path": path, "reason": reason, "csv_line": line})

    csv_ids = {row[cols[id_col]].strip() for _, row in rows if len(row) > cols[id_col]}
    for line_no, row in rows:
        if len(row) < len(header):
            refuse(row[0] if row else "", "", f"row has {len(row)} fields, header has {len(header)}", line_no)
            continue
        image_id = row[cols[id_col]].strip()
        if not image_id or not SAFE_ID.match(image_id) or ".." in image_id:
            refuse(image_id, "", f"id {image_id!r} would escape the dataset folder or is not a plain name", line_no)
            continue
        try:
            age = parse_age(row[cols[age_col]], cfg.min_age_months, cfg.max_age_months)
            male = parse_sex(row[cols[sex_col]])
        except BadInputError as exc:
            refuse(image_id, "", exc.reason, line_no)
            continue
        record = {"id": image_id, "boneage": age, "male": male, "csv_line": line_no}
        if image_id in first_seen:
            first = first_seen[image_id]
            first.setdefault("duplicates", []).append(record)
            continue
        first_seen[image_id] = record
        candidates.append(record)

    # Duplicates: identical labels keep the first row; conflicting labels trust none of them.
    labelled: list[dict] = []
    for record in candidates:
        dups = record.pop("duplicates", [])
        conflict = any((d["boneage"], d["male"]) != (record["boneage"], record["male"]) for d in dups)
        for d in dups:
            why = "conflicting labels" if conflict else "same labels"
            refuse(d["id"], "", f"duplicate id (first on CSV line {record['csv_line']}, {why})", d["csv_line"])
        if conflict:
            refuse(record["id"], "", "duplicate id with conflicting labels", record["csv_line"])
            continue
        labelled.append(record)

    def check(record: dict) -> tuple[dict, str | None]:
        path = images.get(record["id"])
        if path is None:
            return record, "image file missing"
        record["abs_path"] = path
        try:
            check_image_file(path, cfg.max_image_pixels)
        except BadInputError as exc:
            return record, exc.reason
        return record, None

    workers = cfg.workers or (os.cpu_count() or 1) * 2  # I/O and zlib release the GIL
    good: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, labelled)
        for record, reason in tqdm(results, total=len(labelled), desc="ingest: check images", unit="img"):
            path = str(record.get("abs_path", images.get(record["id"], "")))
            if reason:
                refuse(record["id"], path, reason, record["csv_line"])
            else:
                good.append(record)

    for stem, path in images.items():
        if stem not in csv_ids:
            refuse(stem, str(path), "image has no row in the label CSV", "")

    if not good:
        raise BoneageError(
            f"{csv_path}: no usable rows remain ({len(quarantine)} refused); "
            f"see {out_dir / 'quarantine.csv'} for the reasons"
        )

    if bundle_images:
        _bundle(good, out_dir / IMAGES_DIR)
    for record in good:
        record["path"] = os.path.relpath(record.pop("abs_path"), out_dir)
        record["split"] = assign_split(record["id"], params.seed, cfg.split.val, cfg.split.test)
        record["age_band"] = age_band(record["boneage"], cfg.age_bands_years)
    manifest = pd.DataFrame(sorted(good, key=lambda r: _natural_key(r["id"])), columns=MANIFEST_COLUMNS)
    quarantine_df = pd.DataFrame(
        sorted(quarantine, key=lambda q: (q["csv_line"] == "", q["csv_line"] or 0, q["id"], q["reason"])), columns=QUARANTINE_COLUMNS
    )
    quarantine_df["path"] = [os.path.relpath(p, out_dir) if p else "" for p in quarantine_df["path"]]
    manifest_path, quarantine_path = out_dir / "manifest.csv", out_dir / "quarantine.csv"
    write_csv_atomic(manifest, manifest_path)
    write_csv_atomic(quarantine_df, quarantine_path)
    return IngestResult(manifest, quarantine_df, manifest_path, quarantine_path)


def _bundle(records: list[dict], images_dir: Path) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    for record in tqdm(records, desc="ingest: bundle images", unit="img"):
        src = Path(record["abs_path"])
        dst = images_dir / f"{record['id']}{src.suffix.lower()}"
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_name(dst.name + ".partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        record["abs_path"] = dst


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise BoneageError(f"{path}: manifest not found (run `boneage ingest` first)")
    df = pd.read_csv(path, dtype={"id": str, "path": str, "split": str})
    missing = [c for c in ("id", "path", "boneage", "male", "split") if c not in df.columns]
    if missing:
        raise BoneageError(f"{path}: manifest lacks columns {missing}")
    df["male"] = df["male"].map(lambda v: parse_sex(str(v)))
    return df
