"""What each Kubeflow component runs: the same library calls as the CLI, with the params given as
YAML text plus the pipeline's run-time parameters, and artifact folders instead of fixed paths.

The components in ``components/`` call these and nothing else, so a pipeline step and its
`boneage` CLI twin cannot drift apart. Each returns a :class:`StepOutcome`: a Markdown summary for
the KFP UI and the metadata to attach to the step's output artifact.
"""

from __future__ import annotations

import functools
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from boneage.config import Params, parse_params
from boneage.contracts import CONTACT_SHEET_FILE, MANIFEST_FILE, METRICS_FILE, REGISTRY_FILE
from boneage.errors import BoneageError
from boneage.tracking import cpu_seconds

INGEST_QUARANTINE_ROWS = 20  # rows of the quarantine table shown in the KFP UI


@dataclass
class StepOutcome:
    markdown: str
    metadata: dict = field(default_factory=dict)
    run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def write_markdown(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.markdown)


def _timed(step):
    """Record the step's own work (the library call, not the pod start or the imports) as
    ``work_seconds`` on its output artifact: shown in the KFP UI, and how `make bench` separates the
    orchestration's overhead from the work."""

    @functools.wraps(step)
    def timed(*args, **kwargs) -> StepOutcome:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        outcome = step(*args, **kwargs)
        wall = time.perf_counter() - start
        outcome.metadata["work_seconds"] = round(wall, 3)
        # What the step used, to size its requests (kfp.step_resources): the peak memory of its
        # process and of its largest worker process (each step is its own process, in a pod or under
        # kfp.local), and its CPU time, workers included, per second of work.
        peak_kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        outcome.metadata["peak_memory_mb"] = round(peak_kb / 1024, 1)
        outcome.metadata["cpu_seconds_per_second"] = round((cpu_seconds() - cpu_start) / max(wall, 1e-9), 2)
        return outcome

    return timed


def load(params_yaml: str, overrides: dict[str, object]) -> Params:
    """Params from the pipeline's params text; empty run-time values leave params.yaml's choice."""
    given = {k: v for k, v in overrides.items() if v not in (None, "")}
    return parse_params(params_yaml, given, source="pipeline parameter params_yaml")


@_timed
def ingest(params: Params, source_uri: str, out_dir: str | Path) -> StepOutcome:
    from boneage.data.ingest import ingest as run_ingest

    result = run_ingest(params, Path(out_dir), source=source_uri or None, bundle_images=True)
    counts = result.manifest["split"].value_counts().to_dict()
    lines = [
        f"# Ingest\n\nSource: `{source_uri or params.data.source}`\n",
        f"- accepted: **{len(result.manifest)}** images, split {counts}",
        f"- quarantined: **{len(result.quarantine)}**\n",
    ]
    if len(result.quarantine):
        lines.append(result.quarantine.head(INGEST_QUARANTINE_ROWS).to_markdown(index=False))
    return StepOutcome("\n".join(lines), {"images": len(result.manifest), "quarantined": len(result.quarantine), **counts})


@_timed
def preprocess(params: Params, ingest_dir: str | Path, out_dir: str | Path) -> StepOutcome:
    from boneage.data.preprocess import preprocess as run_preprocess

    rows = run_preprocess(params, Path(ingest_dir) / MANIFEST_FILE, Path(out_dir))
    size = params.preprocess.image_size
    return StepOutcome(
        f"# Preprocess\n\n{len(rows)} images cropped to the hand and written as "
        f"{size}x{size} TFRecords (contact sheet: `{CONTACT_SHEET_FILE}` in the dataset).\n",
        {"images": len(rows), "image_size": size, "crop": params.preprocess.crop},
    )


@_timed
def train(params: Params, data_dir: str | Path, model_dir: str | Path) -> StepOutcome:
    from boneage.training.train import train as run_train

    result = run_train(params, Path(data_dir), Path(model_dir))
    md = (
        f"# Train\n\n{params.model.backbone} at {params.preprocess.image_size} px, {result.epochs_run} epochs"
        f"{f' (resumed after epoch {result.resumed_from_epoch})' if result.resumed_from_epoch else ''}; "
        f"best validation MAE **{result.best_val_mae:.2f}** months.\n\nMLflow run: `{result.run_id}`\n"
    )
    return StepOutcome(
        md,
        {"mlflow_run_id": result.run_id, "backbone": params.model.backbone, "best_val_mae_months": result.best_val_mae},
        run_id=result.run_id,
    )


@_timed
def member(params: Params, name: str, data_dir: str | Path, model_dir: str | Path) -> StepOutcome:
    """One ensemble member; a failed one records its reason (the ensemble step decides)."""
    from boneage.training.ensemble import train_member

    record = train_member(params, name, Path(data_dir), Path(model_dir))
    if record["status"] != "trained":
        md = f"# Member {name}\n\n**Failed** after {record['attempts']} attempts: {record['reason']}\n"
        return StepOutcome(md, {"member": name, "status": record["status"], "reason": record["reason"]})
    md = (
        f"# Member {name}\n\n{record['backbone']} at {record['backbone_image_size']} px, seed {record['seed']}, "
        f"{record['epochs_run']} epochs in {record['train_seconds']:.0f} s; best validation MAE "
        f"**{record['best_val_mae']:.2f}** months.\n\nMLflow run: `{record['run_id']}`\n"
    )
    keys = ("status", "run_id", "backbone", "seed", "train_seconds", "best_val_mae")
    return StepOutcome(md, {"member": name, **{k: record[k] for k in keys}}, run_id=record["run_id"])


