"""Which MLflow store a run logs to (boneage.tracking): the user's MLFLOW_TRACKING_URI wins, and a
store boneage itself wrote into that variable never outranks a later run's own params."""

from __future__ import annotations

import os

from boneage import tracking
from boneage.config import Params


def _params(tmp_path, name: str) -> Params:
    store = tmp_path / name
    mlflow = {"tracking_uri": f"sqlite:///{store}/mlflow.db", "artifact_root": str(store / "art"), "log_system_metrics": False}
    return Params.model_validate({"mlflow": mlflow})


def test_a_run_follows_its_own_store_whichever_earlier_store_the_variable_holds(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second, third = (_params(tmp_path, n) for n in ("first", "second", "third"))
    tracking.connect(first)
    written_first = os.environ["MLFLOW_TRACKING_URI"]  # mlflow.set_tracking_uri writes the variable
    tracking.connect(second)
    # A caller (a test fixture, a notebook) puts back the value it saw before the second run.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", written_first)
    assert tracking.tracking_uri(third) == third.mlflow.tracking_uri


def test_the_users_tracking_uri_wins_over_params(tmp_path, monkeypatch):
    user = f"sqlite:///{tmp_path}/user/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
    assert tracking.tracking_uri(_params(tmp_path, "own")) == user
