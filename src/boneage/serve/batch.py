"""Scoring an archive in shards: the library behind the batch pipeline's three steps
(boneage.orchestrate.batch_pipeline), each usable on its own.

1. ``split_worklist``: a worklist CSV (local or gs://, the kind `boneage predict --table` reads) cut
   into shards of about ``batch.shard_films`` rows (at most ``batch.max_shards``), each row keeping
   its line in the worklist and its film's absolute location;
2. ``score_shard``: one shard scored by the registered model, one output row per input row (a film
   that cannot be scored is a rejected row with its reason, never a missing one);
3. ``merge_scored``: the shards' rows back in worklist order, checked against the worklist itself:
   every row is counted, and a row no shard returned is written as "not scored" and fails the step
   after the summary is written.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.data.gcs import fsspec_options
from boneage.errors import BoneageError
from boneage.serve.predict import Predictor, WorklistRow, is_url, predict_worklist, read_worklist, worklist_table

SHARD_COLUMNS = ("csv_line", "id", "path", "sex", "chronological_age")
SCORED_FILE, SUMMARY_FILE = "scored.csv", "summary.json"
NOT_SCORED = "not scored: no shard returned this row"
# Predicted ages are summarised at these quantiles.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def shard_size(rows: int, shard_films: int, max_shards: int) -> int:
    """Rows per shard: ``shard_films``, or more when that would make more than ``max_shards``."""
    return max(1, shard_films, math.ceil(rows / max_shards))


def split_worklist(worklist: str, out_dir: Path, shard_films: int, max_shards: int) -> list[str]:
    """Write the shards as CSV files in ``out_dir``; their file names, in order."""
    rows = read_worklist(worklist)
    if not rows:
        raise BoneageError(f"{worklist}: the worklist has no rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, names = shard_size(len(rows), shard_films, max_shards), []
    for k, first in enumerate(range(0, len(rows), size)):
        names.append(f"shard-{k:05d}.csv")
        with open(out_dir / names[-1], "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(SHARD_COLUMNS)
            writer.writerows((r.csv_line, r.id, r.path, r.sex, r.chronological_age) for r in rows[first : first + size])
    return names


def read_shard(path: Path) -> list[WorklistRow]:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [
        WorklistRow(int(r["csv_line"]), r["id"], r["path"], r["sex"], r["chronological_age"]) for r in table.to_dict("records")
    ]


@dataclass
class ShardResult:
    rows: int
    rejected: int
    seconds: float

    @property
    def films_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")


def score_shard(predictor: Predictor, shard: Path, out_file: Path, workers: int) -> ShardResult:
    """Score one shard into ``out_file`` (the scored-worklist columns, worklist line numbers)."""
    rows = read_shard(shard)
    start = time.perf_counter()
    results = predict_worklist(predictor, rows, workers=workers)
    seconds = time.perf_counter() - start
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    worklist_table(rows, results).to_csv(out_file, index=False)
    return ShardResult(len(rows), sum(1 for r in results if r.rejected), seconds)


def reason_kind(reason: str, path: str) -> str:
    """A rejection's reason without the film's own details: what the summary counts."""
    text = reason.removeprefix(f"{path}: ") if path else reason
    for stop in (" (", ";", ":"):
        text = text.split(stop, 1)[0]
    return text.strip() or "rejected"


@dataclass
class BatchSummary:
    worklist: str
    model: str
    rows: int
    scored: int
    rejected: int
    not_scored: int
    shards: int
    reasons: dict[str, int] = field(default_factory=dict)
    predicted_months: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def merge_scored(worklist: str, scored_files: list[Path]) -> tuple[pd.DataFrame, list[int]]:
    """The shards' rows in worklist order, one per worklist row; and the worklist lines no shard returned."""
    expected = read_worklist(worklist)
    frames = [pd.read_csv(f, dtype={"id": str, "rejected": str, "warning": str}, keep_default_na=False) for f in scored_files]
    scored = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["csv_line"])
    scored = scored.drop_duplicates("csv_line", keep="last").set_index("csv_line")
    missing = [r.csv_line for r in expected if r.csv_line not in scored.index]
    if missing:
        lost = set(missing)
        gaps = [
            {"csv_line": r.csv_line, "id": r.id, "path": r.path, "sex": r.sex, "rejected": NOT_SCORED}
            for r in expected
            if r.csv_line in lost
        ]
        scored = pd.concat([scored, pd.DataFrame(gaps).set_index("csv_line")])
    lines = [r.csv_line for r in expected]
    return scored.loc[lines].reset_index(), missing


def summarise(table: pd.DataFrame, worklist: str, model: str, shards: int, missing: list[int]) -> BatchSummary:
    rejected = table["rejected"].fillna("").astype(str) != ""
    months = pd.to_numeric(table.loc[~rejected, "bone_age_months"], errors="coerce").dropna().to_numpy()
    refused = table.loc[rejected]
    reasons = Counter(reason_kind(r, p) for r, p in zip(refused["rejected"], refused["path"], strict=True))
    spread = {f"p{round(100 * q)}": float(np.quantile(months, q)) for q in QUANTILES} if len(months) else {}
    if len(months):
        spread |= {"mean": float(months.mean()), "sd": float(months.std())}
    return BatchSummary(
        worklist=worklist,
        model=model,
        rows=len(table),
        scored=int((~rejected).sum()),
        rejected=int(rejected.sum()) - len(missing),
        not_scored=len(missing),
        shards=shards,
        reasons=dict(reasons.most_common()),
        predicted_months=spread,
    )


def write_outputs(table: pd.DataFrame, summary: BatchSummary, out_uri: str) -> tuple[str, str]:
    """The scored worklist and its summary under ``out_uri`` (a folder or gs://bucket/prefix)."""
    import fsspec

    base = out_uri.rstrip("/")
    scored_at, summary_at = f"{base}/{SCORED_FILE}", f"{base}/{SUMMARY_FILE}"
    if not is_url(base):
        Path(base).mkdir(parents=True, exist_ok=True)
    with fsspec.open(scored_at, "w", **fsspec_options(scored_at)) as fh:
        table.to_csv(fh, index=False)
    with fsspec.open(summary_at, "w", **fsspec_options(summary_at)) as fh:
        fh.write(json.dumps(summary.as_dict(), indent=2))
    return scored_at, summary_at


def log_batch_run(params, summary: BatchSummary, outputs: tuple[str, str], seconds: float) -> str:
    """One MLflow run for the whole batch: its counts, reasons, predicted-age spread and outputs."""
    import mlflow

    from boneage import tracking

    experiment_id = tracking.connect(params)
    with mlflow.start_run(experiment_id=experiment_id, run_name="batch-score", tags={"boneage.kind": "batch"}) as run:
        mlflow.log_params({"worklist": summary.worklist, "model": summary.model, "shards": summary.shards})
        mlflow.set_tags({"scored_worklist": outputs[0], "summary": outputs[1]})
        counts = {k: getattr(summary, k) for k in ("rows", "scored", "rejected", "not_scored")}
        mlflow.log_metrics({**counts, "work_seconds": seconds})
        mlflow.log_metrics({f"predicted_months.{k}": v for k, v in summary.predicted_months.items()})
        mlflow.log_dict(summary.as_dict(), SUMMARY_FILE)
    return run.info.run_id
