"""`boneage monitor` on real films: a small model trained on real 100 px RSNA films (its reference is
its own validation films), then windows of records left by scoring 200 other real films: as they
are (no alert), darkened and turned (an alert naming what moved), and synthetic films (an alert)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest

from boneage.serve.monitoring import records_of, write
from tests.conftest import REPO, SHARED_DATA, require, small_recipe

pytestmark = pytest.mark.slow

RSNA_100PX = SHARED_DATA / "rsna-100px"
TRAIN_FILMS = 1600  # the model's films (train, validation and test splits), drawn at random
WINDOW_FILMS = 200  # the window's films: 200 others
SAMPLE_SEED = 7


def real_sample(tmp: Path) -> tuple[Path, list[Path], list[str]]:
    """A Kaggle-layout folder of TRAIN_FILMS real films (links), and WINDOW_FILMS other real films
    with their sexes ("M" or "F")."""
    root = require(RSNA_100PX)
    labels = pd.read_csv(root / "boneage-training-dataset.csv", dtype={"id": str})
    drawn = labels.sample(TRAIN_FILMS + WINDOW_FILMS, random_state=SAMPLE_SEED)
    source = tmp / "rsna"
    (source / "boneage-training-dataset").mkdir(parents=True)
    drawn.iloc[:TRAIN_FILMS].to_csv(source / "boneage-training-dataset.csv", index=False)
    for film in drawn["id"].iloc[:TRAIN_FILMS]:
        (source / "boneage-training-dataset" / f"{film}.png").symlink_to(root / "boneage-training-dataset" / f"{film}.png")
    others = drawn.iloc[TRAIN_FILMS:]
    window = [root / "boneage-training-dataset" / f"{film}.png" for film in others["id"]]
    return source, window, ["M" if str(male).lower() == "true" else "F" for male in others["male"]]


def train_real_small(tmp: Path) -> SimpleNamespace:
    """The tests' small CNN trained on the real sample with the real crop (the hand locator)."""
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.training.train import train

    source, window, window_sexes = real_sample(tmp)
    params = small_recipe(
        tmp, data={"source": str(source)}, preprocess={"image_size": 75, "workers": 1, "crop": "locator"}, train={"epochs": 6}
    )
    result = ingest(params, tmp / "ingest")
    preprocess(params, result.manifest_path, tmp / "pre")
    train(params, tmp / "pre", tmp / "model")
    return SimpleNamespace(params=params, model=tmp / "model", window=window, window_sexes=window_sexes)


def leave_records(model: Path, films: list[Path], sexes: list[str], sink: Path) -> Path:
    """Score ``films``, each with its own sex, as a server does and leave their records in ``sink``
    (one file a batch of up to 50 films of one sex)."""
    from boneage.serve.predict import Predictor, predict_files

    predictor = Predictor.load(str(model))
    for sex in sorted(set(sexes)):
        group = [film for film, s in zip(films, sexes, strict=True) if s == sex]
        for first in range(0, len(group), 50):
            write(records_of(predict_files(predictor, group[first : first + 50], sex=sex), 1.0, "test"), str(sink))
    return sink


def darkened_and_turned(films: list[Path], out: Path) -> list[Path]:
    """The films darker (gamma 2) and turned a quarter turn clockwise."""
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for film in films:
        image = cv2.imread(str(film), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        cv2.imwrite(str(out / film.name), np.rot90(255.0 * image**2, k=-1).astype(np.uint8))
        changed.append(out / film.name)
    return changed


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    return train_real_small(tmp_path_factory.mktemp("real-small"))


def _monitor(real_model, records: Path, out: Path):
    from boneage.serve.monitor_report import MonitorRequest, run_monitor

    return run_monitor(real_model.params, MonitorRequest(str(records), str(real_model.model), out))


def test_a_window_of_clean_real_films_raises_no_alert(real_model, tmp_path):
    from boneage.serve.monitor_report import EXIT_CLEAN

    records = leave_records(real_model.model, real_model.window, real_model.window_sexes, tmp_path / "records")
    result, status = _monitor(real_model, records, tmp_path / "report")
    assert result.films == WINDOW_FILMS and result.judged
    assert status == EXIT_CLEAN and result.alerts == [], result.alerts
    assert "No alert." in (tmp_path / "report" / "monitor.html").read_text()


def test_darkened_and_turned_films_raise_an_alert_naming_what_moved(real_model, tmp_path):
    import mlflow

    from boneage.serve.monitor_report import EXIT_ALERT

    films = darkened_and_turned(real_model.window, tmp_path / "films")
    records = leave_records(real_model.model, films, real_model.window_sexes, tmp_path / "records")
    result, status = _monitor(real_model, records, tmp_path / "report")
    assert status == EXIT_ALERT
    assert any("not upright" in alert for alert in result.alerts), result.alerts
    assert "ALERT" in (tmp_path / "report" / "monitor.html").read_text()
    client = mlflow.MlflowClient(real_model.params.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(real_model.params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`boneage.kind` = 'monitor'")
    assert any(r.data.metrics.get("alert") == 1.0 for r in runs)


def test_synthetic_films_raise_an_alert_and_the_command_exits_3(real_model, trained_small, tmp_path):
    films = sorted((trained_small.tmp / "synth" / "boneage-training-dataset").glob("*.png"))[:WINDOW_FILMS]
    records = leave_records(real_model.model, films, real_model.window_sexes[: len(films)], tmp_path / "records")
    command = ["boneage", "monitor", "--records", str(records), "--model", str(real_model.model), "--no-mlflow"]
    proc = subprocess.run(
        [sys.executable, "-m", *command, "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "ALERT" in proc.stderr
