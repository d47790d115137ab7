"""`dvc repro` end to end on tiny synthetic data, in a scratch copy of the project: every stage
runs, the model is registered, and a second `dvc repro` is a no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_noop(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "data.dvc"):
        shutil.copy(REPO / name, work / name)
    (work / "dvc_plots").mkdir()
    shutil.copy(REPO / "dvc_plots" / "offline.html", work / "dvc_plots" / "offline.html")
    (work / "src").symlink_to(REPO / "src")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synthetic"].update({"count": 60, "image_size": 160})
    params["preprocess"]["image_size"] = 75
    params["train"].update({"epochs": 2, "steps_per_epoch": None, "batch_size": 16, "bn_recalibration_images": 32})
    params["mlflow"]["log_system_metrics"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run(["git", "init", "-q"], work, env)
    run(["dvc", "init", "-q"], work, env)
    shutil.copy(REPO / ".dvc" / "config", work / ".dvc" / "config")  # the offline plot template

    first = run(["dvc", "repro"], work, env)
    for stage in ("synth", "ingest", "preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and set(metrics["test"]["by_sex"]) <= {"male", "female"}
    assert json.loads((work / "reports" / "registry.json").read_text())["alias"] == "champion"
    assert (work / "mlruns" / "mlflow.db").is_file()

    second = run(["dvc", "repro"], work, env)
    assert "Running stage" not in second.stdout

    shown = run(["dvc", "metrics", "show", "--json"], work, env)
    assert "test" in shown.stdout

    # Plots render offline: vega is inlined, nothing is fetched from a CDN.
    run(["dvc", "plots", "show", "--out", "rendered"], work, env)
    page = (work / "rendered" / "index.html").read_text()
    assert "vegaEmbed" in page and "<script src=" not in page and "cdn.jsdelivr" not in page
    assert "val_mae_months" in page and "age_band" in page
