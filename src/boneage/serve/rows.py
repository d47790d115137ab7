"""A request's rows, whatever server takes them (the MLflow pyfunc, KServe): base64 image bytes, sex
and optionally the chronological age in; the bone age with its interval, SDS and call, the marking,
how the film arrived and the intended-use notice out. A bad row, or a film unlike the model's
training films, fails the request with a BadRequest naming each such row and why (the servers answer
it with HTTP 400, never a 500); every row is judged first, so that the monitor records them all."""

from __future__ import annotations

import base64
import binascii

from boneage.contracts import INTENDED_USE_NOTICE
from boneage.data.imaging import read_radiograph_bytes
from boneage.errors import BadInputError
from boneage.serve.predict import ANSWER_FIELDS, Prediction, Predictor

# The answer's fields, in order (the pyfunc's signature and KServe's V2 outputs name the same).
OUTPUT_FIELDS = (*ANSWER_FIELDS, "notice")


class BadRequest(Exception):
    """A request that cannot be answered as sent; the message names the rows and the reasons."""


def _admitted(predictor: Predictor, i: int, row: dict):
    source = f"row {i}"
    try:
        raw = base64.b64decode(str(row.get("image") or ""), validate=True)
    except (binascii.Error, ValueError):
        return predictor.rejected(source, "'image' is not valid base64")
    try:
        radiograph = read_radiograph_bytes(raw, predictor.config.max_image_pixels)
    except BadInputError as exc:
        return predictor.rejected(source, exc.reason)
    return predictor.admit(radiograph, source, row.get("sex"), row.get("chronological_age_months"))


def judge_rows(predictor: Predictor, rows: list[dict]) -> list[Prediction]:
    """Every row to a Prediction, in order; a row that cannot be scored is a rejected one."""
    if any("image" not in row for row in rows):
        raise BadRequest("each row needs an 'image': base64 of the radiograph's bytes")
    return predictor.finish([_admitted(predictor, i, row) for i, row in enumerate(rows)])


def answer(results: list[Prediction]) -> list[dict]:
    """The answer's rows; a BadRequest naming every rejected row and why."""
    rejected = [r for r in results if r.rejected]
    if rejected:
        raise BadRequest("; ".join(f"{r.source}: {r.rejected}" for r in rejected))
    out = []
    for result in results:
        out.append({**result.answer(), "notice": INTENDED_USE_NOTICE})
    return out
