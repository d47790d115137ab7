"""`boneage predict` and the served model, on a small model trained here on synthetic data: the
interval's coverage on held-out data, Grad-CAM on the hand, the 40 real radiographs, reports,
DICOM headers, rejections, and a REST round trip through `mlflow models serve`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from boneage.cli import app
from boneage.contracts import PREDICTOR_FILE
from boneage.data.imaging import read_radiograph
from boneage.model.calibration import conformal_halfwidth
from boneage.model.ood import PARTS
from boneage.serve.predict import Predictor, predict_files
from tests.conftest import RSNA_SAMPLE, dicom_file, require

# Slow: every test here reads the model trained once a session.
pytestmark = pytest.mark.slow

INTERVAL_RESPLITS = 500
INTERVAL_MC_TOLERANCE = 0.01
# The test split's own coverage may fall below 90% by chance as often as this.
INTERVAL_SAMPLING_ALPHA = 0.01


@pytest.fixture(scope="module")
def trained(trained_small) -> SimpleNamespace:
    return trained_small


@pytest.fixture(scope="module")
def clinical(trained, tmp_path_factory) -> Path:
    """The trained model with its provenance relabelled as real: a stand-in for a model trained on
    real films (too slow to train here), whose outputs carry the SDS and the clinical call."""
    folder = tmp_path_factory.mktemp("clinical") / "models"
    shutil.copytree(trained.models, folder, ignore=shutil.ignore_patterns("checkpoint"))
    config = json.loads((folder / PREDICTOR_FILE).read_text())
    assert config["provenance"]["dataset_kind"] == "synthetic"
    config["provenance"]["dataset_kind"] = "real"
    (folder / PREDICTOR_FILE).write_text(json.dumps(config))
    return folder


def _residuals(trained, split: str) -> np.ndarray:
    from boneage.training.dataset import predict_split

    pred = predict_split(trained.predictor.model, trained.data, split, 75, 64)
    merged = pred.merge(trained.manifest[["id", "boneage"]], on="id")
    return (merged["boneage"] - merged["predicted"]).to_numpy()


def test_the_90_percent_interval_holds_at_least_90_percent_of_held_out_ages(trained):
    """The README's promise: a new case's interval holds its true age at least 90% of the time."""
    level = trained.predictor.config.interval_level
    val, test = _residuals(trained, "val"), _residuals(trained, "test")
    assert level == 0.9 and len(test) >= 40
    # The guarantee is over draws of calibration and new cases. Val and test residuals are
    # exchangeable, so re-splitting their pool at random and averaging the coverage measures it;
    # the Monte Carlo error of the mean over the draws is well under the tolerance.
    pool, rng, covered = np.concatenate([val, test]), np.random.default_rng(0), []
    for _ in range(INTERVAL_RESPLITS):
        order = rng.permutation(len(pool))
        calibration, new = pool[order[: len(val)]], pool[order[len(val) :]]
        covered.append(np.mean(np.abs(new) <= conformal_halfwidth(calibration, level)))
    assert np.mean(covered) >= level - INTERVAL_MC_TOLERANCE, f"average coverage {np.mean(covered):.3f}"
    # The model's own interval on its test split: at least 90% up to binomial sampling error.
    half = trained.predictor.config.interval_halfwidth_months
    coverage = float(np.mean(np.abs(test) <= half))
    floor = stats.binom.ppf(INTERVAL_SAMPLING_ALPHA, len(test), level) / len(test)
    assert coverage >= floor, f"test coverage {coverage:.2f} < {floor:.2f} of the nominal 90% (±{half:.1f} months)"
    # Not a vacuously wide interval: the same recipe at 50% covers far less.
    assert float(np.mean(np.abs(test) <= conformal_halfwidth(val, 0.5))) <= 0.75


def test_grad_cam_mass_lies_mostly_on_the_hand(trained):
    from boneage.data.handcrop import hand_mask
    from boneage.serve.clinical_report import grad_cam

    test_ids = trained.manifest.loc[trained.manifest["split"] == "test", "id"].head(8)
    fractions, areas = [], []
    for image_id in test_ids:
        radiograph = read_radiograph(trained.tmp / "synth" / "boneage-training-dataset" / f"{image_id}.png", 10**8)
        image, _ = trained.predictor.prepare(radiograph)
        cam = grad_cam(trained.predictor, image, male=True)
        # "The hand" as the product's own hand finder sees it (bone and soft tissue).
        mask, _ = hand_mask(image, trained.predictor.preprocess_cfg)
        hand = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        fractions.append(cam[hand].sum() / cam.sum())
        areas.append(hand.mean())
    assert np.median(fractions) > 0.5, f"Grad-CAM mass on the hand: {np.round(fractions, 2)}, hand area {np.round(areas, 2)}"
    assert np.median(fractions) > np.median(areas), "no more on the hand than its share of the image"


def _real_samples(predictor) -> list:
    root = require(RSNA_SAMPLE)
    labels = pd.read_csv(root / "boneage-training-dataset.csv", dtype={"id": str})
    return [
        predictor.score(
            read_radiograph(root / "boneage-training-dataset" / f"{row.id}.png", 10**8), row.id, "M" if row.male else "F"
        )
        for row in labels.itertuples()
    ]


def test_without_its_check_every_real_radiograph_gets_a_bone_age(trained):
    """The crop and the model on 40 real full-resolution films: a finite, distinct age for each, marked
    as coming from a model that checks nothing."""
    unchecked = Predictor(trained.predictor.model, trained.predictor.config, ood=None)
    results = _real_samples(unchecked)
    assert len(results) == 40
    assert [r.source for r in results if r.rejected] == []
    ages = np.array([r.bone_age_months for r in results])
    assert np.isfinite(ages).all()
    assert all(r.interval_months[0] <= r.bone_age_months <= r.interval_months[1] for r in results)
    assert len(np.unique(ages.round(1))) > 10, "the films differ, so must their bone ages"
    assert all("WITHOUT AN OUT-OF-DISTRIBUTION CHECK" in r.warning for r in results)


def test_a_synthetic_trained_model_never_gives_a_real_film_an_unmarked_number(trained):
    """The demo's kind of model on real films, with a chronological age. Without its check every film
    is scored, and each number is marked synthetic, with no SDS and no call; with its check each film
    is refused as unlike its training films or scored the same way (how often it refuses them is
    measured on the real films in benchmarks/bench_ood.py)."""
    root = require(RSNA_SAMPLE)
    labels = pd.read_csv(root / "boneage-training-dataset.csv", dtype={"id": str})
    unchecked = Predictor(trained.predictor.model, trained.predictor.config, ood=None)
    for predictor in (unchecked, trained.predictor):
        scored = 0
        for row in labels.itertuples():
            radiograph = read_radiograph(root / "boneage-training-dataset" / f"{row.id}.png", 10**8)
            result = predictor.score(radiograph, row.id, "M" if row.male else "F", 120.0)
            if result.rejected:
                assert predictor.ood and result.rejected.startswith("out of distribution") and result.bone_age_months is None
                continue
            scored += 1
            assert "SYNTHETIC-TRAINED MODEL" in result.warning and result.assessment is None, row.id
        if predictor is unchecked:
            assert scored == len(labels) == 40


def test_its_own_held_out_films_mostly_pass_the_check(trained):
    """Each of the check's thresholds is the top of ~48 validation films' scores: a new film like them
    is refused with probability about (scores)/49. Far more refusals than that means a broken check."""
    val = int((trained.manifest["split"] == "val").sum())
    n = len(trained.test_films)
    allowed = stats.binom.ppf(0.999, n, len(PARTS) / (val + 1))
    assert n >= 40 and trained.refused_test_films <= allowed, f"{trained.refused_test_films} of {n} refused"


def _foreign_images(trained, tmp_path) -> dict[str, Path]:
    from benchmarks.bench_ood import chest_image, noise_image, photo_crop, photographs

    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(20, 230, 256), (256, 1)).astype(np.uint8)
    images = {
        "smooth grey ramp": ramp,
        "radial gradient": np.clip(np.hypot(*np.mgrid[-128:128, -128:128]) * 1.4, 0, 255).astype(np.uint8),
        "smooth noise": noise_image(rng, 256),
        "chest-like drawing": chest_image(rng, 256),
        "photograph": photo_crop(rng, photographs(), 256),
    }
    paths = {}
    for kind, pixels in images.items():
        paths[kind] = tmp_path / f"{kind.replace(' ', '-')}.png"
        cv2.imwrite(str(paths[kind]), pixels)
    return paths


def test_images_it_was_not_made_for_are_refused_with_the_reason(trained, tmp_path):
    foreign = _foreign_images(trained, tmp_path)
    results = dict(zip(foreign, predict_files(trained.predictor, list(foreign.values()), sex="F"), strict=True))
    for kind, result in results.items():
        assert result.rejected, f"{kind} was scored: {result.bone_age_months} months, score {result.ood_score}"
        assert result.bone_age_months is None and result.interval_months is None


@pytest.mark.parametrize(("turn", "said"), [(cv2.ROTATE_180, "turned 180°"), (None, "mirrored")])
def test_a_hand_turned_or_mirrored_is_put_upright_scored_and_says_so(trained, tmp_path, turn, said):
    film_path = _synthetic(trained, 1)[0]
    film = cv2.imread(str(film_path), cv2.IMREAD_GRAYSCALE)
    moved = tmp_path / "moved.png"
    cv2.imwrite(str(moved), cv2.rotate(film, turn) if turn is not None else film[:, ::-1])
    upright, fixed = predict_files(trained.predictor, [film_path, moved], sex="F")
    assert not fixed.rejected and fixed.orientation.startswith(said), fixed
    assert upright.orientation is None
    # The moved film's crop is not exactly the upright one's (the crop rounds, contrast tiles are not
    # symmetric): its age agrees within the model's own error, not to the digit.
    assert fixed.bone_age_months == pytest.approx(upright.bone_age_months, abs=15.0)


@pytest.mark.parametrize("view", range(1, 8))
def test_a_prepared_image_in_any_view_is_scored_as_the_upright_one(trained, view):
    from boneage.data.imaging import dihedral

    upright = predict_files(trained.predictor, _synthetic(trained, 1), sex="F")[0]
    judged = trained.predictor.predict_prepared(dihedral(upright.prepared, view)[None], np.array([False]))
    assert judged.views[0] == view
    assert np.array_equal(judged.images[0].reshape(upright.prepared.shape), upright.prepared)
    assert judged.months[0] == pytest.approx(upright.bone_age_months, abs=0.01)


def test_batched_prediction_equals_one_at_a_time_and_keeps_order(trained, tmp_path):
    images = _synthetic(trained, 5)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((300, 240), np.uint8))
    files = [images[0], blank, *images[1:], tmp_path / "missing.png"]
    batched = predict_files(trained.predictor, files, sex="F", batch_size=3)
    single = [predict_files(trained.predictor, [f], sex="F")[0] for f in files]
    assert [r.source for r in batched] == [str(f) for f in files]
    assert [bool(r.rejected) for r in batched] == [False, True, False, False, False, False, True]
    for b, s in zip(batched, single, strict=True):
        assert b.rejected == s.rejected
        if not s.rejected:  # float reductions differ slightly between a batch of 3 and of 1
            assert b.bone_age_months == pytest.approx(s.bone_age_months, abs=0.05)


def _synthetic(trained, n: int) -> list[Path]:
    """The first ``n`` held-out synthetic films that the model's check accepts."""
    assert len(trained.accepted) >= n
    return trained.accepted[:n]


