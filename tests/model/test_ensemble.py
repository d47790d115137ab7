"""Ensembles (boneage.training.ensemble): members trained from the recipe with their own seeds and sizes, a
member that fails recorded and left out, the minimum enforced, the combination exactly the weighted
members with their own corrections taken out, fixed test-time views, and a model that every
scoring path (evaluate, predict, the registry) takes as it takes one model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from boneage.config import Params
from boneage.contracts import MEMBER_FILE, TARGET_FILE
from boneage.errors import BoneageError

# Slow: every test here trains members or reads them.
pytestmark = pytest.mark.slow

MEMBERS = [
    {"name": "small", "seed": 1},
    # A smaller backbone input than the prepared image: resized inside the member's model.
    {"name": "resized", "seed": 2, "overrides": {"model.image_size": 64}},
    # Fails the same way on every attempt: small_cnn has no ImageNet weights.
    {"name": "broken", "seed": 3, "overrides": {"model.weights": "imagenet"}},
]


def tiny_params(tmp: Path, **ensemble) -> Params:
    return Params.model_validate(
        {
            "seed": 4,
            "data": {"source": str(tmp / "synth")},
            "preprocess": {"image_size": 75, "workers": 1},
            "model": {"backbone": "small_cnn", "weights": "none", "head_units": [32], "head_dropout": 0.0},
            "train": {
                "batch_size": 32,
                "epochs": 2,
                "learning_rate": 3e-3,
                "lr_schedule": "cosine",
                "bn_recalibration_images": 32,
                "augment": {"enabled": False},
            },
            "ensemble": {"members": MEMBERS, **ensemble},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db",
                "artifact_root": str(tmp / "mlruns" / "art"),
                "log_system_metrics": False,
            },
        }
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> SimpleNamespace:
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.data.synth import write_dataset
    from boneage.training.ensemble import train_member

    tmp = tmp_path_factory.mktemp("ensemble")
    write_dataset(tmp / "synth", count=200, seed=11, size=160, workers=1)
    params = tiny_params(tmp)
    result = ingest(params, tmp / "ingest")
    preprocess(params, result.manifest_path, tmp / "pre")
    records = {m.name: train_member(params, m.name, tmp / "pre", tmp / "members" / m.name) for m in params.ensemble.members}
    dirs = [tmp / "members" / m.name for m in params.ensemble.members]
    return SimpleNamespace(tmp=tmp, params=params, data=tmp / "pre", dirs=dirs, records=records)


@pytest.fixture(scope="module")
def built(members) -> SimpleNamespace:
    from boneage.training.ensemble import build

    result = build(members.params, members.dirs, members.data, members.tmp / "ensemble")
    return SimpleNamespace(result=result, folder=members.tmp / "ensemble")


def test_a_member_that_keeps_failing_is_recorded_with_its_reason_after_each_attempt(members):
    broken = members.records["broken"]
    assert broken["status"] == "failed" and broken["attempts"] == members.params.ensemble.member_attempts
    assert "pretrained weights" in broken["reason"]
    on_disk = json.loads((members.tmp / "members" / "broken" / MEMBER_FILE).read_text())
    assert on_disk == broken
    good = members.records["resized"]
    assert good["status"] == "trained" and good["backbone_image_size"] == 64 and good["train_seconds"] > 0


def test_the_ensemble_leaves_out_the_failed_member_and_records_which_are_in(built):
    result = built.result
    assert result.members == ["small", "resized"] and list(result.failed) == ["broken"]
    provenance = json.loads((built.folder / "predictor.json").read_text())["provenance"]
    assert provenance["members_in"] == "small,resized"
    assert "pretrained weights" in provenance["members_failed"]["broken"]
    assert provenance["members"]["resized"]["backbone_image_size"] == 64
    assert provenance["dataset_kind"] == "synthetic"


def test_fewer_finished_members_than_the_minimum_fail_naming_each_reason(members, tmp_path):
    from boneage.training.ensemble import build

    strict = members.params.model_copy(update={"ensemble": members.params.ensemble.model_copy(update={"min_members": 3})})
    with pytest.raises(BoneageError, match=r"only 2 of 3 .*min_members \(3\): broken: .*pretrained weights"):
        build(strict, members.dirs, members.data, tmp_path / "out")
    missing = members.dirs[:1]  # the others never left a record
    with pytest.raises(BoneageError, match="resized: no record"):
        build(members.params, missing, members.data, tmp_path / "out")


def test_the_ensemble_is_exactly_the_weighted_members_without_their_own_corrections_plus_its_own(members, built):
    from boneage.model.network import load_predict_model
    from boneage.training.dataset import make_dataset

    ensemble = load_predict_model(built.folder / "model.keras")
    inputs, _ = next(iter(make_dataset(members.data, "test", 75, 16)))
    expected = np.full(16, built.result.offset_months)
    for name, weight in zip(built.result.members, built.result.weights, strict=True):
        member = load_predict_model(members.tmp / "members" / name / "model.keras")
        own = json.loads((members.tmp / "members" / name / TARGET_FILE).read_text())["offset_months"]
        expected += weight * (np.asarray(member.predict_on_batch(inputs)).reshape(-1) - own)
    got = np.asarray(ensemble.predict_on_batch(inputs)).reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_every_scoring_path_takes_the_ensemble_as_one_model(members, built):
    """evaluate (from the TFRecords), the Predictor and the registered pyfunc (from the film's file)
    give a test film the same months."""
    import base64

    import mlflow
    import pandas as pd

    from boneage.serve.predict import Predictor, predict_files
    from boneage.training.evaluate import evaluate

    predictor = Predictor.load(str(built.folder))
    assert predictor.ood is not None  # one check for the ensemble, fitted on its training films
    evaluate(members.params, members.data, built.folder, members.tmp / "reports", log_to_mlflow=False)
    evaluated = pd.read_csv(members.tmp / "reports" / "predictions.csv", dtype={"id": str}).query("split == 'test'")
    film = evaluated.iloc[0]
    path = members.tmp / "synth" / "boneage-training-dataset" / f"{film['id']}.png"
    sex = "M" if str(film["male"]).lower() == "true" else "F"
    by_predictor = predict_files(predictor, [path], sex=sex)[0]
    mlflow.set_tracking_uri(members.params.mlflow.tracking_uri)
    model_uri = json.loads((built.folder / "run.json").read_text())["model_uri"]
    by_pyfunc = mlflow.pyfunc.load_model(model_uri).predict(
        pd.DataFrame([{"image": base64.b64encode(path.read_bytes()).decode(), "sex": sex}])
    )
    assert by_predictor.bone_age_months == pytest.approx(film["predicted"], abs=0.01)
    assert by_pyfunc["bone_age_months"].iloc[0] == pytest.approx(film["predicted"], abs=0.01)


def test_grad_cam_of_an_ensemble_is_the_mean_of_its_members_maps(members, built):
    from boneage.serve.clinical_report import grad_cam
    from boneage.serve.predict import Predictor
    from boneage.training.dataset import make_dataset

    predictor = Predictor.load(str(built.folder))
    inputs, _ = next(iter(make_dataset(members.data, "test", 75, 1)))
    image = inputs["image"].numpy()[0, :, :, 0]
    cam = grad_cam(predictor, image, male=True)
    assert cam.shape == image.shape and np.isfinite(cam).all() and cam.max() == pytest.approx(1.0)
    # Each member's own map, from its own saved model; their mean, scaled to 0..1, is the ensemble's.
    maps = [grad_cam(Predictor.load(str(members.tmp / "members" / name)), image, male=True) for name in built.result.members]
    mean = np.mean(maps, axis=0)
    np.testing.assert_allclose(cam, mean / mean.max(), atol=0.05)
    assert np.abs(maps[0] - maps[1]).max() > 0.1, "the members' maps differ, so the test can tell a mean from one of them"


def test_a_weighted_ensemble_fits_weights_that_reproduce_its_output(members, tmp_path):
    from boneage.model.network import load_predict_model
    from boneage.training.dataset import make_dataset
    from boneage.training.ensemble import build

    weighted = members.params.model_copy(update={"ensemble": members.params.ensemble.model_copy(update={"combine": "weighted"})})
    result = build(weighted, members.dirs, members.data, tmp_path / "weighted")
    weights = np.asarray(result.weights)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    ensemble = load_predict_model(tmp_path / "weighted" / "model.keras")
    inputs, _ = next(iter(make_dataset(members.data, "test", 75, 16)))
    expected = np.full(16, result.offset_months)
    for name, weight in zip(result.members, result.weights, strict=True):
        member = load_predict_model(members.tmp / "members" / name / "model.keras")
        own = json.loads((members.tmp / "members" / name / TARGET_FILE).read_text())["offset_months"]
        expected += weight * (np.asarray(member.predict_on_batch(inputs)).reshape(-1) - own)
    np.testing.assert_allclose(np.asarray(ensemble.predict_on_batch(inputs)).reshape(-1), expected, atol=1e-3)


def test_the_members_runs_become_children_of_the_ensembles_run(members, built):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=members.params.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(members.params.mlflow.experiment).experiment_id
    # A run has one parent: the latest ensemble built over these members takes them (here `built`,
    # or the weighted one another test builds over the same members).
    ensembles = client.search_runs([experiment], "attributes.run_name LIKE 'ensemble-%'", order_by=["attributes.start_time DESC"])
    assert built.result.run_id in [r.info.run_id for r in ensembles]
    latest = ensembles[0]
    for name in built.result.members:
        run = client.get_run(members.records[name]["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == latest.info.run_id
        assert run.data.tags["boneage.ensemble_member"] == name
    assert latest.data.metrics["ensemble_members"] == 2 and "member_val_mae_months.small" in latest.data.metrics


def test_weighted_combination_fits_on_films_the_calibration_never_sees():
    from boneage.training.ensemble import split_validation

    ids = [f"f{i}" for i in range(40)]
    fit, calibrate = split_validation(ids, 0.5, seed=4)
    assert len(fit) == 20 and not set(fit) & set(calibrate) and sorted(fit + calibrate) == sorted(ids)
    assert split_validation(list(reversed(ids)), 0.5, seed=4) == (fit, calibrate)  # the order given does not matter


def test_weights_recover_the_better_member():
    from boneage.training.ensemble import fit_weights

    rng = np.random.default_rng(0)
    true = rng.uniform(0, 200, 500)
    good, bad = true + rng.normal(0, 5, 500), true + rng.normal(0, 40, 500)
    weights = fit_weights(np.column_stack([good, bad]), true, "weighted")
    assert weights[0] > 0.9 and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(fit_weights(np.column_stack([good, bad]), true, "mean"), [0.5, 0.5])


def test_a_test_time_view_turns_and_scales_about_the_centre_and_never_mirrors():
    from boneage.model.network import FixedView

    image = np.zeros((1, 9, 9, 1), np.uint8)
    image[0, 0:3, 4, 0] = 255  # a bar from the top edge to the centre
    assert np.array_equal(np.asarray(FixedView(0.0, 1.0)(image)), image)
    # A quarter turn is np.rot90's (counter-clockwise): the bar now points left, not right.
    np.testing.assert_array_equal(np.asarray(FixedView(90.0, 1.0)(image))[0, :, :, 0], np.rot90(image[0, :, :, 0]))
    shrunk = np.asarray(FixedView(0.0, 0.5)(image))[0, :, :, 0]
    assert shrunk[0:2, 4].max() == 0 and shrunk[3, 4] > 0  # half the size, still about the centre


def test_tta_views_travel_inside_the_saved_model_and_are_averaged(members, tmp_path):
    from boneage.model.network import FixedView, load_predict_model
    from boneage.training.dataset import make_dataset
    from boneage.training.ensemble import combined_model, member_stack, views

    raw = members.params.model_dump(mode="json")
    raw["ensemble"]["tta"]["enabled"] = True
    seen = views(Params.model_validate(raw))
    assert seen == [(0.0, 1.0), (-5.0, 1.0), (5.0, 1.0), (0.0, 0.95), (0.0, 1.05)]  # no flips
    member = load_predict_model(members.tmp / "members" / "small" / "model.keras")
    inputs, stack, tap = member_stack([("small", member)], seen, 75)
    combined_model(inputs, stack, tap, np.ones(1), 0.0).save(tmp_path / "tta.keras")
    model = load_predict_model(tmp_path / "tta.keras")  # safe mode: FixedView is registered
    assert sum(isinstance(layer, FixedView) for layer in model.layers) == 4
    batch, _ = next(iter(make_dataset(members.data, "test", 75, 8)))
    by_view = [member.predict_on_batch({**batch, "image": FixedView(d, s)(batch["image"])}) for d, s in seen]
    np.testing.assert_allclose(model.predict_on_batch(batch), np.mean(by_view, axis=0), atol=1e-3)


@pytest.mark.parametrize(
    "ensemble, message",
    [
        ({"members": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"members": [{"name": "a"}], "min_members": 2}, "min_members 2 is more than the 1 members"),
        ({"members": [{"name": "a", "overrides": {"preprocess.image_size": 128}}]}, "only model./train. keys"),
        ({"members": [{"name": "a", "overrides": {"train.epochs": 0}}], "min_members": 1}, "ensemble member a"),
        ({"members": [{"name": "Bad Name"}]}, "name"),
    ],
)
def test_bad_member_lists_fail_at_load_time_naming_the_member(ensemble, message):
    from pydantic import ValidationError

    with pytest.raises((BoneageError, ValidationError), match=message):
        Params.model_validate({"ensemble": ensemble})


def test_a_member_trains_the_recipe_with_its_own_seed_and_overrides_and_no_check_of_its_own():
    params = Params.model_validate(
        {
            "seed": 7,
            "ensemble": {
                "members": [{"name": "b3", "seed": 2, "overrides": {"model.backbone": "efficientnet_b3"}}],
                "min_members": 1,
            },
        }
    )
    member = params.member_params(params.ensemble.members[0])
    assert (member.seed, member.model.backbone, member.train.ood.enabled) == (2, "efficientnet_b3", False)
    assert member.train.epochs == params.train.epochs and member.ensemble.members == ()
