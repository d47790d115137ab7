"""Against the real local stack (see the `stack` fixture): the MLflow server's auth, the tracking
probe's errors, ingest from a GCS bucket (verified, resumable) and DVC push/pull through the emulator."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import requests
from typer.testing import CliRunner

from boneage import tracking
from boneage.cli import app
from boneage.config import Params
from boneage.data import gcs
from boneage.errors import BoneageError
from boneage.orchestrate import services
from tests.conftest import BIN, write_kaggle_dataset

# Slow: every test here talks to the service stack (PostgreSQL, the emulator, MLflow).
pytestmark = pytest.mark.slow


def test_mlflow_server_requires_auth_and_its_password_cache_lets_no_wrong_password_in(stack):
    url = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search"

    def status(auth):
        return requests.get(url, params={"max_results": 1}, auth=auth, timeout=10).status_code

    assert status(None) == 401
    assert status(("admin", "wrong")) == 401
    assert status(("admin", stack.password)) == 200
    # Once the right password is cached (services.AUTH_CACHE_SECONDS), the cache is keyed on the
    # password too: a wrong one for the same user is still refused.
    assert status(("admin", "wrong")) == 401 and status(("admin", stack.password)) == 200


def test_services_env_prints_what_clients_need(stack):
    result = CliRunner().invoke(app, ["services", "env", "--root", stack.root])
    assert result.exit_code == 0, result.output
    assert f"export MLFLOW_TRACKING_URI={stack.mlflow_uri}" in result.output
    assert f"export STORAGE_EMULATOR_HOST={stack.gcs_endpoint}" in result.output
    assert "export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false" in result.output


# "Fast": within the probe's own timeout, with room for one retry of the request and a slow machine.
FAIL_FAST_S = 2 * Params().mlflow.probe_timeout_seconds + 5


def test_tracking_fails_fast_on_a_wrong_password(stack, stack_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    started = time.monotonic()
    with pytest.raises(BoneageError, match="refused the request with credentials"):
        tracking.connect(Params())
    assert time.monotonic() - started < FAIL_FAST_S


def test_tracking_fails_fast_when_the_server_is_down(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{services.free_port()}")
    started = time.monotonic()
    with pytest.raises(BoneageError, match="unreachable.*make services"):
        tracking.connect(Params())
    assert time.monotonic() - started < FAIL_FAST_S


def test_tracking_falls_back_to_local_only_when_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{services.free_port()}")
    params = Params.model_validate({"mlflow": {"fallback_to_local": True}})
    tracking.connect(params)
    assert "logging to sqlite:///mlruns/mlflow.db instead" in capsys.readouterr().err
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def _kaggle_bucket(tmp_path: Path) -> tuple[str, Path]:
    rows = [(str(i), str(12 * i + 6), "True" if i % 2 else "False") for i in range(1, 9)]
    rows.append(("99", "abc", "True"))  # a bad age: quarantined, not fatal
    local = write_kaggle_dataset(tmp_path / "kaggle", rows)
    uri = f"gs://{services.DATA_BUCKET}/{uuid.uuid4().hex[:8]}/rsna"
    assert gcs.upload_folder(local, uri) == len(rows) + 1
    return uri, local


def test_ingest_from_gcs_verifies_and_resumes(stack, stack_env, tmp_path):
    uri, _ = _kaggle_bucket(tmp_path)
    out = tmp_path / "ingest"
    result = CliRunner().invoke(app, ["ingest", "--source", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv", dtype={"id": str})
    assert len(manifest) == 8
    assert "age" in pd.read_csv(out / "quarantine.csv")["reason"].iloc[0]

    cache = next((out / ".cache").glob("gs-*"))
    again = gcs.download_prefix(uri, cache)
    assert (again.downloaded, again.skipped) == (0, 10), "verified files must not be downloaded again"

    # A damaged file (same size, other bytes) fails verification and is fetched again.
    victim = cache / "boneage-training-dataset" / "3.png"
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    repaired = gcs.download_prefix(uri, cache)
    assert (repaired.downloaded, repaired.skipped) == (1, 9)
    assert not list(cache.rglob("*.partial"))


def test_ingest_from_a_missing_bucket_is_a_clear_error(stack, stack_env, tmp_path):
    result = CliRunner().invoke(app, ["ingest", "--source", "gs://no-such-bucket-here/x", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "gs://no-such-bucket-here/x" in result.output and "Traceback" not in result.output


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_dvc_push_and_pull_through_the_emulator(stack, stack_env, tmp_path):
    env = {**os.environ, **stack.client_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    project = tmp_path / "project"
    write_kaggle_dataset(project / "data" / "raw", [("1", "10", "True"), ("2", "20", "False")])
    originals = {p.relative_to(project): p.read_bytes() for p in (project / "data" / "raw").rglob("*") if p.is_file()}
    _run(["git", "init", "-q"], project, env)
    _run(["dvc", "init", "-q"], project, env)
    _run(["dvc", "add", "data/raw"], project, env)
    remote = f"gs://{services.DATA_BUCKET}/dvc-{uuid.uuid4().hex[:8]}"
    _run(["dvc", "remote", "add", "-d", "gcs", remote], project, env)
    _run(["dvc", "remote", "modify", "gcs", "endpointurl", stack.gcs_endpoint], project, env)
    _run(["dvc", "push"], project, env)

    bucket, prefix = gcs.parse_uri(remote)
    assert any(b.name.startswith(prefix) for b in gcs.client().list_blobs(bucket)), "nothing reached the bucket"

    subprocess.run(["rm", "-rf", "data/raw", ".dvc/cache"], cwd=project, check=True)
    _run(["dvc", "pull"], project, env)
    restored = {p.relative_to(project): p.read_bytes() for p in (project / "data" / "raw").rglob("*") if p.is_file()}
    assert restored == originals
