"""The learned hand locator's mechanics: its NumPy forward pass is the Keras network's, a box
follows its image through every turn and mirror image, a saved locator loads back the same, and a
blank film is refused before it. (What it finds on real films: tests/data/test_real_crop.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from boneage.config import PreprocessConfig
from boneage.data import handlocator
from boneage.data.handcrop import Box, locate_hand_learned
from boneage.data.imaging import DIHEDRAL_VIEWS, dihedral, undo_dihedral
from boneage.errors import BadInputError, BoneageError


@pytest.fixture(scope="module")
def keras_and_numpy():
    import keras

    keras.utils.set_random_seed(0)
    model = handlocator.network()
    # Moving statistics away from 0 and 1, so that folding BatchNorm into the convolutions is tested.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            rng = np.random.default_rng(len(gamma))
            layer.set_weights([gamma * 1.5, beta + 0.1, mean + rng.normal(0, 0.1, mean.shape), var * 2.0])
    return model, handlocator.to_locator(model)


def test_the_numpy_locator_computes_what_the_keras_network_does(keras_and_numpy):
    model, locator = keras_and_numpy
    thumbs = np.random.default_rng(1).integers(0, 256, (5, handlocator.INPUT_SIDE, handlocator.INPUT_SIDE), dtype=np.uint8)
    expected = model.predict(thumbs[..., None], verbose=0)
    assert np.allclose(locator.boxes(thumbs), expected, atol=1e-5)


@pytest.mark.parametrize("view", range(DIHEDRAL_VIEWS))
def test_a_box_follows_its_image_through_every_turn_and_mirror(view):
    image = np.zeros((20, 20), np.uint8)
    image[3:9, 12:18] = 1  # a box x0=12, y0=3, x1=18, y1=9
    box = np.array([12, 3, 18, 9]) / 20
    ys, xs = np.nonzero(dihedral(image, view))
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 20
    assert np.allclose(handlocator.dihedral_box(box, view), seen)
    assert np.allclose(handlocator.undo_dihedral_box(handlocator.dihedral_box(box, view), view), box)
    assert np.array_equal(undo_dihedral(dihedral(image, view), view), image)


def test_a_saved_locator_loads_back_the_same(keras_and_numpy, tmp_path):
    _, locator = keras_and_numpy
    locator.save(tmp_path / "loc.npz")
    again = handlocator.Locator.load(tmp_path / "loc.npz")
    thumb = np.random.default_rng(2).integers(0, 256, (handlocator.INPUT_SIDE, handlocator.INPUT_SIDE), dtype=np.uint8)
    assert np.array_equal(again.locate(thumb), locator.locate(thumb))
    (tmp_path / "bad.npz").write_text("no")
    with pytest.raises(BoneageError, match="not a boneage hand locator"):
        handlocator.Locator.load(tmp_path / "bad.npz")


def test_an_unknown_locator_is_a_clear_error():
    with pytest.raises(BoneageError, match="neither a packaged locator"):
        handlocator.locator_path("no-such-locator")


def test_a_blank_film_is_refused_before_the_locator():
    with pytest.raises(BadInputError, match="blank"):
        locate_hand_learned(np.full((300, 200), 90, np.uint8), PreprocessConfig(crop="locator"))


def test_the_packaged_locator_box_lies_inside_the_film():
    film = np.random.default_rng(3).integers(0, 256, (250, 180), dtype=np.uint8)
    box = locate_hand_learned(film, PreprocessConfig(crop="locator", crop_margin=0.5))
    assert 0 <= box.x0 < box.x1 <= 180 and 0 <= box.y0 < box.y1 <= 250


def test_each_view_is_described_and_upright_is_not():
    from boneage.data.imaging import describe_view

    assert describe_view(0) is None
    assert describe_view(2) == "turned 180°"
    assert describe_view(5) == "mirrored (a right hand, or the film flipped) and turned 90° counter-clockwise"
    assert len({describe_view(v) for v in range(DIHEDRAL_VIEWS)}) == DIHEDRAL_VIEWS


def test_the_second_look_returns_a_box_inside_its_cut_in_the_films_pixels():
    """The second look runs on the film cut around the first box: what it finds is put back in the
    whole film's pixels, inside that cut, not at the cut's own origin."""
    film = np.full((300, 240), 20, np.uint8)
    film[150:290, 140:230] = np.random.default_rng(4).integers(120, 255, (140, 90), dtype=np.uint8)
    locator = handlocator.load("hand-locator-v1")
    context = 0.1
    cx0, cy0, cx1, cy1 = handlocator.padded(handlocator.film_box(locator, film), context, film.shape)
    assert cx0 > 0 and cy0 > 0  # the cut's origin is not the film's, so a lost offset shows
    in_cut = handlocator.film_box(locator, film[cy0:cy1, cx0:cx1])
    second = handlocator.film_box(locator, film, context)
    assert np.allclose(second, in_cut + [cx0, cy0, cx0, cy0]), (second, in_cut, (cx0, cy0))
    assert cx0 <= second[0] < second[2] <= cx1 and cy0 <= second[1] < second[3] <= cy1


def test_a_model_prepared_before_the_second_look_keeps_one_look():
    """predictor.json of a model prepared before preprocess.locator_second_look existed lacks the key:
    serving it must crop as its training films were cropped, with one look."""
    old = PreprocessConfig.model_validate({"crop": "locator", "crop_margin": 0.03, "locator": "hand-locator-v1"})
    assert old.locator_second_look is None
    film = np.random.default_rng(5).integers(0, 256, (250, 180), dtype=np.uint8)
    one_look = handlocator.film_box(handlocator.load(old.locator), film)
    assert locate_hand_learned(film, old) == Box(*handlocator.padded(one_look, old.crop_margin, film.shape))
