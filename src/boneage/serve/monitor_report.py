"""`boneage monitor` end to end: read a window of records and the model's reference, compare them
(boneage.serve.monitor), write the drift report (monitor.html with a figure per distribution,
monitor.json) and log it as one MLflow run. Its exit status says what it found."""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from boneage.config import Params
from boneage.contracts import INTENDED_USE_NOTICE, MONITOR_REFERENCE_FILE, OOD_FILE
from boneage.errors import BoneageError
from boneage.model.ood import OodCheck
from boneage.serve.monitor import DISTRIBUTIONS, MonitorResult, compare, values_of
from boneage.serve.monitoring import read_records
from boneage.serve.predict import find_model_file, model_folder

MONITOR_HTML, MONITOR_JSON = "monitor.html", "monitor.json"
# Exit statuses of `boneage monitor` (1 is any error, as for every command).
EXIT_CLEAN, EXIT_ALERT, EXIT_NOT_JUDGED = 0, 3, 4


@dataclass
class MonitorRequest:
    records: str  # the sink the servers write to (folder or fsspec URL)
    model: str  # the served model: folder or MLflow model URI
    out: Path
    since: str | None = None
    until: str | None = None
    log_to_mlflow: bool = True


def load_reference(model: str) -> tuple[pd.DataFrame, float]:
    """The model's reference records and its check's expected refusal share."""
    folder = model_folder(model)
    path = find_model_file(folder, MONITOR_REFERENCE_FILE)
    if path is None:
        raise BoneageError(
            f"{model}: no {MONITOR_REFERENCE_FILE}: the model was trained before boneage wrote one; retrain it to monitor it"
        )
    reference = pd.read_csv(path, dtype={"film": str, "reason": str, "sex": str})
    check = find_model_file(folder, OOD_FILE)
    if check is None:
        raise BoneageError(f"{model}: the model has no out-of-distribution check, so no expected refusal rate to watch")
    return reference, 1.0 - OodCheck.load(check).quantile


def run_monitor(params: Params, request: MonitorRequest) -> tuple[MonitorResult, int]:
    """Compare, write the report and (optionally) its MLflow run; the result and the exit status."""
    reference, expected_refusal = load_reference(request.model)
    window = read_records(request.records, request.since, request.until)
    result = compare(window, reference, params.monitor, expected_refusal)
    request.out.mkdir(parents=True, exist_ok=True)
    window_of = {"records": request.records, "model": request.model, "since": request.since, "until": request.until}
    summary = result.as_dict() | window_of
    (request.out / MONITOR_JSON).write_text(json.dumps(summary, indent=2))
    page = write_html(result, window, reference, request, request.out / MONITOR_HTML)
    if request.log_to_mlflow:
        _log_run(params, result, request)
    status = EXIT_ALERT if result.alerts else EXIT_CLEAN if result.judged else EXIT_NOT_JUDGED
    for line in result.alerts or [_verdict(result, params)]:
        print(line, file=sys.stderr)
    print(f"drift report: {page}", file=sys.stderr)
    return result, status


def _verdict(result: MonitorResult, params: Params) -> str:
    if not result.judged:
        return f"not judged: {result.films} films in the window, fewer than monitor.min_films ({params.monitor.min_films})"
    return f"no alert: {result.films} films, nothing moved beyond the limits"


def _figure(window: pd.DataFrame, reference: pd.DataFrame, result: MonitorResult) -> str:
    """Reference and window histograms of every distribution compared, as a data: URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = {s.name: s for s in result.shifts}
    fig, axes = plt.subplots(1, len(DISTRIBUTIONS), figsize=(3.2 * len(DISTRIBUTIONS), 2.8))
    for ax, name in zip(axes, DISTRIBUTIONS, strict=True):
        ref, now = values_of(reference, name), values_of(window, name)
        if len(ref) and len(now):
            ax.hist([ref, now], bins=30, density=True, label=["reference", "window"], color=["#999", "#c33"], histtype="step")
        moved = shifts.get(name)
        ax.set_title(f"{name}{' (MOVED)' if moved and moved.moved else ''}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


STYLE = "body{font-family:sans-serif;max-width:1100px} .alert{color:#b00;font-weight:bold} td,th{padding:2px 8px}"
SHIFT_COLUMNS = ("score", "films", "median", "reference median", "shift (reference SDs)", "KS p", "")
RATE_COLUMNS = ("what", "films", "share", "expected", "binomial p", "")


def _header(columns: tuple[str, ...]) -> str:
    return "".join(f"<th>{html.escape(c)}</th>" for c in columns)


def write_html(result: MonitorResult, window: pd.DataFrame, reference: pd.DataFrame, request: MonitorRequest, path: Path) -> Path:
    esc = html.escape
    head = "".join(f"<p class=alert>{esc(a)}</p>" for a in result.alerts) or (
        "<p>No alert.</p>" if result.judged else f"<p>Not judged: only {result.films} films in the window.</p>"
    )
    shift_rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.window_films}</td><td>{s.window_median:.3g}</td><td>{s.reference_median:.3g}</td>"
        f"<td>{s.shift_sd:.2f}</td><td>{s.p_value:.1e}</td><td>{'moved' if s.moved else ''}</td></tr>"
        for s in result.shifts
    )
    rate_rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td>{r.count} / {r.films}</td><td>{100 * r.share:.2f}%</td>"
        f"<td>{100 * r.expected:.2f}%</td><td>{r.p_value:.1e}</td><td>{'raised' if r.raised else ''}</td></tr>"
        for r in result.rates
    )
    figure = ""
    if result.judged:
        figure = f'<img alt="reference and window distributions" src="{_figure(window, reference, result)}">'
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>boneage drift report</title>
<style>{STYLE}</style></head>
<body><h1>Drift report</h1>
<p>Records: {esc(request.records)} from {esc(request.since or "the first")} to {esc(request.until or "the last")};
model: {esc(request.model)}; {result.films} films against {result.reference_films} reference films
(each test at p &lt; {result.per_test_alpha:.1e}).</p>
{head}
<h2>Distributions</h2>
<table><tr>{_header(SHIFT_COLUMNS)}</tr>{shift_rows}</table>
{figure}
<h2>Shares</h2>
<table><tr>{_header(RATE_COLUMNS)}</tr>{rate_rows}</table>
<p><small>{esc(INTENDED_USE_NOTICE)}</small></p>
</body></html>
""")
    return path


def _log_run(params: Params, result: MonitorResult, request: MonitorRequest) -> str:
    import mlflow

    from boneage import tracking

    experiment_id = tracking.connect(params)
    with mlflow.start_run(experiment_id=experiment_id, run_name="monitor", tags={"boneage.kind": "monitor"}) as run:
        mlflow.log_params({"records": request.records, "model": request.model})
        mlflow.log_params({"since": request.since or "", "until": request.until or ""})
        mlflow.log_params(tracking.flatten(params.monitor.model_dump(mode="json"), "monitor."))
        metrics = {"films": result.films, "alert": float(bool(result.alerts)), "alerts": len(result.alerts)}
        metrics |= {f"shift_sd.{s.name}": s.shift_sd for s in result.shifts}
        metrics |= {f"ks_p.{s.name}": s.p_value for s in result.shifts}
        metrics |= {f"share.{r.name.replace(' ', '_')}": r.share for r in result.rates if r.films}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(request.out), artifact_path="monitor")
    return run.info.run_id
