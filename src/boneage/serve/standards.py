"""Greulich–Pyle standards (Brush data): the mean bone age and its SD by sex and chronological age,
for SDS (z-score) reporting. The table ships inside the package (resources/).

SDS = (bone age - mean bone age at this chronological age) / SD at this age, with the mean and SD
interpolated linearly between the table's ages. Outside the table's age range there is no
standard to compare with, so no SDS is given (extrapolating would invent one).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from boneage.contracts import parse_age

TABLE = "greulich-pyle-brush-standards.csv"
# |SDS| above this calls the bone age delayed or advanced.
SDS_THRESHOLD = 2.0


@dataclass(frozen=True)
class Standard:
    ages: np.ndarray  # chronological age, months, increasing
    means: np.ndarray  # mean bone age, months
    sds: np.ndarray  # SD of bone age, months


@lru_cache(maxsize=1)
def table() -> dict[str, Standard]:
    rows: dict[str, list[tuple[float, float, float]]] = {"M": [], "F": []}
    with resources.files("boneage").joinpath(f"resources/{TABLE}").open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows[row["sex"]].append(
                (float(row["chronological_age_months"]), float(row["mean_bone_age_months"]), float(row["sd_months"]))
            )
    return {sex: Standard(*map(np.array, zip(*sorted(r), strict=True))) for sex, r in rows.items()}


def sex_code(male: bool) -> str:
    return "M" if male else "F"


@dataclass(frozen=True)
class Assessment:
    bone_age_months: float
    chronological_age_months: float
    difference_months: float  # BA - CA
    expected_bone_age_months: float | None
    sd_months: float | None
    sds: float | None
    call: str  # "delayed", "normal", "advanced", or why there is no call

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def expected(ca_months: float, male: bool) -> tuple[float, float] | None:
    """(mean bone age, SD) at this chronological age, or None outside the table's range."""
    std = table()[sex_code(male)]
    if not std.ages[0] <= ca_months <= std.ages[-1]:
        return None
    return float(np.interp(ca_months, std.ages, std.means)), float(np.interp(ca_months, std.ages, std.sds))


def assess(ba_months: float, ca_months: float, male: bool) -> Assessment:
    ca_months = parse_age(ca_months, "chronological age")
    found = expected(ca_months, male)
    if found is None:
        std = table()[sex_code(male)]
        return Assessment(
            ba_months,
            ca_months,
            ba_months - ca_months,
            None,
            None,
            None,
            f"no standard for {sex_code(male)} at {ca_months:.0f} months (the table covers {std.ages[0]:.0f}-{std.ages[-1]:.0f})",
        )
    mean, sd = found
    sds = (ba_months - mean) / sd
    call = "delayed" if sds < -SDS_THRESHOLD else "advanced" if sds > SDS_THRESHOLD else "normal"
    return Assessment(ba_months, ca_months, ba_months - ca_months, mean, sd, sds, call)
