"""A trained model behind KServe's own Python server: a ``kserve.Model`` over boneage's Predictor, run
by ``kserve.ModelServer``, speaking both of KServe's protocols:

- V1: ``POST /v1/models/NAME:predict`` with ``{"instances": [{"image": BASE64, "sex": "F",
  "chronological_age_months": 126}, ...]}`` -> ``{"predictions": [{"bone_age_months": ..., ...}]}``;
- Open Inference (V2): ``POST /v2/models/NAME/infer`` with BYTES inputs ``image`` and ``sex``, and
  optionally ``chronological_age_months``: FP64 when every film's is known, or BYTES with "" where
  one is not (JSON has no NaN) -> one output per answer field (boneage.serve.rows.OUTPUT_FIELDS):
  FP64 for the months and the interval, which every answered film has; BYTES for the rest, "" where
  a film has none (the SDS without a chronological age).

Each row goes through the same code as every other scoring path (crop, model, interval, the
out-of-distribution check that puts films upright or refuses them); a bad row or a refused film is
HTTP 400 with the row and the reason. Every film is recorded for the monitor when BONEAGE_RECORDS
names a sink. Readiness and liveness are KServe's own (/v2/health/ready, /v2/health/live,
/v1/models/NAME).

It runs in the serving environment (requirements-serve.txt, `make serve-kserve`, the serving image):
the kserve package cannot share the pinned stack. KServe's storage initializer puts the registered
version's files (model.keras, predictor.json, ood.npz) in /mnt/models.

    python -m boneage.serve.kserve_model --model_dir models --model_name boneage --http_port 8080
"""

from __future__ import annotations

import argparse
import os

import kserve
from kserve.errors import InvalidInput

from boneage.serve.monitoring import MODEL_ENV, Clock, record_predictions
from boneage.serve.predict import Predictor
from boneage.serve.rows import OUTPUT_FIELDS, BadRequest, answer, judge_rows

DEFAULT_MODEL_DIR = "/mnt/models"
# The answer's fields that every answered film has, sent as FP64; the others as BYTES.
V2_NUMBERS = {"bone_age_months", "interval_low_months", "interval_high_months", "interval_level"}


def _v2_rows(request) -> list[dict]:
    """An Open Inference request's inputs as the rows every scoring path takes."""
    columns = {}
    for tensor in request.inputs:
        values = list(tensor.data or [])
        columns[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
    if "image" not in columns:
        raise InvalidInput("the request needs a BYTES input 'image': base64 of each radiograph's bytes")
    n = len(columns["image"])
    if any(len(values) != n for values in columns.values()):
        raise InvalidInput("every input needs one value per image")
    ages = columns.get("chronological_age_months", [None] * n)
    return [
        {
            "image": columns["image"][i],
            "sex": columns.get("sex", [None] * n)[i],
            "chronological_age_months": None if ages[i] in (None, "") else ages[i],
        }
        for i in range(n)
    ]


def _v2_response(name: str, rows: list[dict]):
    outputs = []
    for field in OUTPUT_FIELDS:
        values = [row[field] for row in rows]
        if field in V2_NUMBERS:
            outputs.append(kserve.InferOutput(field, [len(rows)], "FP64", [float(v) for v in values]))
        else:
            outputs.append(kserve.InferOutput(field, [len(rows)], "BYTES", ["" if v is None else str(v) for v in values]))
    return kserve.InferResponse(response_id="", model_name=name, infer_outputs=outputs)


class BoneAgeModel(kserve.Model):
    """The model a KServe predictor serves (see the module)."""

    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.predictor: Predictor | None = None

    def load(self) -> bool:
        self.predictor = Predictor.load(self.model_dir)
        os.environ.setdefault(MODEL_ENV, self.name)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        v2 = isinstance(payload, kserve.InferRequest)
        if v2:
            rows = _v2_rows(payload)
        elif isinstance(payload, dict) and isinstance(payload.get("instances"), list):
            rows = payload["instances"]
        else:
            raise InvalidInput('expected {"instances": [...]} (V1) or an Open Inference request (V2)')
        if not rows or not all(isinstance(row, dict) for row in rows):
            raise InvalidInput("each instance is an object: {image, sex, chronological_age_months}")
        try:
            with Clock() as clock:
                results = judge_rows(self.predictor, rows)
            record_predictions(results, clock.seconds)
            answered = answer(results)
        except BadRequest as exc:
            raise InvalidInput(str(exc)) from None
        return _v2_response(self.name, answered) if v2 else {"predictions": answered}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], description=__doc__)
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="a training output folder (model.keras, predictor.json)")
    args, _ = parser.parse_known_args()
    model = BoneAgeModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
