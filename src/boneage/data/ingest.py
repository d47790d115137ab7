"""Ingest: an RSNA-format dataset -> a validated, split ``manifest.csv`` and a ``quarantine.csv``.

Every refused row or file is written to the quarantine with its reason and CSV line; every good row
reaches the manifest. Only whole-dataset problems (no source, no usable columns, nothing usable
left) are fatal.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from boneage.config import Params
from boneage.contracts import (
    DATASET_CARD_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    QUARANTINE_COLUMNS,
    QUARANTINE_FILE,
    SYNTHETIC_SOURCE,
    SYNTHETIC_TRUTH_FILE,
    age_band,
    atomic_path,
    dataset_card,
    parse_age,
    parse_sex,
    write_csv_atomic,
    write_json_atomic,
)
from boneage.errors import BadInputError, BoneageError
from boneage.data.imaging import IMAGE_SUFFIXES, check_image_file
from boneage.data.sources import materialise, resolve_source
from boneage.tracking import redact_uri

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
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IMAGES_DIR = "images"


@dataclass(frozen=True)
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    manifest_path: Path
    quarantine_path: Path


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
    raise BoneageError(f"{csv_path}: no {what} column; the header is {header}, expected one of {list(choices)}")


def _index_images(root: Path) -> dict[str, Path]:
    """Map each image's stem to its path, anywhere below ``root`` (covers the split validation folders)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.stem, path)
    return index


def _natural_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


class _Quarantine(list):
    def refuse(self, image_id: str, path: str, reason: str, line: int | str) -> None:
        self.append({"id": image_id, "path": path, "reason": reason, "csv_line": line})


def ingest(params: Params, out_dir: Path, source: str | None = None, bundle_images: bool = False) -> IngestResult:
    """Validate the labels and images at ``source`` (default: data.source) and write manifest.csv
    and quarantine.csv.

    ``bundle_images`` copies the accepted images into ``out_dir/images`` so that the folder stands
    alone (a KFP artifact moves between pods); otherwise the manifest points at the source."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = params.data
    source = resolve_source(params, source)
    root = materialise(source, out_dir / ".cache", cfg.download_workers, cfg.download_retry_seconds)
    csv_path = _find_label_csv(root)
    header, rows = _read_label_csv(csv_path)
    images = _index_images(root)
    quarantine = _Quarantine()
    records, csv_ids = _parse_rows(header, rows, cfg, csv_path, quarantine)
    good = _check_images(_drop_duplicates(records, quarantine), images, cfg, quarantine)
    for stem, path in images.items():
        if stem not in csv_ids:
            quarantine.refuse(stem, str(path), "image has no row in the label CSV", "")
    if not good:
        raise BoneageError(
            f"{csv_path}: no usable rows remain ({len(quarantine)} refused); see {out_dir / QUARANTINE_FILE} for the reasons"
        )
    if bundle_images:
        _bundle(good, out_dir / IMAGES_DIR)
    kind = "synthetic" if (root / SYNTHETIC_TRUTH_FILE).is_file() else "real"
    return _write(params, good, quarantine, out_dir, kind, source)


def _read_label_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows with their 1-based line numbers."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise BoneageError(f"{csv_path}: the label CSV is empty") from None
        return header, [(line_no, row) for line_no, row in enumerate(reader, start=2) if any(c.strip() for c in row)]


def _parse_rows(header: list[str], rows: list, cfg, csv_path: Path, quarantine: _Quarantine) -> tuple[list[dict], set[str]]:
    """One record per well-formed row (id, bone age, sex), a later row with a seen id kept as the
    first one's duplicate; and every id the CSV names, good or not."""
    cols = [
        header.index(_pick_column(header, choices, what, csv_path))
        for choices, what in ((ID_HEADERS, "image id"), (AGE_HEADERS, "bone age"), (SEX_HEADERS, "sex"))
    ]
    csv_ids = {row[cols[0]].strip() for _, row in rows if len(row) > cols[0]}
    records: list[dict] = []
    first_seen: dict[str, dict] = {}
    for line_no, row in rows:
        if len(row) < len(header):
            quarantine.refuse(row[0] if row else "", "", f"row has {len(row)} fields, header has {len(header)}", line_no)
            continue
        image_id, age_text, sex_text = (row[c] for c in cols)
        image_id = image_id.strip()
        if not image_id or not SAFE_ID.match(image_id) or ".." in image_id:
            quarantine.refuse(image_id, "", f"id {image_id!r} would escape the dataset folder or is not a plain name", line_no)
            continue
        try:
            record = {
                "id": image_id,
                "boneage": parse_age(age_text, "bone age", cfg.min_age_months, cfg.max_age_months),
                "male": parse_sex(sex_text),
                "csv_line": line_no,
            }
        except BadInputError as exc:
            quarantine.refuse(image_id, "", exc.reason, line_no)
            continue
        if image_id in first_seen:
            first_seen[image_id].setdefault("duplicates", []).append(record)
        else:
            first_seen[image_id] = record
            records.append(record)
    return records, csv_ids


