"""The out-of-distribution check on inputs whose distribution is known: films like the training
ones pass at the rate the validation quantile promises, turned or mirrored ones are put upright,
unlike ones are refused (by their features, their layout, their texture or their orientation), and
the check survives a save and load; a file that is not a check is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.config import OodConfig
from boneage.data.imaging import DIHEDRAL_VIEWS
from boneage.errors import BoneageError
from boneage.model.ood import FitData, Gaussian, OodCheck, fit, image_signature, in_view, texture_signature

FEATURES = 200  # more than a covariance of 400 films can estimate without shrinkage
SIDE = 32


def _features(rng, n: int, shift: float = 0.0) -> np.ndarray:
    """Correlated features, like pooled CNN activations: a few factors plus noise."""
    loadings = np.random.default_rng(123).normal(size=(5, FEATURES))
    return rng.normal(size=(n, 5)) @ loadings + 0.3 * rng.normal(size=(n, FEATURES)) + shift


def _upright_films(rng, n: int) -> np.ndarray:
    """Drawn "films": a bright block in the upper half (fingers up), a fainter one below, a small
    one to its right (a thumb: a mirror image has it on the left), noise."""
    images = rng.normal(20, 5, (n, SIDE, SIDE))
    for image in images:
        x, w = rng.integers(4, 9), rng.integers(10, 14)
        image[rng.integers(2, 6) : SIDE // 2, x : x + w] += rng.uniform(150, 200)
        image[SIDE // 2 : SIDE - 2, x + 2 : x + w - 2] += rng.uniform(60, 90)
        image[SIDE // 2 - 4 : SIDE // 2 + 2, x + w : x + w + 5] += rng.uniform(100, 140)
    return np.clip(images, 0, 255).astype(np.uint8)[..., None]


def _fit_data(rng, n: int, views: int) -> FitData:
    films = _upright_films(rng, n)
    return FitData(_features(rng, n), texture_signature(films), [image_signature(in_view(films, v), 8) for v in range(views)])


def _check(rng, quantile: float = 0.98) -> OodCheck:
    cfg = OodConfig(quantile=quantile, image_side=8)
    return fit(_fit_data(rng, 400, DIHEDRAL_VIEWS), _fit_data(rng, 2000, 1), cfg)


def test_the_mahalanobis_score_refuses_broken_correlations_and_shifts():
    rng = np.random.default_rng(0)
    gaussian = Gaussian.fit(_features(rng, 400), sd_floor_fraction=0.01)
    threshold = np.quantile(gaussian.distance(_features(rng, 2000)), 0.98)
    assert abs((gaussian.distance(_features(rng, 5000)) > threshold).mean() - 0.02) < 0.01
    # Same marginal spread, broken correlations: each feature alone looks normal, together they do not.
    shuffled = _features(rng, 500)
    for column in shuffled.T:
        rng.shuffle(column)
    assert (gaussian.distance(shuffled) > threshold).mean() > 0.99
    assert (gaussian.distance(_features(rng, 500, shift=1.0)) > threshold).mean() > 0.99


def test_films_like_the_training_ones_pass_at_the_promised_rate():
    rng = np.random.default_rng(1)
    check = _check(rng, quantile=0.98)
    films = _upright_films(rng, 3000)
    refused = check.scores(_features(rng, 3000), films) > 1.0
    assert abs(refused.mean() - 0.02) < 0.015, refused.mean()


@pytest.mark.parametrize("view", range(DIHEDRAL_VIEWS))
def test_a_film_turned_or_mirrored_is_put_upright_and_passes(view):
    rng = np.random.default_rng(2)
    check = _check(rng)
    films = _upright_films(rng, 200)
    upright, views, orientation = check.upright(in_view(films, view))
    assert (views == view).mean() >= 0.99
    put_right = views == view
    assert np.array_equal(upright[put_right], films[put_right])
    assert (check.scores(_features(rng, 200), upright, orientation) <= 1.0).mean() >= 0.95


def test_an_image_with_no_way_up_is_refused():
    """A smooth ramp, turned every way: nothing in it says which way is up, or that it is a film."""
    rng = np.random.default_rng(7)
    check = _check(rng)
    ramps = np.stack([np.rot90(np.tile(np.linspace(0, 255, SIDE), (SIDE, 1)), k) for k in range(4)] * 25)
    ramps = ramps.astype(np.uint8)[..., None]
    upright, _, orientation = check.upright(ramps)
    reasons = check.judge(_features(rng, len(ramps)), upright, orientation)[1]
    assert all(r is not None and r.startswith("out of distribution") for r in reasons)


def test_a_film_with_another_texture_is_refused_for_it():
    """The same layout drawn smooth (no grain): only the texture tells it from the training films."""
    rng = np.random.default_rng(6)
    check = _check(rng)
    films = _upright_films(rng, 100)
    smooth = np.stack([np.clip(np.round(f.astype(float) / 40) * 40, 0, 255) for f in films]).astype(np.uint8)
    reasons = check.refusal(_features(rng, 100), smooth)
    assert sum(r is not None and "texture" in r for r in reasons) >= 99


def test_unlike_features_are_refused_with_the_reason():
    rng = np.random.default_rng(3)
    check = _check(rng)
    reasons = check.refusal(_features(rng, 100, shift=1.0), _upright_films(rng, 100))
    assert all(r and "the model's features" in r for r in reasons)


def test_a_feature_constant_on_the_training_films_does_not_make_every_distance_infinite():
    rng = np.random.default_rng(4)
    train, val = _features(rng, 400), _features(rng, 400)
    train[:, 0] = val[:, 0] = 0.0  # a ReLU channel that never fires
    gaussian = Gaussian.fit(train, 0.01)
    assert np.isfinite(gaussian.distance(val)).all()


def test_the_check_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(5)
    check = _check(rng)
    check.save(tmp_path / "ood.npz")
    again = OodCheck.load(tmp_path / "ood.npz")
    features, films = _features(rng, 50), _upright_films(rng, 50)
    assert np.allclose(again.scores(features, films), check.scores(features, films))
    assert again.thresholds == check.thresholds and again.image_side == 8
    (tmp_path / "bad.npz").write_text("not a check")
    with pytest.raises(BoneageError, match="bad.npz: not a boneage out-of-distribution check"):
        OodCheck.load(tmp_path / "bad.npz")


def test_too_few_films_to_fit_a_check_is_a_clear_error():
    empty = FitData(np.zeros((1, 4)), np.zeros((1, 4)), [np.zeros((1, 4))] * DIHEDRAL_VIEWS)
    with pytest.raises(BoneageError, match="train.ood.enabled: false"):
        fit(empty, FitData(np.zeros((0, 4)), np.zeros((0, 4)), [np.zeros((0, 4))]), OodConfig())
