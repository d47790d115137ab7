"""`boneage monitor`: a window of a server's records (boneage.serve.monitoring) against the model's
reference (its validation films scored the same way, boneage.training.monitor_reference).

Three kinds of change raise an alert:

- a distribution moved: each of the check's scores (features, image, texture, orientation) over
  every film, and the predicted months over the films scored. A two-sample Kolmogorov-Smirnov test
  (scipy) must reject at ``alpha`` split over the tests (Bonferroni) *and* the shift must matter: the
  Wasserstein distance at least ``min_shift_sd`` of the reference's standard deviation. The first
  keeps chance away from a clean window, the second keeps a large window from alerting on a shift
  no one would act on.
- more films refused than the check's own rate (1 - train.ood.quantile, about 0.5%) explains: a
  one-sided binomial test at the same per-test level.
- more films arriving turned or mirrored than the reference's share (add-one smoothed) explains.

Evidently was the first choice for the statistics; its newest release (0.7.23) cannot be imported
next to pandas 3, which the pinned stack needs (it imports pandas internals that pandas 3 removed),
so the tests are scipy's, the same ones Evidently runs for small numeric samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from boneage.config import MonitorConfig
from boneage.model.ood import PARTS

UPRIGHT = "upright"
AGE = "bone_age_months"
# The distributions compared: each of the check's scores over every film, the months over the scored.
DISTRIBUTIONS = (*PARTS, AGE)


@dataclass
class Shift:
    """One distribution's comparison."""

    name: str
    window_films: int
    reference_films: int
    ks_statistic: float
    p_value: float
    shift_sd: float  # Wasserstein distance in reference standard deviations
    window_median: float
    reference_median: float
    moved: bool


@dataclass
class RateCheck:
    """One share (refused films, films not arriving upright) against its expected value."""

    name: str
    count: int
    films: int
    expected: float
    p_value: float
    raised: bool

    @property
    def share(self) -> float:
        return self.count / self.films if self.films else float("nan")


@dataclass
class MonitorResult:
    films: int
    reference_films: int
    judged: bool  # False: fewer films than monitor.min_films, nothing was tested
    per_test_alpha: float
    shifts: list[Shift] = field(default_factory=list)
    rates: list[RateCheck] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"alert": bool(self.alerts)}


def compare(window: pd.DataFrame, reference: pd.DataFrame, cfg: MonitorConfig, expected_refusal: float) -> MonitorResult:
    """Judge ``window`` (records) against ``reference`` (the model's validation films' records)."""
    tests = len(DISTRIBUTIONS) + 2
    result = MonitorResult(len(window), len(reference), len(window) >= cfg.min_films, cfg.alpha / tests)
    if not result.judged:
        return result
    for name in DISTRIBUTIONS:
        shift = _shift(name, window, reference, result.per_test_alpha, cfg.min_shift_sd)
        if shift is not None:
            result.shifts.append(shift)
    # Refused by the check, among the films that reached it (a bad request never did).
    checked = window[pd.to_numeric(window["ood_score"], errors="coerce").notna()]
    result.rates.append(_rate("refused", checked["refused"].astype(bool), expected_refusal, result.per_test_alpha))
    turned = reference["view"].fillna(UPRIGHT) != UPRIGHT
    expected_turned = (turned.sum() + 1) / (len(reference) + 2)
    arrived = checked["view"].fillna(UPRIGHT) != UPRIGHT
    result.rates.append(_rate("not upright", arrived, expected_turned, result.per_test_alpha))
    result.alerts = [_shift_alert(s) for s in result.shifts if s.moved] + [_rate_alert(r) for r in result.rates if r.raised]
    return result


def values_of(frame: pd.DataFrame, name: str) -> np.ndarray:
    rows = frame[~frame["refused"].astype(bool)] if name == AGE else frame
    values = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _shift(name: str, window: pd.DataFrame, reference: pd.DataFrame, alpha: float, min_shift_sd: float) -> Shift | None:
    now, ref = values_of(window, name), values_of(reference, name)
    if len(now) < 2 or len(ref) < 2:
        return None  # a model without a check has no scores; a window of refusals no months
    test = stats.ks_2samp(now, ref)
    shift_sd = stats.wasserstein_distance(now, ref) / max(float(np.std(ref)), np.finfo(float).eps)
    moved = bool(test.pvalue < alpha and shift_sd >= min_shift_sd)
    medians = float(np.median(now)), float(np.median(ref))
    return Shift(name, len(now), len(ref), float(test.statistic), float(test.pvalue), float(shift_sd), *medians, moved)


def _rate(name: str, flags: pd.Series, expected: float, alpha: float) -> RateCheck:
    count, films = int(flags.sum()), len(flags)
    p_value = float(stats.binomtest(count, films, expected, alternative="greater").pvalue) if films else 1.0
    return RateCheck(name, count, films, float(expected), p_value, p_value < alpha)


def _shift_alert(s: Shift) -> str:
    what = "predicted months" if s.name == AGE else f"the check's {s.name} score"
    return (
        f"ALERT: {what} moved: median {s.window_median:.3g} vs {s.reference_median:.3g} on the reference, "
        f"a shift of {s.shift_sd:.2f} reference SDs (Kolmogorov-Smirnov p = {s.p_value:.1e}, {s.window_films} films)"
    )


def _rate_alert(r: RateCheck) -> str:
    return (
        f"ALERT: {r.count} of {r.films} films {r.name} ({100 * r.share:.1f}%), expected {100 * r.expected:.1f}% "
        f"(binomial p = {r.p_value:.1e})"
    )
