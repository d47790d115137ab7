"""Decoding every supported format, cropping real radiographs, and the TFRecord round trip."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from boneage.config import Params, PreprocessConfig
from boneage.data.handcrop import NO_EDGES_REASON, Box, locate_hand, normalise_contrast, prepare, uint8_percentile
from boneage.data.imaging import read_radiograph
from boneage.errors import BadInputError
from tests.conftest import FIXTURES, RSNA_SAMPLE, dicom_file, hand_like, require


@pytest.mark.parametrize("kind", ["png8", "png16", "rgb", "rgba", "jpeg"])
def test_decode_formats_give_bone_bright_grayscale(tmp_path, kind):
    base = hand_like()
    if kind == "png16":
        data, suffix = hand_like(dtype=np.uint16), ".png"
    elif kind == "rgb":
        data, suffix = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), ".png"
    elif kind == "rgba":
        data, suffix = np.dstack([cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), np.full_like(base, 255)]), ".png"
    elif kind == "jpeg":
        data, suffix = base, ".jpg"
    else:
        data, suffix = base, ".png"
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), data)
    rad = read_radiograph(path, 10**8)
    assert rad.pixels.ndim == 2 and rad.pixels.shape == base.shape
    assert rad.pixels.dtype == (np.uint16 if kind == "png16" else np.uint8)
    # The palm is brighter than the background whatever the format.
    palm, background = rad.pixels[300, 150], rad.pixels[100, 30]
    assert palm > background


def test_dicom_monochrome1_is_inverted_and_header_read(tmp_path):
    pixels = hand_like(dtype=np.uint16)
    mono2 = read_radiograph(dicom_file(tmp_path / "a.dcm", pixels, "MONOCHROME2"), 10**8)
    mono1 = read_radiograph(dicom_file(tmp_path / "b.dcm", 65535 - pixels, "MONOCHROME1"), 10**8)
    assert mono1.pixels[300, 150] > mono1.pixels[100, 30]
    np.testing.assert_array_equal(mono1.pixels, mono2.pixels)
    assert mono1.patient_sex == "F" and mono1.patient_age_months == 120


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = dicom_file(tmp_path / "c.dcm", hand_like(dtype=np.uint16), "MONOCHROME2", with_pixels=False)
    with pytest.raises(BadInputError, match="no pixel data"):
        read_radiograph(path, 10**8)


def test_crop_ignores_border_and_marker():
    img = hand_like()
    box = locate_hand(img, PreprocessConfig(crop_margin=0.0))
    truth = Box(int(300 * 0.25), int(400 * 0.15), int(300 * 0.75), 400)
    assert box.iou(truth) > 0.85, box


def test_blank_film_has_no_hand():
    with pytest.raises(BadInputError, match="no hand found"):
        locate_hand(np.full((300, 200), 30, np.uint8), PreprocessConfig())


def _ramp(height: int, width: int, radial: bool, top: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    t = np.clip(np.hypot(xx - 0.4, yy - 0.6) / 0.8, 0, 1) if radial else 0.3 * xx + 0.7 * yy
    return (0.1 * top + 0.8 * top * (t - t.min()) / np.ptp(t)).astype(np.uint16 if top > 255 else np.uint8)


def _with_noise(pixels: np.ndarray, sd: float) -> np.ndarray:
    noisy = pixels + np.random.default_rng(0).normal(0.0, sd, pixels.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("pixels", "kind"),
    [
        (_ramp(2080, 1600, radial=False, top=255), "a linear ramp"),
        (_ramp(256, 256, radial=True, top=255), "a radial gradient"),
        (_ramp(1024, 768, radial=True, top=65535), "a 16-bit radial gradient"),
        (
            _with_noise(_ramp(2080, 1600, radial=False, top=255), sd=2.0),
            "a flat field with sensor noise (sd 2 grey levels)",
        ),
    ],
)
@pytest.mark.parametrize("crop", ["locator", "hand", "none"])
def test_an_image_with_no_edges_is_refused_as_no_radiograph(pixels, kind, crop):
    """Contrast equalisation would draw blobs and bands into these; no crop or model may see them."""
    with pytest.raises(BadInputError) as refused:
        prepare(pixels, PreprocessConfig(crop=crop))
    assert refused.value.reason == NO_EDGES_REASON, kind


def test_prepare_is_square_uint8_and_keeps_aspect():
    img, box = prepare(hand_like(), PreprocessConfig(image_size=128))
    assert img.shape == (128, 128) and img.dtype == np.uint8
    # The crop is taller than wide, so padding shows as black columns at both sides.
    assert img[:, :5].max() == 0 and img[:, -5:].max() == 0
    assert img[64, 64] > 100


@settings(max_examples=200, deadline=None)
@given(pixels=hnp.arrays(np.uint8, st.integers(1, 500)), percent=st.floats(0, 100))
def test_histogram_percentile_equals_numpy(pixels, percent):
    assert uint8_percentile(pixels, percent) == pytest.approx(np.percentile(pixels, percent), abs=1e-9)


def test_windowing_by_lookup_table_equals_the_arithmetic():
    """8-bit films are windowed through a 256-entry table; 16-bit ones pixel by pixel: same output."""
    film = hand_like(dtype=np.uint8)
    content = np.ones(film.shape, bool)
    content[:, :20] = False
    cfg = PreprocessConfig(clahe_clip_limit=0.0)
    assert np.array_equal(normalise_contrast(film, content, cfg), normalise_contrast(film.astype(np.uint16), content, cfg))


def _sample_boxes():
    path = FIXTURES / "rsna_sample_hand_boxes.csv"
    with open(path) as fh:
        return [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]


def test_crop_keeps_the_whole_hand_on_real_radiographs():
    """IoU >= 0.8 against boxes marked by hand, and the marked hand lies inside the crop."""
    image_dir = require(RSNA_SAMPLE / "boneage-training-dataset")
    cfg = PreprocessConfig()
    ious = []
    for row in _sample_boxes():
        pixels = read_radiograph(image_dir / f"{row['id']}.png", 10**8).pixels
        h, w = pixels.shape
        truth = Box(*(int(float(row[k]) * s / 100) for k, s in (("x0", w), ("y0", h), ("x1", w), ("y1", h))))
        tight = locate_hand(pixels, cfg.model_copy(update={"crop_margin": 0.0}))
        ious.append(tight.iou(truth))
        cropped = locate_hand(pixels, cfg)
        tol = 0.03 * max(h, w)  # the marks were placed on a 5% grid
        assert cropped.x0 <= truth.x0 + tol and cropped.y0 <= truth.y0 + tol, row["id"]
        assert cropped.x1 >= truth.x1 - tol and cropped.y1 >= truth.y1 - tol, row["id"]
    assert len(ious) == 40
    assert min(ious) >= 0.8, sorted(ious)[:5]


def test_preprocess_real_samples_to_tfrecords_round_trip(tmp_path):
    import tensorflow as tf

    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.data.tfrecords import parse_example, shard_paths

    params = Params(preprocess=PreprocessConfig(image_size=96, workers=2))
    result = ingest(params, tmp_path / "ingest", source=str(require(RSNA_SAMPLE)))
    out = tmp_path / "pre"
    rows = preprocess(params, result.manifest_path, out)
    assert len(rows) == 40, "no real radiograph may be rejected"
    assert (out / "contact_sheet.png").is_file()
    records = []
    for split in ("train", "val", "test"):
        for path in shard_paths(out, split):
            for rec in tf.data.TFRecordDataset(str(path)):
                records.append(parse_example(rec, 96))
    assert len(records) == 40
    labels = dict(zip(result.manifest["id"], result.manifest["boneage"], strict=True))
    for r in records:
        image_id = r["id"].numpy().decode()
        assert r["image"].shape == (96, 96, 1) and r["image"].dtype == tf.uint8
        assert float(r["boneage"]) == pytest.approx(labels[image_id])
    # Byte-identical on a second run: the shards are a pure function of the inputs.
    first = {p.name: p.read_bytes() for p in out.glob("*.tfrecord")}
    preprocess(params, result.manifest_path, tmp_path / "pre2")
    assert {p.name: p.read_bytes() for p in (tmp_path / "pre2").glob("*.tfrecord")} == first
