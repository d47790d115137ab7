"""KServe's own model server over boneage, started by the README's `make serve-kserve` line in its own
environment (.venv-serve) and spoken to over HTTP on 127.0.0.1: one film and a batch in both of
KServe's protocols (the same months as scoring here), bad rows and out-of-distribution films answered
400 with the row and the reason, readiness and liveness, and a record per film for the monitor."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
import requests

from boneage.data.imaging import read_radiograph
from boneage.serve.monitoring import read_records
from tests.serve.conftest import KSERVE, photograph_png, served, smooth_ramp_png

# Slow: the module serves the shared small model with `make serve-kserve`, once.
pytestmark = pytest.mark.slow

NAME = "boneage"  # the README's line serves the model under this name


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _instance(png, sex="F") -> dict:
    return {"image": _b64(png), "sex": sex, "chronological_age_months": 120.0}


@pytest.fixture(scope="module")
def kserve(trained_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kserve")
    records = tmp / "records"
    with served(
        str(trained_small.models), trained_small.params.mlflow.tracking_uri, tmp / "kserve.log", KSERVE, RECORDS=str(records)
    ) as url:
        yield SimpleNamespace(url=url, records=records, predict=f"{url}/v1/models/{NAME}:predict")


def _local_months(trained_small, png, sex="F") -> float:
    return trained_small.predictor.score(read_radiograph(png, 10**8), "local", sex, 120.0).bone_age_months


def test_v1_one_film_and_a_batch_give_the_months_scoring_here_gives(trained_small, kserve):
    films = trained_small.accepted[:3]
    one = requests.post(kserve.predict, json={"instances": [_instance(films[0])]}, timeout=120)
    assert one.status_code == 200, one.text
    row = one.json()["predictions"][0]
    assert row["bone_age_months"] == pytest.approx(_local_months(trained_small, films[0]), abs=0.01)
    assert row["interval_low_months"] < row["bone_age_months"] < row["interval_high_months"]
    assert "SYNTHETIC-TRAINED MODEL" in row["warning"]

    sexes = ["F", "M", "F"]
    batch = requests.post(
        kserve.predict, json={"instances": [_instance(f, s) for f, s in zip(films, sexes, strict=True)]}, timeout=120
    )
    assert batch.status_code == 200, batch.text
    months = [r["bone_age_months"] for r in batch.json()["predictions"]]
    assert months == pytest.approx([_local_months(trained_small, f, s) for f, s in zip(films, sexes, strict=True)], abs=0.01)


@pytest.mark.parametrize(
    "ages", [{"datatype": "FP64", "data": [120.0, 96.0]}, {"datatype": "BYTES", "data": ["120", ""]}], ids=["fp64", "bytes"]
)
def test_v2_open_inference_protocol(trained_small, kserve, ages):
    films = trained_small.accepted[:2]
    request = {
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "data": [_b64(f) for f in films]},
            {"name": "sex", "shape": [2], "datatype": "BYTES", "data": ["F", "F"]},
            {"name": "chronological_age_months", "shape": [2], **ages},
        ]
    }
    reply = requests.post(f"{kserve.url}/v2/models/{NAME}/infer", json=request, timeout=120)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["bone_age_months"]["datatype"] == "FP64" and outputs["warning"]["datatype"] == "BYTES"
    assert outputs["bone_age_months"]["data"] == pytest.approx([_local_months(trained_small, f) for f in films], abs=0.01)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sex": "X"}, "not M or F"),
        ({"image": "***"}, "base64"),
        ({"image": base64.b64encode(b"hello").decode()}, "row 0"),
    ],
)
def test_a_bad_row_is_answered_400_with_the_row_and_the_reason(trained_small, kserve, change, reason):
    reply = requests.post(kserve.predict, json={"instances": [{**_instance(trained_small.accepted[0]), **change}]}, timeout=120)
    assert reply.status_code == 400, reply.text
    assert reason in reply.text


def test_a_request_without_instances_is_400(kserve):
    reply = requests.post(kserve.predict, json={"rows": []}, timeout=60)
    assert reply.status_code == 400 and "instances" in reply.text


def test_an_out_of_distribution_film_is_refused_with_its_reason(tmp_path, kserve):
    reply = requests.post(kserve.predict, json={"instances": [_instance(photograph_png(tmp_path))]}, timeout=120)
    assert reply.status_code == 400 and "out of distribution" in reply.text


def test_an_image_with_no_edges_is_refused_as_no_radiograph(tmp_path, kserve):
    reply = requests.post(kserve.predict, json={"instances": [_instance(smooth_ramp_png(tmp_path))]}, timeout=120)
    assert reply.status_code == 400 and "has no edges" in reply.text


def test_readiness_and_liveness(kserve):
    assert requests.get(f"{kserve.url}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{kserve.url}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{kserve.url}/v2/models/{NAME}/ready", timeout=10).status_code == 200
    assert requests.get(f"{kserve.url}/v1/models/{NAME}", timeout=10).json()["ready"] is True
    assert requests.get(f"{kserve.url}/v2/models/not-served/ready", timeout=10).status_code == 404


def test_every_film_sent_leaves_a_record_for_the_monitor(trained_small, kserve, tmp_path):
    before = len(read_records(str(kserve.records)))
    films = [*trained_small.accepted[:2], photograph_png(tmp_path)]
    requests.post(kserve.predict, json={"instances": [_instance(f) for f in films]}, timeout=120)
    records = read_records(str(kserve.records)).iloc[before:]
    assert len(records) == len(films)
    assert records["refused"].tolist() == [False, False, True]
    assert records["bone_age_months"].notna().tolist() == [True, True, False]
    assert (records["model"] == NAME).all() and (records["latency_ms"] > 0).all()
    assert records[["features", "image", "texture", "orientation"]].notna().all().all()
