"""Training's mechanics on the small recipe's synthetic films: InceptionV3 learns (scored on films it
never trained on), a run killed with -9 resumes where it stopped with its optimizer's state, a
corrupt checkpoint is never used, the time limit and the budget end training between epochs, and
the registry gates the champion. Real MLflow (SQLite) and real TFRecords throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from boneage.config import Params
from tests.conftest import small_recipe

# InceptionV3 from random weights on 224 synthetic training films for 8 epochs, scored on the 98
# validation and test films it never trained on: MAE / predict-the-mean over seeds 1-4 was 0.60,
# 0.51, 0.46 and 0.49 on an AMD EPYC (Zen 5), a spread of 0.15 (scratch measurement, 2026-12-01).
# The limit sits that spread again above the worst seed, for other CPUs' numerics, and still fails a
# model that does not learn (about 1.0) or whose inference-mode BatchNorm diverges (well above 1.0:
# the momentum-0.99 trap).
LEARNED_MAE_RATIO = 0.80
# A resumed run reads the training stream from the batch where it stopped, with the optimizer's state
# and the rate's plan from the checkpoint: with no dropout (the tests' recipe) it is the uninterrupted
# run, epoch for epoch. The margin is for float noise only: a resume that lost the optimizer's state,
# came back with fresh weights or re-read the films from the stream's start misses by far more.
RESUME_REL_TOLERANCE = 1e-5


def mechanics_recipe(tmp: Path, **train) -> Params:
    """The small recipe without its out-of-distribution check (it has its own tests) and its
    smaller batch, for the training-mechanics tests."""
    return small_recipe(tmp, train={"batch_size": 16, "epochs": 8, "learning_rate": 2e-3, "ood": {"enabled": False}, **train})


@pytest.mark.slow
def test_inception_v3_learns_films_it_never_trained_on(trained_small, tmp_path, monkeypatch):
    from boneage.model.network import load_predict_model
    from boneage.training.dataset import predict_split
    from boneage.training.train import train

    monkeypatch.chdir(tmp_path)
    params = mechanics_recipe(tmp_path, correct_bias_on_val=False)
    params = params.model_copy(update={"model": params.model.model_copy(update={"backbone": "inception_v3"})})
    result = train(params, trained_small.data, tmp_path / "models")
    manifest = pd.read_csv(trained_small.data / "manifest.csv", dtype={"id": str})
    model = load_predict_model(result.model_path)
    held_out = pd.concat([predict_split(model, trained_small.data, split, 75, 32) for split in ("val", "test")])
    scored = held_out.merge(manifest, on="id")
    mae = (scored["predicted"] - scored["boneage"]).abs().mean()
    train_mean = manifest.loc[manifest["split"] == "train", "boneage"].mean()
    baseline = (scored["boneage"] - train_mean).abs().mean()
    assert len(scored) >= 80
    assert mae < LEARNED_MAE_RATIO * baseline, f"held-out MAE {mae:.1f} vs predict-the-mean {baseline:.1f}"


@pytest.mark.slow
def test_kill_9_mid_training_resumes_from_the_last_checkpoint(trained_small, tmp_path):
    # Resuming is the same for any backbone; a small CNN with long epochs (many repeats of the
    # training split) leaves time to kill it mid-run without paying for InceptionV3's checkpoints.
    raw = mechanics_recipe(tmp_path, epochs=4, steps_per_epoch=30).model_dump(mode="json")
    cmd = _train_command(raw, trained_small.data, tmp_path, "models")
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

    # The same recipe without the interruption: the optimizer took as many steps, and every epoch's
    # training and validation figures are the same.
    straight = subprocess.run(
        _train_command(raw, trained_small.data, tmp_path, "straight"), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert _optimizer_steps(tmp_path / "models") == _optimizer_steps(tmp_path / "straight") == 4 * 30
    straight_history = pd.read_csv(tmp_path / "straight" / "history.csv")
    figures = ["loss", "mae_months", "val_loss", "val_mae_months"]
    pd.testing.assert_frame_equal(history[figures], straight_history[figures], rtol=RESUME_REL_TOLERANCE)


def _optimizer_steps(model_dir: Path) -> int:
    import keras

    model = keras.saving.load_model(model_dir / "checkpoint" / "train.keras", safe_mode=True)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_reported_and_never_used(trained_small, tmp_path, capsys):
    from boneage.training.train import train

    params = _small_cnn(mechanics_recipe(tmp_path, epochs=2))
    train(params, trained_small.data, tmp_path / "models")
    ckpt = tmp_path / "models" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "epoch": 1, "completed": False}))
    (ckpt / "train.keras").write_bytes(b"PK\x03\x04 not really a keras file")
    capsys.readouterr()
    train(params, trained_small.data, tmp_path / "models")
    err = capsys.readouterr().err
    assert "ignoring unreadable checkpoint" in err and "resuming" not in err
    assert list(pd.read_csv(tmp_path / "models" / "history.csv")["epoch"]) == [1, 2]


@pytest.mark.slow
def test_max_minutes_stops_training_between_epochs(trained_small, tmp_path, capsys):
    from boneage.training.train import train

    result = train(_small_cnn(mechanics_recipe(tmp_path, epochs=6, max_minutes=0.001)), trained_small.data, tmp_path)
    # The first epoch already took longer than the limit: no second one starts.
    assert "train.max_minutes: another epoch would end past the budget; stopping after epoch 1" in capsys.readouterr().err
    assert result.epochs_run == 1 and result.model_path.is_file()


@pytest.mark.slow
def test_a_budget_plans_the_epochs_and_the_cosine_ends_with_them(trained_small, tmp_path, capsys):
    import mlflow

    from boneage.training.train import train

    params = _small_cnn(mechanics_recipe(tmp_path, epochs=6, budget_minutes=0.001))
    result = train(params, trained_small.data, tmp_path)
    # A budget already spent by the second epoch: the plan ends training there, and records it.
    assert "training ends after epoch 2" in capsys.readouterr().err
    assert result.epochs_run == 2
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["planned_end"] == 2
    tags = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(result.run_id).data.tags
    assert tags["boneage.planned_epochs"] == "2"


def test_the_cosine_by_step_follows_keras_cosine_decay_and_its_plan():
    import keras

    from boneage.training.train import _CosineByStep, _Plan

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

    from boneage.training.register import register

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = mechanics_recipe(tmp_path)
    decisions = []
    for mae in (20.0, 25.0, 15.0):
        run_dir = _fake_run(tmp_path, params, mae)
        decisions.append(register(params, run_dir, run_dir / "metrics.json", run_dir / "registry.json"))
    assert [d["alias"] for d in decisions] == ["champion", "challenger", "champion"]
    assert decisions[1]["previous_champion_test_mae"] == 20.0
    assert decisions[2]["previous_champion_test_mae"] == 20.0
    client = MlflowClient()
    champion = client.get_model_version_by_alias(decisions[2]["model"], "champion")
    assert int(champion.version) == decisions[2]["version"]
    assert champion.tags["run_id"] and champion.tags["test_mae"] == "15.0000"
    assert int(client.get_model_version_by_alias(decisions[1]["model"], "challenger").version) == decisions[1]["version"]
    assert np.isclose(json.loads((run_dir / "registry.json").read_text())["test_mae"], 15.0)


def _small_cnn(params: Params) -> Params:
    return params.model_copy(update={"model": params.model.model_copy(update={"backbone": "small_cnn"})})


def _train_command(raw: dict, data: Path, tmp_path: Path, out: str) -> list[str]:
    """`boneage train` in a fresh process (it is killed), on the small CNN, with these params in a file."""
    raw["model"]["backbone"] = "small_cnn"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    return [
        sys.executable,
        "-m",
        "boneage",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / out),
        "--params",
        str(params_path),
    ]


def test_a_budget_moves_the_end_earlier_when_epochs_slow_down(monkeypatch, capsys):
    import mlflow

    from boneage.training.train import _Budget, _Plan

    clock = iter([10.0, 20.0, 40.0, 60.0, 80.0])
    monkeypatch.setattr("boneage.training.train.time.monotonic", lambda: next(clock))
    monkeypatch.setattr(mlflow, "set_tags", lambda tags: None)
    plan = _Plan(first=0, end=100, steps_per_epoch=10)
    budget = _Budget(plan, budget_seconds=100.0, started=0.0)
    budget.set_model(SimpleNamespace(stop_training=False))
    budget.on_epoch_end(0)
    budget.on_epoch_end(1)
    # 10 s an epoch with 80 s of the budget left: 8 more after the second.
    assert plan.end == 10
    for epoch in (2, 3):
        budget.on_epoch_end(epoch)
    # Then 20 s an epoch: at 60 s, 40 s left fit 2 more (end 6), not the 6 more the first pace promised.
    assert plan.end == 6
    budget.on_epoch_end(4)
    assert plan.end == 6 and "slower now" in capsys.readouterr().err