def test_cli_predict_json_with_sds_and_report(trained, clinical, tmp_path):
    images = _synthetic(trained, 2)
    result = CliRunner().invoke(
        app,
        [
            "predict",
            *map(str, images),
            "--sex",
            "F",
            "--chronological-age",
            "120",
            "--model",
            str(clinical),
            "--json",
            "--report",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    assert len(rows) == 2
    for row in rows:
        low, high = row["interval_months"]
        assert low <= row["bone_age_months"] <= high and row["interval_level"] == 0.9
        assert row["assessment"]["chronological_age_months"] == 120
        assert row["assessment"]["call"] in ("delayed", "normal", "advanced") and row["warning"] is None
        page = tmp_path / "rep" / f"{Path(row['source']).stem}.html"
        assert "SDS (Greulich" in page.read_text() and "data:image/png;base64," in page.read_text()
        assert "WARNING" not in page.read_text()
        assert (tmp_path / "rep" / f"{Path(row['source']).stem}.png").stat().st_size > 10_000


def test_cli_predict_rejects_what_it_cannot_score_and_keeps_the_rest(trained, tmp_path):
    good = _synthetic(trained, 1)[0]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((300, 240), np.uint8))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = CliRunner().invoke(app, ["predict", str(good), str(blank), str(text), "--sex", "M", "--model", str(trained.models)])
    assert result.exit_code == 1
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert "months" in lines[str(good)]
    assert lines[str(blank)].startswith("REJECTED: no hand found")
    assert lines[str(text)].startswith("REJECTED:")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"), [(["--sex", "X"], "not M or F"), (["--sex", "F", "--chronological-age", "-5"], "outside 0-240")]
)
def test_cli_predict_refuses_bad_options(trained, args, message):
    result = CliRunner().invoke(app, ["predict", str(_synthetic(trained, 1)[0]), *args, "--model", str(trained.models)])
    assert result.exit_code == 1 and message in result.output


