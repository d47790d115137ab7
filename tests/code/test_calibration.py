"""What a prediction says about itself. The interval keeps its promise when a bias correction is
fitted too: the conformal scores come from residuals that fitted nothing (cross-fitted halves), so a
new case's interval holds its true age at least 90% of the time; scoring the residuals the median
was fitted on falls short on small calibration sets, and these tests tell the two apart. A Grad-CAM
with nothing in it is named as such."""

from __future__ import annotations

import numpy as np

from boneage.predict import calibrate

LEVEL = 0.9
CALIBRATION_FILMS = 10  # small, where reusing the residuals shows most
REPEATS = 20_000
NEW_CASES = 50
# Monte Carlo error of the mean coverage over the repeats is about 0.0005.
TOLERANCE = 0.001


def _coverage(correct_bias: bool, bias: float) -> float:
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(REPEATS):
        calibration = rng.standard_t(3, size=CALIBRATION_FILMS) * 10 + bias  # heavy tails, like errors in months
        new = rng.standard_t(3, size=NEW_CASES) * 10 + bias
        offset, half = calibrate(calibration, LEVEL, correct_bias)
        covered.append(np.mean(np.abs(new - offset) <= half))
    return float(np.mean(covered))


def test_with_a_bias_correction_the_interval_still_covers_90_percent():
    assert _coverage(correct_bias=True, bias=5.0) >= LEVEL - TOLERANCE


def test_without_a_bias_correction_it_is_plain_split_conformal():
    assert _coverage(correct_bias=False, bias=0.0) >= LEVEL - TOLERANCE
    offset, _ = calibrate(np.array([1.0, 2.0, 30.0]), LEVEL, correct_bias=False)
    assert offset == 0.0


def test_the_offset_is_the_median_of_all_residuals():
    residuals = np.array([-3.0, 1.0, 2.0, 4.0, 100.0])
    assert calibrate(residuals, LEVEL, correct_bias=True)[0] == 2.0


def test_a_grad_cam_with_nothing_in_it_is_named_as_such():
    from boneage.clinical_report import cam_degenerate

    rng = np.random.default_rng(0)
    shows_a_region = np.zeros((32, 32), np.float32)
    shows_a_region[8:16, 8:16] = 1.0
    assert cam_degenerate(shows_a_region) is None
    assert "does not depend" in cam_degenerate(np.zeros((32, 32), np.float32))
    assert "flat" in cam_degenerate(1.0 + 0.001 * rng.random((32, 32)).astype(np.float32))
    assert "not finite" in cam_degenerate(np.full((32, 32), np.nan, np.float32))
