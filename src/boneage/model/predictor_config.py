"""predictor.json: what scoring needs besides the weights (preprocessing, the calibrated interval,
the model's provenance), written by train beside the model and read by predict and evaluate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from boneage.config import Params, PreprocessConfig
from boneage.contracts import write_json_atomic
from boneage.errors import BoneageError
from boneage.model.calibration import IntervalCalibration, band_index

SYNTHETIC_WARNING = (
    "SYNTHETIC-TRAINED MODEL: trained on drawn films, not radiographs; not a bone age of this child "
    "(no SDS, no delayed/advanced call)"
)
UNKNOWN_PROVENANCE_WARNING = "MODEL OF UNKNOWN PROVENANCE: it records no training data; retrain it before clinical use"


@dataclass
class PredictorConfig:
    """What scoring needs besides the weights; written by train next to model.keras."""

    preprocess: dict
    max_image_pixels: int
    use_sex: bool
    interval_level: float
    interval_halfwidth_months: float
    # Band-conditional widths (train.interval_by_band): band i spans predicted ages
    # [edges[i], edges[i+1]) months, ages beyond the edges join the end bands. Empty: one width.
    interval_band_edges_months: list[float] = field(default_factory=list)
    interval_band_halfwidths_months: list[float] = field(default_factory=list)
    # What the model learned from (boneage.training.train writes it): dataset kind, fingerprint and films,
    # resolution, recipe. Empty for models trained before provenance was recorded.
    provenance: dict = field(default_factory=dict)

    @classmethod
    def of(cls, params: Params, interval: IntervalCalibration, provenance: dict) -> PredictorConfig:
        """What a model trained with ``params`` and calibrated to ``interval`` needs to score films."""
        return cls(
            preprocess=params.preprocess.model_dump(mode="json"),
            max_image_pixels=params.data.max_image_pixels,
            use_sex=params.model.use_sex,
            interval_level=params.train.interval_level,
            interval_halfwidth_months=interval.halfwidth_months,
            interval_band_edges_months=interval.band_edges_months,
            interval_band_halfwidths_months=interval.band_halfwidths_months,
            provenance=provenance,
        )

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.model_validate(self.preprocess)

    @property
    def dataset_kind(self) -> str:
        return self.provenance.get("dataset_kind", "unknown")

    def warning(self) -> str | None:
        """The marking every output of a non-clinical model carries (None for a real-data model)."""
        if self.dataset_kind == "real":
            return None
        if self.dataset_kind == "synthetic":
            return SYNTHETIC_WARNING
        return UNKNOWN_PROVENANCE_WARNING

    def halfwidth(self, months: float) -> float:
        """The interval's half-width for a film predicted at ``months``."""
        if not self.interval_band_halfwidths_months:
            return self.interval_halfwidth_months
        return self.interval_band_halfwidths_months[int(band_index([months], self.interval_band_edges_months)[0])]

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.__dict__)

    @classmethod
    def read(cls, path: Path) -> PredictorConfig:
        if not Path(path).is_file():
            raise BoneageError(f"{path}: no predictor settings (a model trained before `boneage predict` existed?)")
        return cls(**json.loads(Path(path).read_text()))