@_timed
def ensemble(params: Params, member_dirs: list[str | Path], data_dir: str | Path, model_dir: str | Path) -> StepOutcome:
    from boneage.training.ensemble import build

    result = build(params, [Path(d) for d in member_dirs], Path(data_dir), Path(model_dir))
    rows = "\n".join(f"| {n} | {w:.3f} |" for n, w in zip(result.members, result.weights, strict=True))
    left_out = "".join(f"\n- left out **{n}**: {why}" for n, why in result.failed.items())
    md = (
        f"# Ensemble\n\n{len(result.members)} members ({params.ensemble.combine}), validation MAE "
        f"**{result.val_mae:.2f}** months, bias correction {result.offset_months:+.2f} months.\n\n"
        f"| member | weight |\n|---|---|\n{rows}\n{left_out}\n\nMLflow run: `{result.run_id}`\n"
    )
    metadata = {"mlflow_run_id": result.run_id, "members": ",".join(result.members), "val_mae_months": result.val_mae}
    if result.failed:
        metadata["members_failed"] = ",".join(result.failed)
    return StepOutcome(md, metadata, run_id=result.run_id)


def _check_run(model_dir: str | Path, run_id: str) -> None:
    from boneage.tracking import read_run_file

    recorded = read_run_file(Path(model_dir))["run_id"]
    if run_id and run_id != recorded:
        raise BoneageError(f"{model_dir}: the model belongs to MLflow run {recorded}, not {run_id}")


@_timed
def evaluate(params: Params, data_dir: str | Path, model_dir: str | Path, out_dir: str | Path, run_id: str) -> StepOutcome:
    from boneage.training.evaluate import evaluate as run_evaluate
    from boneage.training.evaluate import flat_metrics
    from boneage.training.report import metrics_table

    _check_run(model_dir, run_id)
    metrics = run_evaluate(params, Path(data_dir), Path(model_dir), Path(out_dir))
    flat = {name: float(value) for name, value in flat_metrics(metrics).items()}  # the names MLflow gets
    return StepOutcome(
        f"# Evaluate\n\n```\n{metrics_table(metrics)}\n```\n",
        {"test_mae": metrics["test"].get("mae")},
        run_id=run_id,
        metrics=flat,
    )


@_timed
def register(params: Params, model_dir: str | Path, evaluation_dir: str | Path, out_dir: str | Path, run_id: str) -> StepOutcome:
    from boneage.training.register import register as run_register

    _check_run(model_dir, run_id)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    decision = run_register(params, Path(model_dir), Path(evaluation_dir) / METRICS_FILE, Path(out_dir) / REGISTRY_FILE)
    md = (
        f"# Register\n\n`{decision['model']}` version **{decision['version']}** is now "
        f"**{decision['alias']}**: {decision['reason']}.\n\n```json\n{json.dumps(decision, indent=2)}\n```\n"
    )
    return StepOutcome(md, {k: v for k, v in decision.items() if v is not None}, run_id=run_id)


# --- The batch-scoring pipeline (boneage.orchestrate.batch_pipeline) ---------------------------
@_timed
def batch_split(params: Params, worklist_uri: str, out_dir: str | Path) -> StepOutcome:
    from boneage.serve.batch import split_worklist

    names = split_worklist(worklist_uri, Path(out_dir), params.batch.shard_films, params.batch.max_shards)
    md = f"# Split\n\n`{worklist_uri}` cut into **{len(names)}** shards of at most {params.batch.shard_films} rows.\n"
    return StepOutcome(md, {"shards": len(names), "names": names})


@_timed
def batch_score(params: Params, model_uri: str, shards_dir: str | Path, shard: str, out_dir: str | Path) -> StepOutcome:
    from boneage.serve.batch import SCORED_FILE, score_shard
    from boneage.serve.predict import Predictor

    predictor = Predictor.load(model_uri)
    result = score_shard(predictor, Path(shards_dir) / shard, Path(out_dir) / SCORED_FILE, params.batch.shard_workers)
    md = (
        f"# Score {shard}\n\n{result.rows} rows, {result.rejected} rejected, "
        f"{result.films_per_second:.1f} films/s with `{model_uri}`.\n"
    )
    meta = {"shard": shard, "rows": result.rows, "rejected": result.rejected, "films_per_second": result.films_per_second}
    return StepOutcome(md, meta)


@_timed
def batch_merge(params: Params, worklist_uri: str, model_uri: str, scored_dirs: list[str | Path], out_uri: str) -> StepOutcome:
    from boneage.serve.batch import SCORED_FILE, log_batch_run, merge_scored, summarise, write_outputs

    start = time.perf_counter()
    table, missing = merge_scored(worklist_uri, [Path(d) / SCORED_FILE for d in scored_dirs])
    summary = summarise(table, worklist_uri, model_uri, len(scored_dirs), missing)
    outputs = write_outputs(table, summary, out_uri)
    run_id = log_batch_run(params, summary, outputs, time.perf_counter() - start)
    if missing:
        raise BoneageError(f"{len(missing)} worklist rows came back from no shard (lines {missing[:10]}...); see {outputs[1]}")
    reasons = "".join(f"\n- {n} × {why}" for why, n in summary.reasons.items())
    md = (
        f"# Merge\n\n**{summary.rows}** rows: {summary.scored} scored, {summary.rejected} rejected.{reasons}\n\n"
        f"Scored worklist: `{outputs[0]}`; summary: `{outputs[1]}`; MLflow run `{run_id}`.\n"
    )
    counts = {"rows": summary.rows, "scored": summary.scored, "rejected": summary.rejected}
    metrics = {k: float(v) for k, v in counts.items()}
    return StepOutcome(md, {**counts, "scored_worklist": outputs[0]}, run_id=run_id, metrics=metrics)
