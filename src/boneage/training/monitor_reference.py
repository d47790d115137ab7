"""What `boneage monitor` compares a server's records with: the model's validation films scored the
way a server scores a film (Predictor.finish: the check that puts films upright or refuses them, the
months clipped to the label range), one record each, written beside the model as
monitor-reference.csv and logged with it. The validation films set the check's thresholds, so their
refusal share is the check's expected one (1 - train.ood.quantile)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from boneage.config import Params
from boneage.contracts import MONITOR_REFERENCE_FILE
from boneage.serve.monitoring import REFERENCE_FIELDS, records_of
from boneage.serve.predict import Predictor
from boneage.training.dataset import make_dataset


def write_reference(params: Params, data_dir: Path, out_dir: Path) -> Path | None:
    """Score the validation split of ``data_dir`` with the model in ``out_dir`` and write its
    records there; None (and no file) without validation films, or for a model without an
    out-of-distribution check (an ensemble member's: the monitor watches the check)."""
    out_dir = Path(out_dir)
    path = out_dir / MONITOR_REFERENCE_FILE
    if not params.train.ood.enabled:
        path.unlink(missing_ok=True)
        return None
    predictor = Predictor.from_folder(out_dir, str(out_dir))
    size, batch = params.preprocess.image_size, params.train.batch_size
    records: list[dict] = []
    for inputs, _, ids in make_dataset(Path(data_dir), "val", size, batch, with_ids=True):
        images, males = inputs["image"].numpy(), inputs["male"].numpy().reshape(-1)
        admitted = [
            predictor.admit_prepared(image, male > 0.5, film.decode())
            for image, male, film in zip(images, males, ids.numpy(), strict=True)
        ]
        records.extend(records_of(predictor.finish(admitted, batch), 0.0, "reference"))
    if not records:
        path.unlink(missing_ok=True)
        return None
    pd.DataFrame(records)[list(REFERENCE_FIELDS)].to_csv(path, index=False)
    refused = sum(r["refused"] for r in records)
    print(f"monitoring reference: {len(records)} validation films, {refused} refused -> {path}", file=sys.stderr)
    return path
