"""The README's real-data path, end to end, on 300 of the shared real RSNA films: `dvc add`, `dvc push`
to a GCS remote (the emulator), a fresh clone, `dvc pull`, then `make real-data` with a tiny budget,
logging to the MLflow server of the service stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from boneage.orchestrate import services
from tests.conftest import REPO, SHARED_DATA, require

VENV = Path(sys.executable).parent.parent
FILMS = 300
# A few steps of a small CNN: what is under test is the path (versioning, fetching, the stages,
# the registry), not accuracy (benchmarks/bench_real.py measures that).
TINY_BUDGET = (
    "-S ++train.epochs=1 -S ++train.steps_per_epoch=2 -S ++train.batch_size=16 -S ++model.backbone=small_cnn "
    "-S ++train.bn_recalibration_images=32 -S mlflow.log_system_metrics=false"
)


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _real_subset(dest: Path) -> dict[Path, bytes]:
    source = require(SHARED_DATA / "rsna-100px")
    labels = pd.read_csv(source / "boneage-training-dataset.csv", dtype={"id": str}).head(FILMS)
    (dest / "boneage-training-dataset").mkdir(parents=True)
    labels.to_csv(dest / "boneage-training-dataset.csv", index=False)
    for image_id in labels["id"]:
        shutil.copy(source / "boneage-training-dataset" / f"{image_id}.png", dest / "boneage-training-dataset")
    return {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_dvc_versions_a_real_dataset_then_a_fresh_clone_trains_on_it(stack, tmp_path):
    if not (REPO / ".git").is_dir():
        pytest.skip("needs the project's git checkout to clone")
    env = {
        **os.environ,
        **stack.client_env(),
        "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
    }
    origin = tmp_path / "origin"
    run(["git", "clone", "-q", str(REPO), str(origin)], tmp_path, env)
    originals = _real_subset(origin / "data" / "raw")

    # The README's steps: version the dataset, point DVC at the bucket, push.
    remote = f"gs://{services.DATA_BUCKET}/dvc-{uuid.uuid4().hex[:8]}"
    run(["dvc", "add", "data/raw"], origin, env)  # updates the committed data.dvc, which names data/raw
    assert "md5:" in (origin / "data.dvc").read_text()
    run(["dvc", "remote", "add", "-d", "gcs", remote], origin, env)
    run(["dvc", "remote", "modify", "--local", "gcs", "endpointurl", stack.gcs_endpoint], origin, env)
    run(["git", "add", "-A"], origin, env)
    run(["git", "commit", "-qm", "version the real dataset"], origin, env)
    run(["dvc", "push"], origin, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "data" / "raw").exists()
    run(["dvc", "remote", "modify", "--local", "gcs", "endpointurl", stack.gcs_endpoint], clone, env)
    run(["dvc", "pull", "data.dvc"], clone, env)
    restored = {p.relative_to(clone / "data" / "raw"): p.read_bytes() for p in (clone / "data" / "raw").rglob("*") if p.is_file()}
    assert restored == originals

    # `make real-data` in the clone, with this environment (VENV=...): its sources are a clone's,
    # newer than the environment's install stamp, which would make `make` reinstall into it.
    for name in ("pyproject.toml", "requirements.lock"):
        os.utime(clone / name, (0, 0))
    params_before = (clone / "params.yaml").read_bytes()
    proc = run(["make", "real-data", "SOURCE=data/raw", f"VENV={VENV}", f"REAL_SET={TINY_BUDGET}"], clone, env)
    for stage in ("ingest", "preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in proc.stdout
    assert "Running stage 'synth'" not in proc.stdout
    assert (clone / "models" / "model.keras").is_file()
    metrics = yaml.safe_load((clone / "reports" / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and metrics["baseline"]["noise_floor_mae"] is None  # real data: no noise floor
    registry = yaml.safe_load((clone / "reports" / "registry.json").read_text())
    assert registry["model"] == "boneage"  # the name for models trained on real films
    assert (clone / "params.yaml").read_bytes() == params_before
    manifest = pd.read_csv(clone / "data" / "ingest" / "manifest.csv", dtype={"id": str})
    assert len(manifest) == FILMS
