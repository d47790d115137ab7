"""The contracts between stages, in one place: the files a stage leaves for the next, the
manifest's schema, how files are written so that a reader never sees half of one, the age limits
and bands, how sex and age are parsed, and what counts as the synthetic dataset.

Stages and fronts (CLI, DVC, KFP) import these; no stage imports another stage for a helper."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from boneage.errors import BadInputError, BoneageError

# --- Files each stage leaves -------------------------------------------------------------------
# ingest and preprocess
MANIFEST_FILE = "manifest.csv"
QUARANTINE_FILE = "quarantine.csv"
# What the data is (kind, fingerprint, films): written by ingest, carried by preprocess, read by
# train into the model's provenance
DATASET_CARD_FILE = "dataset.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
# train
MODEL_FILE = "model.keras"
PREDICTOR_FILE = "predictor.json"
HISTORY_FILE = "history.csv"
TARGET_FILE = "target.json"
# the out-of-distribution check fitted on the training films (boneage.model.ood)
OOD_FILE = "ood.npz"
RUN_FILE = "run.json"
# the validation films scored as a server scores them: what `boneage monitor` compares a window with
MONITOR_REFERENCE_FILE = "monitor-reference.csv"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE_FILE = "state.json"
# ensemble: each member's folder holds a train output plus its record (trained or failed, why,
# how long), the ensemble's folder the same files as train's
MEMBER_FILE = "member.json"
MEMBERS_DIR = "members"
# evaluate
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
ERROR_BY_BAND_FILE = "error_by_band.csv"
# register
REGISTRY_FILE = "registry.json"
MODEL_CARD_FILE = "model_card.md"
# synth: the true (noise-free) ages; its presence marks a folder as the synthetic dataset
SYNTHETIC_TRUTH_FILE = "synthetic-truth.csv"

# --- What every output says the tool is for -----------------------------------------------------
INTENDED_USE_NOTICE = "Research and teaching only: boneage is not a medical device and gives no diagnosis."

# --- Manifest schema ---------------------------------------------------------------------------
# Every manifest carries the labels and the split; ingest's points at the source image, and
# preprocess's records the crop box in source pixels instead.
LABEL_COLUMNS = ["id", "boneage", "male", "split"]
MANIFEST_COLUMNS = ["id", "path", "boneage", "male", "split", "age_band", "csv_line"]
PREPROCESSED_COLUMNS = ["id", "boneage", "male", "split", "age_band", "crop_x0", "crop_y0", "crop_x1", "crop_y1"]
QUARANTINE_COLUMNS = ["id", "path", "reason", "csv_line"]
SPLITS = ("train", "val", "test")

# --- Ages --------------------------------------------------------------------------------------
# The widest bone age any film, label or prediction may carry: birth to 20 years.
MIN_AGE_MONTHS = 0.0
MAX_AGE_MONTHS = 240.0

# --- Sex ---------------------------------------------------------------------------------------
SEX_VALUES = {"true": True, "1": True, "m": True, "male": True, "false": False, "0": False, "f": False, "female": False}


def parse_sex(value) -> bool:
    """True/False, 1/0, M/F or male/female (any case, surrounding blanks ignored) -> male?"""
    key = str(value).strip().lower()
    if key not in SEX_VALUES:
        raise BadInputError(f"sex {value!r} is not M or F (nor male/female, True/False, 1/0)")
    return SEX_VALUES[key]


def parse_age(value, what: str = "bone age", lo: float = MIN_AGE_MONTHS, hi: float = MAX_AGE_MONTHS) -> float:
    """A finite number of months within [lo, hi]; ``what`` names it in the error."""
    try:
        months = float(str(value).strip())
    except ValueError:
        raise BadInputError(f"{what} {value!r} is not a number of months") from None
    if not math.isfinite(months) or not lo <= months <= hi:
        raise BadInputError(f"{what} {value!r} months is outside {lo:g}-{hi:g}")
    return months


def parse_optional_age(value, what: str) -> float | None:
    """As parse_age, with a blank (None, NaN or empty) meaning not given."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    return parse_age(value, what)


def age_band(months: float, edges_years: tuple[float, ...]) -> str:
    """The band label ("6-10y") of an age; ages past the last edge fall in the last band."""
    years = months / 12.0
    for lo, hi in zip(edges_years, edges_years[1:], strict=False):
        if years < hi:
            return f"{lo:g}-{hi:g}y"
    return f"{edges_years[-2]:g}-{edges_years[-1]:g}y"


def age_band_labels(edges_years: tuple[float, ...]) -> list[str]:
    """Every band's label, youngest first."""
    return [f"{lo:g}-{hi:g}y" for lo, hi in zip(edges_years, edges_years[1:], strict=False)]


# --- Atomic writes -----------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` only when the block
    finishes, so a reader (or a resumed run) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


# --- Manifest ----------------------------------------------------------------------------------
def read_manifest(path: Path, required: list[str] = LABEL_COLUMNS) -> pd.DataFrame:
    """A stage's manifest.csv (or the folder holding it), checked for the ``required`` columns,
    ``male`` parsed to bool."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise BoneageError(f"{path}: manifest not found (run the stage before this one first)")
    df = pd.read_csv(path, dtype={"id": str, "path": str, "split": str})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise BoneageError(f"{path}: manifest lacks columns {missing}")
    df["male"] = df["male"].map(parse_sex)
    return df


# --- The dataset card ------------------------------------------------------------------------
DATASET_KINDS = ("synthetic", "real")


def dataset_card(kind: str, source: str, manifest: pd.DataFrame, file_sizes: list[int]) -> dict:
    """What a dataset is, in a few fields that travel with it to the model: synthetic or real, a
    fingerprint of its labels, splits and image files (ids, labels, split and byte sizes), and
    its films per split."""
    assert kind in DATASET_KINDS, kind
    digest = hashlib.sha256()
    for row, size in zip(manifest[LABEL_COLUMNS].itertuples(index=False), file_sizes, strict=True):
        digest.update(f"{row.id},{row.boneage},{row.male},{row.split},{size}\n".encode())
    return {
        "kind": kind,
        "source": source,
        "fingerprint": digest.hexdigest()[:16],
        "films": {split: int((manifest["split"] == split).sum()) for split in SPLITS},
    }


def read_dataset_card(folder: Path) -> dict:
    """The dataset card beside a stage's manifest ({} for data from before cards existed)."""
    path = Path(folder) / DATASET_CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# --- The synthetic dataset ---------------------------------------------------------------------
SYNTHETIC_SOURCE = "synthetic"


def is_synthetic_source(source: str, synthetic_dir: str) -> bool:
    """Whether ``source`` names the embedded synthetic dataset: the literal "synthetic", the
    configured synthetic_dir, or any folder that holds the synthetic truth file."""
    if source == SYNTHETIC_SOURCE or Path(source) == Path(synthetic_dir):
        return True
    return "://" not in source and (Path(source) / SYNTHETIC_TRUTH_FILE).is_file()


def noise_floor_mae(label_noise_sd: float) -> float:
    """The synthetic labels' irreducible error: the MAE of a perfect model against labels with
    Gaussian rater noise, E|N(0, sd)| = sd * sqrt(2/pi)."""
    return label_noise_sd * math.sqrt(2.0 / math.pi)


# The environment variables that size TensorFlow's and OpenMP's thread pools in a process.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