def test_dicom_header_supplies_sex_and_age(trained, clinical, tmp_path):
    png = read_radiograph(_synthetic(trained, 1)[0], 10**8).pixels
    dcm = dicom_file(tmp_path / "hand.dcm", png.astype(np.uint16) * 257, "MONOCHROME2")  # F, 010Y
    empty = dicom_file(tmp_path / "empty.dcm", png.astype(np.uint16), "MONOCHROME2", with_pixels=False)
    result = CliRunner().invoke(app, ["predict", str(dcm), str(empty), "--model", str(clinical), "--json"])
    rows = {Path(r["source"]).name: r for r in json.loads(result.stdout[result.stdout.index("[") :])}
    assert rows["hand.dcm"]["sex"] == "F" and rows["hand.dcm"]["assessment"]["chronological_age_months"] == 120
    assert "pixel" in rows["empty.dcm"]["rejected"].lower()
    assert result.exit_code == 1


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not an image", "REJECTED"),
        ("truncated PNG", "REJECTED"),
        ("0x0 image", "REJECTED"),
        ("decompression bomb", "REJECTED"),
        ("16-bit PNG", "months"),
        ("RGBA PNG", "months"),
    ],
)
def test_predict_bad_and_unusual_inputs(trained, tmp_path, kind, expected):
    """Each input alone: a clear rejection (exit 1) or, for formats we support, a number."""
    from tests.conftest import bomb_png

    good = _synthetic(trained, 1)[0]
    pixels = cv2.imread(str(good), cv2.IMREAD_GRAYSCALE)
    path = tmp_path / "input.png"
    if kind == "not an image":
        path.write_text("hello")
    elif kind == "truncated PNG":
        path.write_bytes(good.read_bytes()[:400])
    elif kind == "0x0 image":
        path.write_bytes(bomb_png(0, 0))
    elif kind == "decompression bomb":
        path.write_bytes(bomb_png())
    elif kind == "16-bit PNG":
        cv2.imwrite(str(path), pixels.astype(np.uint16) * 257)
    elif kind == "RGBA PNG":
        cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGRA))
    result = CliRunner().invoke(app, ["predict", str(path), "--sex", "F", "--model", str(trained.models)])
    assert expected in result.stdout, result.output
    assert result.exit_code == (1 if expected == "REJECTED" else 0)
    assert "Traceback" not in result.output


