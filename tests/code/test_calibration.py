"""What a prediction says about itself. The interval keeps its promise when a bias correction is
fitted too: the conformal scores come from residuals that fitted nothing (cross-fitted halves), so a
new case's interval holds its true age at least 90% of the time; scoring the residuals the median
was fitted on falls short on small calibration sets, and these tests tell the two apart. A Grad-CAM
with nothing in it is named as such."""

from __future__ import annotations

import numpy as np

from boneage.model.calibration import calibrate

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
    from boneage.serve.clinical_report import cam_degenerate

    rng = np.random.default_rng(0)
    shows_a_region = np.zeros((32, 32), np.float32)
    shows_a_region[8:16, 8:16] = 1.0
    assert cam_degenerate(shows_a_region) is None
    assert "does not depend" in cam_degenerate(np.zeros((32, 32), np.float32))
    assert "flat" in cam_degenerate(1.0 + 0.001 * rng.random((32, 32)).astype(np.float32))
    assert "not finite" in cam_degenerate(np.full((32, 32), np.nan, np.float32))


def _heteroscedastic(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ages over 0-240 months whose errors are 3x wider in the oldest band, as on real films."""
    predicted = rng.uniform(0, 240, n)
    sd = np.where(predicted >= 168, 30.0, 10.0)
    return predicted, rng.normal(0, sd)


def test_band_conditional_widths_keep_coverage_within_each_band_where_one_width_does_not():
    from boneage.config import TrainConfig
    from boneage.model.calibration import calibrate_interval
    from boneage.model.predictor_config import PredictorConfig

    rng = np.random.default_rng(1)
    bands_years = (0, 2, 6, 10, 14, 19)
    cfg = TrainConfig(correct_bias_on_val=False, interval_by_band=True, interval_min_band_films=100)
    covered_by_band, pooled_oldest = {0: [], 4: []}, []
    for _ in range(200):
        predicted, residual = _heteroscedastic(rng, 2000)
        interval = calibrate_interval(predicted, predicted + residual, cfg, bands_years)
        config = PredictorConfig({}, 1, True, LEVEL, interval.halfwidth_months, interval.band_edges_months,
                                 interval.band_halfwidths_months)  # fmt: skip
        new_pred, new_res = _heteroscedastic(rng, 2000)
        half = np.array([config.halfwidth(m) for m in new_pred])
        for band, inside in ((0, new_pred < 24), (4, new_pred >= 168)):
            covered_by_band[band].append(np.mean(np.abs(new_res[inside]) <= half[inside]))
        pooled_oldest.append(np.mean(np.abs(new_res[new_pred >= 168]) <= interval.halfwidth_months))
    for band, covered in covered_by_band.items():
        assert np.mean(covered) >= LEVEL - 0.01, f"band {band}: coverage {np.mean(covered):.3f}"
    assert np.mean(pooled_oldest) < LEVEL - 0.1, "one pooled width should under-cover the noisy band"
    # Narrower where the model is better: the young band's width is well below the oldest band's.
    assert interval.band_halfwidths_months[0] < 0.5 * interval.band_halfwidths_months[-1]


def test_a_band_with_too_few_calibration_films_takes_the_pooled_width():
    from boneage.model.calibration import band_halfwidths

    predicted = np.array([30.0] * 150 + [200.0] * 5)
    scores = np.concatenate([np.linspace(-10, 10, 150), [90.0] * 5])
    widths = band_halfwidths(predicted, scores, [0, 24, 72, 240], LEVEL, min_films=100, pooled=12.3)
    assert widths[0] == 12.3 and widths[2] == 12.3  # no films, and 5 films: pooled
    assert widths[1] < 12.3
