"""Bone age for new radiographs: the trained model with its own preprocessing, a calibrated
prediction interval and, given the chronological age, the Greulich–Pyle SDS.

The same :class:`Predictor` serves `boneage predict`, the MLflow pyfunc (``boneage.serve.serving``) and
the reports, so a radiograph is prepared exactly as in training wherever it is scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boneage.contracts import (
    MAX_AGE_MONTHS,
    MIN_AGE_MONTHS,
    MODEL_FILE,
    OOD_FILE,
    PREDICTOR_FILE,
    parse_optional_age,
    parse_sex,
)
from boneage.data.gcs import fsspec_options
from boneage.data.imaging import IMAGE_SUFFIXES, Radiograph, describe_view, read_radiograph, read_radiograph_bytes
from boneage.errors import BadInputError, BoneageError
from boneage.model.ood import PARTS, Assessment, OodCheck, score_checked, scoring_model
from boneage.model.predictor_config import PredictorConfig
from boneage.serve.standards import assess

# Images per model call when scoring many files: large enough to amortise the call, small enough
# that a batch of 299 px images stays well under a GiB of activations.
DEFAULT_BATCH = 16
UNCHECKED_WARNING = (
    "MODEL WITHOUT AN OUT-OF-DISTRIBUTION CHECK: images unlike its training films are not refused; retrain it to fit one"
)


def years_and_months(months: float) -> str:
    total = int(round(months))
    return f"{total // 12} y {total % 12} m"


# What every front answers for a scored film, in this order (the REST and KServe answers, the scored
# worklist's columns): the months, the interval, the SDS and call, the marking and the view.
ANSWER_FIELDS = (
    "bone_age_months",
    "bone_age",
    "interval_low_months",
    "interval_high_months",
    "interval_level",
    "sds",
    "call",
    "warning",
    "orientation",
)


@dataclass
class Prediction:
    source: str
    sex: str | None = None
    bone_age_months: float | None = None
    bone_age: str | None = None
    interval_months: tuple[float, float] | None = None
    interval_level: float | None = None
    chronological_age_months: float | None = None
    assessment: dict | None = None
    rejected: str | None = None
    warning: str | None = None
    # How unlike the model's training films (boneage.model.ood): the largest of its scores as a multiple of
    # that score's threshold; above 1 the image is refused. None for a model without a check.
    ood_score: float | None = None
    # How the film arrived when it was not upright ("turned 90° clockwise", "mirrored ..."): it was
    # put upright before it was scored (boneage.model.ood). None: upright, or a model without a check.
    orientation: str | None = None
    # Each of the check's scores as a multiple of its threshold (what the monitor watches).
    ood_parts: dict[str, float] | None = None
    box: tuple[int, int, int, int] | None = None
    prepared: np.ndarray | None = field(default=None, repr=False)

    def answer(self) -> dict:
        """ANSWER_FIELDS of this prediction (None where a field has no value)."""
        low, high = self.interval_months or (None, None)
        assessment = self.assessment or {}
        return {
            "bone_age_months": self.bone_age_months,
            "bone_age": self.bone_age,
            "interval_low_months": None if low is None else round(low, 2),
            "interval_high_months": None if high is None else round(high, 2),
            "interval_level": self.interval_level,
            "sds": assessment.get("sds"),
            "call": assessment.get("call"),
            "warning": self.warning,
            "orientation": self.orientation,
        }

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("prepared",)}
        if self.interval_months:
            out["interval_months"] = [round(v, 2) for v in self.interval_months]
        return out


class Predictor:
    def __init__(self, model, config: PredictorConfig, ood: OodCheck | None = None):
        self.model, self.config, self.ood = model, config, ood
        self.preprocess_cfg = config.preprocess_config()
        self._scoring = scoring_model(model) if ood is not None else None

    @classmethod
    def from_files(cls, model_path: str | Path, config_path: str | Path, ood_path: str | Path | None = None) -> Predictor:
        from boneage.model.network import load_predict_model

        ood = OodCheck.load(Path(ood_path)) if ood_path else None
        return cls(load_predict_model(Path(model_path)), PredictorConfig.read(Path(config_path)), ood)

    @classmethod
    def load(cls, where: str) -> Predictor:
        """A training output folder, an MLflow model's folder (its files under artifacts/), or an
        MLflow model URI (models:/boneage@champion, runs:/...)."""
        return cls.from_folder(model_folder(where), where)

    @classmethod
    def from_folder(cls, folder: Path, name: str) -> Predictor:
        """The model in ``folder``: its files at the top (train's output) or below it (a logged model)."""
        models, configs, checks = (find_model_file(folder, n) for n in (MODEL_FILE, PREDICTOR_FILE, OOD_FILE))
        if models is None or configs is None:
            raise BoneageError(f"{name}: not a boneage model (no {MODEL_FILE} and {PREDICTOR_FILE} in {folder})")
        return cls.from_files(models, configs, checks)

    def warning(self) -> str | None:
        """Every marking this model's outputs carry, or None for a checked real-data model."""
        parts = [w for w in (self.config.warning(), None if self.ood else UNCHECKED_WARNING) if w]
        return "; ".join(parts) or None

    @property
    def image_size(self) -> int:
        return self.preprocess_cfg.image_size

    def prepare(self, radiograph: Radiograph) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        from boneage.data.handcrop import prepare

        image, box = prepare(radiograph.pixels, self.preprocess_cfg)
        return image, (box.x0, box.y0, box.x1, box.y1)

    def predict_prepared(self, images: np.ndarray, males: np.ndarray) -> Assessment:
        """Months for prepared images; with a check (which puts them upright first), each image's
        out-of-distribution score (above 1: refused), the reason it is refused (None when it
        passes) and the view it arrived in."""
        batch = {
            "image": images.reshape(-1, self.image_size, self.image_size, 1).astype(np.uint8),
            "male": np.asarray(males, dtype=np.float32).reshape(-1, 1),
        }
        if self.ood is None:
            months = np.asarray(self.model.predict_on_batch(batch)).reshape(-1)
            return Assessment(
                months, np.full(len(images), np.nan), [None] * len(images), np.zeros(len(images), int), batch["image"]
            )
        return score_checked(self._scoring, self.ood, batch)

    @staticmethod
    def rejected(source: str, reason: str) -> _Admitted:
        """A request refused before it reached the model, with the reason."""
        return _Admitted(Prediction(source=source, rejected=reason))

    @staticmethod
    def admit_prepared(image: np.ndarray, male: bool, source: str) -> _Admitted:
        """An image already prepared the way this model's preprocessing prepares films (a
        preprocessed split's), ready for ``finish``."""
        return _Admitted(Prediction(source=source, sex="M" if male else "F"), image, bool(male))

    def admit(self, radiograph: Radiograph, source: str, sex=None, chronological_age=None) -> _Admitted:
        """Check the request and prepare the image; bad input gives a rejected Prediction."""
        result = Prediction(source=source)
        try:
            sex = sex if sex not in (None, "") else radiograph.patient_sex
            if sex in (None, "") and self.config.use_sex:
                raise BadInputError("sex unknown: pass --sex M or F (the DICOM header has no PatientSex)")
            male = parse_sex(sex) if sex not in (None, "") else False
            result.sex = "M" if male else "F"
            ca = parse_optional_age(chronological_age, "chronological age")
            if ca is None and radiograph.patient_age_months is not None:
                ca = parse_optional_age(radiograph.patient_age_months, "chronological age")
            image, result.box = self.prepare(radiograph)
        except BadInputError as exc:
            result.rejected = exc.reason
            return _Admitted(result)
        return _Admitted(result, image, male, ca)

    def _complete(self, admitted: _Admitted, months: float) -> Prediction:
        result = admitted.result
        months = float(np.clip(months, MIN_AGE_MONTHS, MAX_AGE_MONTHS))
        half = self.config.halfwidth(months)
        result.prepared = admitted.image
        result.bone_age_months = round(months, 2)
        result.bone_age = years_and_months(months)
        result.interval_months = (max(MIN_AGE_MONTHS, months - half), min(MAX_AGE_MONTHS, months + half))
        result.interval_level = self.config.interval_level
        result.warning = self.warning()
        if admitted.chronological_age is not None:
            result.chronological_age_months = admitted.chronological_age
            # A synthetic model's number is no child's bone age: no clinical call from it.
            if self.config.dataset_kind != "synthetic":
                result.assessment = assess(months, admitted.chronological_age, admitted.male).as_dict()
        return result

    def finish(self, admitted: list[_Admitted], batch_size: int = DEFAULT_BATCH) -> list[Prediction]:
        """Run the model over the admitted images, one call per ``batch_size`` of them, and complete
        the predictions; an image the out-of-distribution check refuses gets no bone age (rejected
        ones pass through in place)."""
        ready = [a for a in admitted if a.image is not None]
        for first in range(0, len(ready), batch_size):
            batch = ready[first : first + batch_size]
            judged = self.predict_prepared(np.stack([a.image for a in batch]), np.array([a.male for a in batch]))
            for i, (a, m) in enumerate(zip(batch, judged.months, strict=True)):
                a.image = judged.images[i].reshape(a.image.shape)  # upright: what the model saw
                if self.ood is not None:
                    a.result.ood_score = round(float(judged.ratios[i]), 3)
                    a.result.orientation = describe_view(int(judged.views[i]))
                    a.result.ood_parts = {p: round(float(r), 3) for p, r in zip(PARTS, judged.part_ratios[i], strict=True)}
                if judged.reasons[i]:
                    a.result.rejected = judged.reasons[i]
                    continue
                self._complete(a, float(m))
        return [a.result for a in admitted]

    def score(self, radiograph: Radiograph, source: str, sex=None, chronological_age=None) -> Prediction:
        """One radiograph to a Prediction; bad input gives a rejected Prediction, not an exception."""
        return self.finish([self.admit(radiograph, source, sex, chronological_age)])[0]


@dataclass
class _Admitted:
    """A request past its checks: the prepared image waits for the model (None when rejected)."""

    result: Prediction
    image: np.ndarray | None = None
    male: bool = False
    chronological_age: float | None = None


def model_folder(where: str) -> Path:
    """The local folder of a model: ``where`` itself (a folder, or a file in it), or, for an MLflow
    model URI (models:/boneage@champion, runs:/..., any scheme://), its artifacts downloaded."""
    if "://" in where or where.startswith("models:/") or where.startswith("runs:/"):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=where))
        except (MlflowException, OSError) as exc:
            raise BoneageError(
                f"{where}: cannot fetch the model from MLflow ({mlflow.get_tracking_uri()}): {str(exc).splitlines()[0]}"
            ) from None
    folder = Path(where)
    if not folder.exists():
        raise BoneageError(f"{where}: no such model folder or file")
    return folder.parent if folder.is_file() else folder


