"""Scoring rows of a REST request (see boneage.serve.serving): base64 image bytes, sex and optionally the
chronological age in, bone age with its interval and SDS out (a model not trained on real films
marks every row with a warning and gives no SDS); a bad row, or an image unlike the model's training
films, is an HTTP 400 that names the row and the reason."""

from __future__ import annotations

import base64
import binascii

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from boneage.contracts import INTENDED_USE_NOTICE

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "image"),
            ColSpec("string", "sex", required=False),
            ColSpec("double", "chronological_age_months", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("double", "bone_age_months"),
            ColSpec("string", "bone_age"),
            ColSpec("double", "interval_low_months"),
            ColSpec("double", "interval_high_months"),
            ColSpec("double", "interval_level"),
            ColSpec("double", "sds"),
            ColSpec("string", "call"),
            ColSpec("string", "warning"),
            ColSpec("string", "orientation"),
            ColSpec("string", "notice"),
        ]
    ),
)


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # the scoring server answers 400


def score_records(predictor, frame: pd.DataFrame) -> pd.DataFrame:
    from boneage.data.imaging import read_radiograph_bytes
    from boneage.errors import BadInputError

    if "image" not in frame.columns:
        raise _bad_request("the request needs an 'image' column: base64 of the radiograph's bytes")
    admitted = []
    for i, record in enumerate(frame.to_dict("records")):
        try:
            raw = base64.b64decode(str(record.get("image") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise _bad_request(f"row {i}: 'image' is not valid base64") from None
        try:
            radiograph = read_radiograph_bytes(raw, predictor.config.max_image_pixels)
        except BadInputError as exc:
            raise _bad_request(f"row {i}: {exc.reason}") from None
        ready = predictor.admit(radiograph, f"row {i}", record.get("sex"), record.get("chronological_age_months"))
        if ready.result.rejected:
            raise _bad_request(f"row {i}: {ready.result.rejected}")
        admitted.append(ready)
    results = predictor.finish(admitted)  # one model call per batch of rows
    refused = [r for r in results if r.rejected]  # by the out-of-distribution check
    if refused:
        raise _bad_request("; ".join(f"{r.source}: {r.rejected}" for r in refused))
    rows = []
    for result in results:
        low, high = result.interval_months
        assessment = result.assessment or {}
        rows.append(
            {
                "bone_age_months": result.bone_age_months,
                "bone_age": result.bone_age,
                "interval_low_months": round(low, 2),
                "interval_high_months": round(high, 2),
                "interval_level": result.interval_level,
                "sds": assessment.get("sds"),
                "call": assessment.get("call"),
                "warning": result.warning,
                "orientation": result.orientation,
                "notice": INTENDED_USE_NOTICE,
            }
        )
    return pd.DataFrame(rows)