def _drop_duplicates(records: list[dict], quarantine: _Quarantine) -> list[dict]:
    """Identical labels keep the first row; conflicting labels trust none of them."""
    kept: list[dict] = []
    for record in records:
        dups = record.pop("duplicates", [])
        conflict = any((d["boneage"], d["male"]) != (record["boneage"], record["male"]) for d in dups)
        for d in dups:
            why = "conflicting labels" if conflict else "same labels"
            quarantine.refuse(d["id"], "", f"duplicate id (first on CSV line {record['csv_line']}, {why})", d["csv_line"])
        if conflict:
            quarantine.refuse(record["id"], "", "duplicate id with conflicting labels", record["csv_line"])
        else:
            kept.append(record)
    return kept


def _check_images(records: list[dict], images: dict[str, Path], cfg, quarantine: _Quarantine) -> list[dict]:
    """The records whose image exists and decodes within the size limit, checked in parallel."""

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
        for record, reason in tqdm(pool.map(check, records), total=len(records), desc="ingest: check images", unit="img"):
            if reason:
                quarantine.refuse(record["id"], str(record.get("abs_path", "")), reason, record["csv_line"])
            else:
                good.append(record)
    return good


def _write(params: Params, good: list[dict], quarantine: _Quarantine, out_dir: Path, kind: str, source: str) -> IngestResult:
    """Split and band each good record; write the manifest and the quarantine (paths relative to
    out_dir) and the dataset card."""
    cfg = params.data
    sizes = {record["id"]: Path(record["abs_path"]).stat().st_size for record in good}
    for record in good:
        record["path"] = os.path.relpath(record.pop("abs_path"), out_dir)
        record["split"] = assign_split(record["id"], params.seed, cfg.split.val, cfg.split.test)
        record["age_band"] = age_band(record["boneage"], cfg.age_bands_years)
    manifest = pd.DataFrame(sorted(good, key=lambda r: _natural_key(r["id"])), columns=MANIFEST_COLUMNS)
    quarantine_df = pd.DataFrame(
        sorted(quarantine, key=lambda q: (q["csv_line"] == "", q["csv_line"] or 0, q["id"], q["reason"])),
        columns=QUARANTINE_COLUMNS,
    )
    quarantine_df["path"] = [os.path.relpath(p, out_dir) if p else "" for p in quarantine_df["path"]]
    manifest_path, quarantine_path = out_dir / MANIFEST_FILE, out_dir / QUARANTINE_FILE
    write_csv_atomic(manifest, manifest_path)
    write_csv_atomic(quarantine_df, quarantine_path)
    card = dataset_card(kind, redact_uri(source), manifest, [sizes[i] for i in manifest["id"]])
    write_json_atomic(out_dir / DATASET_CARD_FILE, card)
    return IngestResult(manifest, quarantine_df, manifest_path, quarantine_path)


def _bundle(records: list[dict], images_dir: Path) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    for record in tqdm(records, desc="ingest: bundle images", unit="img"):
        src = Path(record["abs_path"])
        dst = images_dir / f"{record['id']}{src.suffix.lower()}"
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        record["abs_path"] = dst