def find_model_file(folder: Path, name: str) -> Path | None:
    """A model's file: at the top of ``folder`` (train's output) or below it (a logged model)."""
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.rglob(name))
    return found[0] if found else None


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to the images below them (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out


def is_url(location: str) -> bool:
    """A location an fsspec filesystem reads (gs://bucket/film.png), not a local path."""
    return "://" in location


def read_film(location: str | Path, max_pixels: int) -> Radiograph:
    """A film from a local path or a URL (gs://...). A missing film is bad input (its row is
    rejected); any other failure to read a URL is raised, so that the step reading it is retried."""
    location = str(location)
    if not is_url(location):
        return read_radiograph(Path(location), max_pixels)
    import fsspec

    try:
        with fsspec.open(location, "rb", **fsspec_options(location)) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise BadInputError(f"{location}: no such file") from None
    return read_radiograph_bytes(data, max_pixels)


def _read_and_admit(predictor: Predictor, path: str | Path, sex, chronological_age) -> _Admitted:
    try:
        radiograph = read_film(path, predictor.config.max_image_pixels)
    except BadInputError as exc:
        return _Admitted(Prediction(source=str(path), rejected=exc.reason))
    return predictor.admit(radiograph, str(path), sex, chronological_age)


def _score_in_batches(predictor: Predictor, items: list, admit, batch_size: int, workers: int, unit: str) -> list[Prediction]:
    """Predictions in input order. Items are read and prepared by ``admit`` on a thread pool (OpenCV
    releases the GIL while it decodes and resizes) and scored ``batch_size`` at a time: one model
    call per batch instead of one per image."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    results: list[Prediction] = []
    with (
        ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool,
        tqdm(total=len(items), desc="predict", unit=unit, disable=len(items) < 2) as bar,
    ):
        for first in range(0, len(items), batch_size):
            chunk = items[first : first + batch_size]
            results.extend(predictor.finish(list(pool.map(admit, chunk)), batch_size))
            bar.update(len(chunk))
    return results


def predict_files(
    predictor: Predictor, paths: list[Path], sex=None, chronological_age=None, batch_size: int = DEFAULT_BATCH, workers: int = 0
) -> list[Prediction]:
    """Predictions for files and folders of them, in input order, all with one sex and age."""
    return _score_in_batches(
        predictor,
        expand_inputs(paths),
        lambda p: _read_and_admit(predictor, p, sex, chronological_age),
        batch_size,
        workers,
        unit="img",
    )


# A worklist: one film per row, its sex and optionally an id and the chronological age (months).
WORKLIST_REQUIRED = ("path", "sex")
WORKLIST_OPTIONAL = ("id", "chronological_age")
WORKLIST_OUTPUT_COLUMNS = ["id", "path", "sex", "chronological_age_months", *ANSWER_FIELDS, "rejected", "csv_line"]


@dataclass(frozen=True)
class WorklistRow:
    csv_line: int
    id: str
    path: str  # a local path or a URL (gs://...)
    sex: str
    chronological_age: str


def _worklist_text(table: str) -> str:
    if not is_url(table):
        if not Path(table).is_file():
            raise BoneageError(f"{table}: worklist not found")
        return Path(table).read_bytes().decode("utf-8-sig")
    import fsspec

    try:
        with fsspec.open(table, "rb", **fsspec_options(table)) as fh:
            return fh.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise BoneageError(f"{table}: worklist not found") from None


def _resolve(table: str, raw_path: str) -> str:
    """A row's path: as given when absolute (or a URL), else against the worklist's own folder."""
    if not raw_path or is_url(raw_path) or Path(raw_path).is_absolute():
        return raw_path
    if is_url(table):
        return f"{table.rsplit('/', 1)[0]}/{raw_path}"
    return str(Path(table).parent / raw_path)


def read_worklist(table: str | Path) -> list[WorklistRow]:
    """Rows of a worklist CSV (a local file or a URL); relative paths resolve against the CSV's own
    folder. A missing file or column is fatal (nothing could be scored); a bad value only rejects
    its own row later."""
    import csv
    import io

    table = str(table)
    try:
        reader = csv.DictReader(io.StringIO(_worklist_text(table), newline=""))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in WORKLIST_REQUIRED if c not in header]
        if missing:
            raise BoneageError(
                f"{table}: worklist has no column {', '.join(missing)} "
                f"(needs {', '.join(WORKLIST_REQUIRED)}; optional {', '.join(WORKLIST_OPTIONAL)})"
            )
        reader.fieldnames = header
        rows = []
        for record in reader:
            raw_path = (record.get("path") or "").strip()
            rows.append(
                WorklistRow(
                    csv_line=reader.line_num,
                    id=(record.get("id") or "").strip() or raw_path,
                    path=_resolve(table, raw_path),
                    sex=(record.get("sex") or "").strip(),
                    chronological_age=(record.get("chronological_age") or "").strip(),
                )
            )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BoneageError(f"{table}: not a readable CSV worklist ({exc})") from None
    return rows


def _admit_worklist_row(predictor: Predictor, row: WorklistRow) -> _Admitted:
    source = row.path
    if not row.path:
        return _Admitted(Prediction(source=source, rejected="no path given"))
    if not row.sex:
        return _Admitted(Prediction(source=source, rejected="sex missing: the worklist's sex column must be M or F"))
    return _read_and_admit(predictor, row.path, row.sex, row.chronological_age or None)


def predict_worklist(
    predictor: Predictor, rows: list[WorklistRow], batch_size: int = DEFAULT_BATCH, workers: int = 0
) -> list[Prediction]:
    """One prediction or one rejection per worklist row, in order; a bad row never stops the others."""
    return _score_in_batches(predictor, rows, lambda r: _admit_worklist_row(predictor, r), batch_size, workers, unit="row")


def worklist_table(rows: list[WorklistRow], results: list[Prediction]):
    """The scored worklist as a table: the input columns, then the prediction or the rejection."""
    import pandas as pd

    records = []
    for row, r in zip(rows, results, strict=True):
        answer = r.answer()
        records.append(
            {
                "id": row.id,
                "path": str(row.path),
                "sex": r.sex or row.sex,
                "chronological_age_months": r.chronological_age_months,
                **answer,
                "warning": answer["warning"] or "",
                "orientation": answer["orientation"] or "",
                "rejected": r.rejected or "",
                "csv_line": row.csv_line,
            }
        )
    return pd.DataFrame(records, columns=WORKLIST_OUTPUT_COLUMNS)
