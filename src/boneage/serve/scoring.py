"""Scoring rows of a REST request (see boneage.serve.serving): base64 image bytes, sex and optionally the
chronological age in, bone age with its interval and SDS out (a model not trained on real films
marks every row with a warning and gives no SDS); a bad row, or an image unlike the model's training
films, is an HTTP 400 that names the row and the reason."""

from __future__ import annotations

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from boneage.serve.monitoring import Clock, record_predictions
from boneage.serve.rows import OUTPUT_FIELDS, BadRequest, answer, judge_rows

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
    """The pyfunc's answer (boneage.serve.rows), each scored film recorded for the monitor."""
    if "image" not in frame.columns:
        raise _bad_request("the request needs an 'image' column: base64 of the radiograph's bytes")
    with Clock() as clock:
        results = judge_rows(predictor, frame.to_dict("records"))
    record_predictions(results, clock.seconds)
    try:
        return pd.DataFrame(answer(results), columns=list(OUTPUT_FIELDS))
    except BadRequest as exc:
        raise _bad_request(str(exc)) from None
