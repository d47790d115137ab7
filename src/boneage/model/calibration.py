"""The prediction interval and the bias correction, calibrated on held-out films: split conformal
(Vovk et al.; Angelopoulos & Bates 2021), per band of predicted age (Mondrian), with the median
residual as the bias correction, cross-fitted so that the interval's scores fitted nothing.
Written by training into predictor.json; read by scoring through PredictorConfig."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boneage.config import TrainConfig


def band_index(months, edges_months) -> np.ndarray:
    """Which band of ``edges_months`` each age falls in; ages outside the edges join the end bands."""
    inner = np.asarray(edges_months, dtype=float)[1:-1]
    return np.searchsorted(inner, np.asarray(months, dtype=float), side="right")


def conformal_halfwidth(residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ceil((n+1)·level)-th smallest |residual| of held-out data,
    so that a new case's interval covers its true age with probability >= level."""
    scores = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    if len(scores) == 0:
        return float("nan")
    rank = min(len(scores), math.ceil((len(scores) + 1) * level))
    return float(scores[rank - 1])


def conformal_scores(residuals: np.ndarray, correct_bias: bool) -> tuple[float, np.ndarray]:
    """(bias offset, conformity scores in the residuals' order) from held-out residuals (true - predicted).

    The interval's scores must come from residuals that fitted nothing: with a bias correction,
    the residuals are cross-fitted in two halves, each half scored against the median of the
    other. The offset the model applies is the median of all of them."""
    residuals = np.asarray(residuals, dtype=float)
    if not correct_bias:
        return 0.0, residuals
    scores = np.empty_like(residuals)
    scores[0::2] = residuals[0::2] - np.median(residuals[1::2])
    scores[1::2] = residuals[1::2] - np.median(residuals[0::2])
    return float(np.median(residuals)), scores


def calibrate(residuals: np.ndarray, level: float, correct_bias: bool) -> tuple[float, float]:
    """(bias offset, conformal half-width) from held-out residuals (true - predicted)."""
    offset, scores = conformal_scores(residuals, correct_bias)
    return offset, conformal_halfwidth(scores, level)


def band_halfwidths(
    predicted: np.ndarray, scores: np.ndarray, edges_months, level: float, min_films: int, pooled: float
) -> list[float]:
    """Mondrian conformal: one half-width per band of *predicted* age, from the scores of the held-out
    films predicted in that band, so that coverage holds within each band. A band with fewer than
    ``min_films`` films takes the pooled half-width."""
    bands = band_index(predicted, edges_months)
    out = []
    for band in range(len(edges_months) - 1):
        inside = np.asarray(scores)[bands == band]
        out.append(conformal_halfwidth(inside, level) if len(inside) >= min_films else pooled)
    return out


@dataclass(frozen=True)
class IntervalCalibration:
    offset_months: float  # the bias correction (median validation residual), 0 without one
    halfwidth_months: float
    band_edges_months: list[float]
    band_halfwidths_months: list[float]


def calibrate_interval(predicted: np.ndarray, true: np.ndarray, cfg: TrainConfig, age_bands_years) -> IntervalCalibration:
    """The bias correction and the (band-conditional) conformal interval from the validation films'
    predictions before any correction."""
    predicted, true = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    correct = cfg.correct_bias_on_val and len(true) >= cfg.bias_correction_min_images
    offset, scores = conformal_scores(true - predicted, correct)
    halfwidth = conformal_halfwidth(scores, cfg.interval_level)
    if not cfg.interval_by_band:
        return IntervalCalibration(offset, halfwidth, [], [])
    edges = [years * 12.0 for years in age_bands_years]
    widths = band_halfwidths(predicted + offset, scores, edges, cfg.interval_level, cfg.interval_min_band_films, halfwidth)
    return IntervalCalibration(offset, halfwidth, edges, widths)
