"""What a server leaves for the monitor: one record per film it was sent (the time, the model, each
of the check's scores, the refusal and its reason, the predicted age, the view the film arrived in,
the latency), written to the sink the deployment names in BONEAGE_RECORDS: a folder, or any fsspec
URL such as gs://bucket/prefix, one JSON-lines file per request (objects in a bucket cannot be
appended to). `boneage monitor` reads a window of them back."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime

from boneage.data.gcs import fsspec_options
from boneage.errors import BoneageError
from boneage.model.ood import PARTS

RECORDS_ENV = "BONEAGE_RECORDS"
# The model a server serves, as the deployment names it (a registered version, an InferenceService).
MODEL_ENV = "BONEAGE_MODEL_NAME"
RECORD_FIELDS = (
    "time", "model", "film", "sex", "refused", "reason", "bone_age_months", "view", "ood_score", *PARTS, "latency_ms",
)  # fmt: skip
# What a model's reference (its validation films, boneage.training.monitor_reference) keeps of them.
REFERENCE_FIELDS = ("film", "sex", "refused", "reason", "bone_age_months", "view", "ood_score", *PARTS)


def records_of(results, seconds: float, model: str) -> list[dict]:
    """The records of one request's Predictions, which took ``seconds`` in all."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    latency = 1000.0 * seconds / max(1, len(results))
    out = []
    for r in results:
        parts = r.ood_parts or {}
        out.append(
            {
                "time": now,
                "model": model,
                "film": r.source,
                "sex": r.sex,
                "refused": bool(r.rejected),
                "reason": r.rejected or "",
                "bone_age_months": r.bone_age_months,
                "view": r.orientation or "upright",
                "ood_score": r.ood_score,
                **{part: parts.get(part) for part in PARTS},
                "latency_ms": round(latency, 1),
            }
        )
    return out


def write(records: list[dict], sink: str) -> str:
    """One JSON-lines file of ``records`` under ``sink`` (a folder or an fsspec URL); its path."""
    import fsspec

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")  # files sort in the order they were written
    path = f"{sink.rstrip('/')}/records-{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
    with fsspec.open(path, "w", auto_mkdir=True, **fsspec_options(path)) as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))
    return path


class Clock:
    """Times a request, for its records' latency."""

    def __enter__(self) -> Clock:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started


def record_predictions(results, seconds: float = 0.0) -> str | None:
    """Write the records of one request's results where BONEAGE_RECORDS says (nothing when unset)."""
    sink = os.environ.get(RECORDS_ENV)
    if not sink or not results:
        return None
    return write(records_of(results, seconds, os.environ.get(MODEL_ENV, "unnamed")), sink)


def read_records(sink: str, since: str | None = None, until: str | None = None):
    """Every record under ``sink`` whose time lies in [since, until) (ISO times, UTC when they name
    no zone; None: no bound)."""
    import fsspec
    import pandas as pd

    fs, root = fsspec.core.url_to_fs(sink, **fsspec_options(sink))
    frames = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/records-*.jsonl")):
        with fs.open(path, "r") as fh:
            try:
                frame = pd.read_json(fh, lines=True, dtype={"film": str, "reason": str, "sex": str})
            except ValueError as exc:
                raise BoneageError(f"{path}: not a records file ({str(exc).splitlines()[0]})") from None
        missing = [f for f in RECORD_FIELDS if f not in frame.columns]
        if missing and len(frame):
            raise BoneageError(f"{path}: records without {', '.join(missing)}")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(RECORD_FIELDS))
    records = pd.concat(frames, ignore_index=True)
    times = pd.to_datetime(records["time"], utc=True)
    keep = pd.Series(True, index=records.index)
    if since:
        keep &= times >= _utc(since)
    if until:
        keep &= times < _utc(until)
    return records[keep].reset_index(drop=True)


def _utc(moment: str):
    import pandas as pd

    try:
        stamp = pd.Timestamp(moment)
    except ValueError:
        raise BoneageError(f"{moment!r}: not a time (use ISO 8601, e.g. 2026-12-01T08:00)") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
