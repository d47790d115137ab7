"""Training end to end on tiny synthetic data: it learns, it resumes after kill -9, and the
registry gates the champion. Real MLflow (SQLite) and real TFRecords throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from boneage.config import Params

# Training numerics differ across CPUs of the same kind (oneDNN kernels on AMD EPYC vs Intel Xeon
# with AMX), and this tiny deterministic run lands far apart: MAE / predict-the-mean was 0.27 with
# seed 1 on an AMD EPYC and 0.56 with seed 3 on an Intel Xeon (where a 0.5 limit failed CI). The
# limit leaves margin over both, and still fails when the model does not learn (about 1.0) or when
# inference-mode BatchNorm diverges (well above 1.0: the momentum-0.99 trap).
LEARNED_MAE_RATIO = 0.7
# A resumed run sees the data in another order than an uninterrupted one: its final validation MAE
# may differ by this much (relative).
RESUME_TOLERANCE = 0.25


def tiny_params(tmp: Path, **train) -> Params:
    return Params.model_validate(
        {
            "seed": 3,
            "data": {"source": str(tmp / "synth")},
            "preprocess": {"image_size": 75, "workers": 1},
            "model": {"weights": "none", "head_units": [64], "head_dropout": 0.0},
            "train": {
                "batch_size": 16,
                "epochs": 8,
                "learning_rate": 2e-3,
                "lr_schedule": "cosine",
                "early_stopping_patience": 50,
                "augment": {"enabled": False},
                # Training mechanics are under test here; the check has its own tests (test_ood, test_predict).
                "ood": {"enabled": False},
                **train,
            },
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db",
                "artifact_root": str(tmp / "mlruns" / "art"),
                "log_system_metrics": False,
            },
        }
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from boneage.ingest import ingest
    from boneage.preprocess import preprocess
    from boneage.synth import write_dataset

    tmp = tmp_path_factory.mktemp("tiny")
    write_dataset(tmp / "synth", count=120, seed=5, size=192, workers=1)
    params = tiny_params(tmp)
    result = ingest(params, tmp / "ingest")
    preprocess(params, result.manifest_path, tmp / "pre")
    return tmp


@pytest.mark.slow
def test_mae_falls_well_below_predict_the_mean(tiny_data, tmp_path, monkeypatch):
    from boneage.dataset import predict_split
    from boneage.model import load_predict_model
    from boneage.train import train

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_data)
    result = train(params, tiny_data / "pre", tmp_path / "models")
    manifest = pd.read_csv(tiny_data / "pre" / "manifest.csv", dtype={"id": str})
    model = load_predict_model(result.model_path)
    # Inference mode (moving BatchNorm statistics), on the images it trained on.
    pred = predict_split(model, tiny_data / "pre", "train", 75, 16).merge(manifest, on="id")
    mae = (pred["predicted"] - pred["boneage"]).abs().mean()
    baseline = (pred["boneage"] - pred["boneage"].mean()).abs().mean()
    assert mae < LEARNED_MAE_RATIO * baseline, f"MAE {mae:.1f} vs predict-the-mean {baseline:.1f}"
    history = pd.read_csv(result.model_path.parent / "history.csv")
    assert history["mae_months"].iloc[-1] < 0.6 * history["mae_months"].iloc[0]


@pytest.mark.slow
def test_kill_9_mid_training_resumes_from_the_last_checkpoint(tiny_data, tmp_path):
    # Resuming is the same for any backbone; a small CNN with long epochs (many repeats of the
    # tiny split) leaves time to kill it mid-run without paying for InceptionV3's checkpoints.
    raw = tiny_params(tiny_data, epochs=4, steps_per_epoch=30).model_dump(mode="json")
    cmd = _train_command(raw, tiny_data, tmp_path)
    state = tmp_path / "models" / "checkpoint" / "state.json"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training ended before it could be interrupted")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 4, "training finished before the kill"
    assert not (tmp_path / "models" / "model.keras").exists(), "a half-trained model must not look finished"

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from the checkpoint after epoch {killed_at}" in rerun.stderr
    history = pd.read_csv(tmp_path / "models" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert (tmp_path / "models" / "model.keras").is_file()

    # The same recipe without the interruption ends close by (the data order after the resume
    # differs, so not bit-identical).
    straight = subprocess.run(
        [*cmd[:-4], "--out", str(tmp_path / "straight"), "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = pd.read_csv(tmp_path / "straight" / "history.csv")["val_mae_months"].iloc[-1]
    assert history["val_mae_months"].iloc[-1] == pytest.approx(reference, rel=RESUME_TOLERANCE)


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_reported_and_never_used(tiny_data, tmp_path):
    raw = tiny_params(tiny_data, epochs=2).model_dump(mode="json")
    cmd = _train_command(raw, tiny_data, tmp_path)
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = tmp_path / "models" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "epoch": 1, "completed": False}))
    (ckpt / "train.keras").write_bytes(b"PK\x03\x04 not really a keras file")
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "ignoring unreadable checkpoint" in second.stderr and "resuming" not in second.stderr
    assert list(pd.read_csv(tmp_path / "models" / "history.csv")["epoch"]) == [1, 2]


@pytest.mark.slow
def test_max_minutes_stops_training_between_epochs(tiny_data, tmp_path):
    raw = tiny_params(tiny_data, epochs=6, max_minutes=0.001).model_dump(mode="json")
    proc = subprocess.run(_train_command(raw, tiny_data, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The first epoch already took longer than the limit: no second one starts.
    assert "train.max_minutes: another epoch would end past the budget; stopping after epoch 1" in proc.stderr
    assert list(pd.read_csv(tmp_path / "models" / "history.csv")["epoch"]) == [1]
    assert (tmp_path / "models" / "model.keras").is_file()


@pytest.mark.slow
def test_a_budget_plans_the_epochs_and_the_cosine_ends_with_them(tiny_data, tmp_path):
    # A budget already spent by the second epoch: the plan ends training there, and records it.
    raw = tiny_params(tiny_data, epochs=6, budget_minutes=0.001).model_dump(mode="json")
    proc = subprocess.run(_train_command(raw, tiny_data, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training ends after epoch 2" in proc.stderr
    assert list(pd.read_csv(tmp_path / "models" / "history.csv")["epoch"]) == [1, 2]
    assert json.loads((tmp_path / "models" / "checkpoint" / "state.json").read_text())["planned_end"] == 2


def test_the_cosine_by_step_follows_keras_cosine_decay_and_its_plan():
    import keras

    from boneage.train import _CosineByStep, _Plan

    plan = _Plan(first=0, end=5, steps_per_epoch=20)
    cosine = _CosineByStep(1e-3, 1e-6, plan)
    reference = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=100, alpha=1e-6 / 1e-3)
    for step in (0, 1, 37, 99, 100, 250):
        assert cosine.rate(step) == pytest.approx(float(reference(step)), rel=1e-4)  # keras: float32
    plan.end = 2  # the budget moved the end: the same curve, squeezed into 40 steps
    assert cosine.rate(40) == pytest.approx(1e-6) and cosine.rate(20) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-5)


def _fake_run(tmp: Path, params: Params, test_mae: float) -> Path:
    """A real MLflow run holding a real (tiny) Keras model, as train would leave it."""
    import keras
    import mlflow

    from boneage import tracking

    experiment_id = tracking.connect(params)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
        mlflow.log_metric("test_mae", test_mae)
    out = tmp / run.info.run_id
    out.mkdir()
    tracking.write_run_file(out, run.info.run_id, experiment_id, tracking.tracking_uri(params), info.model_uri)
    (out / "metrics.json").write_text(json.dumps({"test": {"mae": test_mae}}))
    return out


def test_registry_gates_the_champion(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from boneage.register import register

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(tmp_path)
    decisions = []
    for mae in (20.0, 25.0, 15.0):
        run_dir = _fake_run(tmp_path, params, mae)
        decisions.append(register(params, run_dir, run_dir / "metrics.json", run_dir / "registry.json"))
    assert [d["alias"] for d in decisions] == ["champion", "challenger", "champion"]
    assert decisions[1]["previous_champion_test_mae"] == 20.0
    assert decisions[2]["previous_champion_test_mae"] == 20.0
    client = MlflowClient()
    champion = client.get_model_version_by_alias("boneage", "champion")
    assert int(champion.version) == decisions[2]["version"]
    assert champion.tags["run_id"] and champion.tags["test_mae"] == "15.0000"
    assert int(client.get_model_version_by_alias("boneage", "challenger").version) == decisions[1]["version"]
    assert np.isclose(json.loads((run_dir / "registry.json").read_text())["test_mae"], 15.0)


def _train_command(raw: dict, tiny_data, tmp_path) -> list[str]:
    """`boneage train` in a fresh process, on the small CNN, with these params written to a file."""
    raw["model"]["backbone"] = "small_cnn"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    return [
        sys.executable,
        "-m",
        "boneage",
        "train",
        "--data",
        str(tiny_data / "pre"),
        "--out",
        str(tmp_path / "models"),
        "--params",
        str(params_path),
    ]