def test_cli_predict_table_scores_every_row_with_its_own_sex(trained, clinical, tmp_path):
    """A worklist: relative paths resolve against the CSV's folder, each row has its own sex and
    age, and a bad row is rejected with its reason while the good rows are scored."""
    images = _synthetic(trained, 2)
    worklist_dir = tmp_path / "clinic"
    (worklist_dir / "films").mkdir(parents=True)
    for i, image in enumerate(images):
        (worklist_dir / "films" / f"f{i}.png").write_bytes(image.read_bytes())
    (worklist_dir / "worklist.csv").write_text(
        "id,path,sex,chronological_age\n"
        "a,films/f0.png,F,120\n"
        f"b,{worklist_dir / 'films' / 'f1.png'},M,\n"
        "c,films/f1.png,X,100\n"
        "d,films/missing.png,F,100\n"
        "e,films/f0.png,M,999\n"
        "f,films/f0.png,,\n"
    )
    out = tmp_path / "scored.csv"
    result = CliRunner().invoke(
        app, ["predict", "--table", str(worklist_dir / "worklist.csv"), "--model", str(clinical), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output  # some rows were rejected
    assert "Traceback" not in result.output
    scored = pd.read_csv(out, dtype={"id": str}, keep_default_na=False).set_index("id")
    assert list(scored.index) == ["a", "b", "c", "d", "e", "f"]
    assert scored.loc["a", "rejected"] == "" and scored.loc["b", "rejected"] == ""
    assert scored.loc["a", "call"] in ("delayed", "normal", "advanced") and scored.loc["b", "call"] == ""
    assert "not M or F" in scored.loc["c", "rejected"]
    assert "missing" in scored.loc["d", "rejected"]
    assert "outside 0-240" in scored.loc["e", "rejected"]
    assert "sex missing" in scored.loc["f", "rejected"]
    assert list(scored["csv_line"]) == [2, 3, 4, 5, 6, 7]
    # Row a is scored exactly as the same film given alone with --sex F.
    single_f = predict_files(trained.predictor, [images[0]], sex="F")[0].bone_age_months
    assert float(scored.loc["a", "bone_age_months"]) == pytest.approx(single_f, abs=0.05)


def test_cli_predict_table_without_a_sex_column_is_refused(trained, tmp_path):
    table = tmp_path / "worklist.csv"
    table.write_text("path\nfilm.png\n")
    result = CliRunner().invoke(app, ["predict", "--table", str(table), "--model", str(trained.models)])
    assert result.exit_code == 1 and "no column sex" in result.output and str(table) in result.output


def test_a_synthetic_model_marks_every_output_and_makes_no_clinical_call(trained, tmp_path):
    """The demo's model on a film with a chronological age: the number comes only with the marking,
    in the CLI text, the JSON, the worklist and the HTML report, and never with an SDS or a call."""
    image = _synthetic(trained, 1)[0]
    args = ["predict", str(image), "--sex", "F", "--chronological-age", "120", "--model", str(trained.models)]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "WARNING: SYNTHETIC-TRAINED MODEL" in text.stdout
    assert not re.search(r"SDS [+-]\d", text.stdout), text.stdout
    assert not any(call in text.stdout for call in (": normal", ": delayed", ": advanced"))
    as_json = CliRunner().invoke(app, [*args, "--json", "--report", str(tmp_path / "rep")])
    row = json.loads(as_json.stdout[as_json.stdout.index("[") :])[0]
    assert "SYNTHETIC-TRAINED MODEL" in row["warning"] and row["assessment"] is None
    page = (tmp_path / "rep" / f"{image.stem}.html").read_text()
    assert 'role="alert"' in page and "SYNTHETIC-TRAINED MODEL" in page and "SDS (Greulich" not in page
    (tmp_path / "w.csv").write_text(f"path,sex,chronological_age\n{image},F,120\n")
    CliRunner().invoke(
        app, ["predict", "--table", str(tmp_path / "w.csv"), "--model", str(trained.models), "--out", str(tmp_path / "s.csv")]
    )
    scored = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    assert "SYNTHETIC-TRAINED MODEL" in scored.loc[0, "warning"] and scored.loc[0, "sds"] == "" and scored.loc[0, "call"] == ""


def test_the_model_carries_its_provenance(trained):
    provenance = trained.predictor.config.provenance
    card = json.loads((trained.data / "dataset.json").read_text())
    assert provenance["dataset_kind"] == "synthetic" == card["kind"]
    assert provenance["dataset_fingerprint"] == card["fingerprint"] and len(card["fingerprint"]) == 16
    assert provenance["films"] == card["films"] and sum(card["films"].values()) == len(trained.manifest)
    assert provenance["image_size"] == 75 and provenance["backbone"] == "small_cnn"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=trained.params.mlflow.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.tags["provenance.dataset_kind"] == "synthetic"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train films", "val films", "test films"}


def test_register_writes_the_model_card_from_the_provenance_and_the_evaluation(trained, tmp_path):
    """The card on the registered version and in model_card.md says what the model is for, what it
    learned from (its provenance) and how it did (its evaluation), and is the same text in both."""
    from mlflow import MlflowClient

    from boneage.contracts import INTENDED_USE_NOTICE, MODEL_CARD_FILE
    from boneage.training.evaluate import evaluate
    from boneage.training.register import register

    metrics = evaluate(trained.params, trained.data, trained.models, tmp_path / "reports", log_to_mlflow=False)
    decision = register(trained.params, trained.models, tmp_path / "reports" / "metrics.json", tmp_path / "registry.json")
    card = (tmp_path / MODEL_CARD_FILE).read_text()
    provenance = trained.predictor.config.provenance
    assert INTENDED_USE_NOTICE in card and "Not a medical device" in card
    assert provenance["dataset_fingerprint"] in card and provenance["recipe_fingerprint"] in card
    assert f"{provenance['films']['train']} training" in card and provenance["backbone"] in card
    assert f"| all | {metrics['test']['n']} | {metrics['test']['mae']:.2f} |" in card
    assert "synthetic" in card.split("## Known limitations")[1]  # a synthetic model says what it is
    version = MlflowClient(trained.params.mlflow.tracking_uri).get_model_version(decision["model"], str(decision["version"]))
    assert version.description == card
