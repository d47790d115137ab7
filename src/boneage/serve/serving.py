"""The registered model as an MLflow pyfunc that does its own preprocessing.

Logged as code (MLflow "models from code"): this file is the model's definition, so nothing is
pickled. A request carries rows of ``image`` (base64 of the PNG, JPEG or DICOM bytes), ``sex``
(M/F) and optionally ``chronological_age_months``. For example::

    mlflow models serve -m models:/boneage@champion --env-manager local -p 5002
    curl -X POST localhost:5002/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_records": [{"image": "<base64 PNG>", "sex": "F", "chronological_age_months": 120}]}'

A bad row (not an image, no hand, unlike the model's training films, a bad sex or age) fails the request with HTTP 400 and a JSON
error naming the row and the reason, never a 500.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class BoneAgeService(PythonModel):
    def load_context(self, context):
        from boneage.serve.predict import Predictor

        self.predictor = Predictor.from_files(
            context.artifacts["keras_model"], context.artifacts["predictor_config"], context.artifacts.get("ood_check")
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from boneage.serve.scoring import score_records

        return score_records(self.predictor, model_input)


mlflow.models.set_model(BoneAgeService())
