"""SDS against values worked out by hand from the Greulich–Pyle (Brush) table, including the
interpolation between rows and the table's edges."""

from __future__ import annotations

import csv

import pytest

from boneage.contracts import parse_optional_age, parse_sex
from boneage.errors import BadInputError
from boneage.serve.predict import years_and_months
from boneage.serve.standards import assess, table
from tests.conftest import SHARED_DATA, require


def test_on_a_table_row():
    # M, 144 months: mean 148.82, SD 10.38. BA 160 -> (160 - 148.82) / 10.38 = 1.0771
    a = assess(160.0, 144.0, male=True)
    assert a.expected_bone_age_months == pytest.approx(148.82)
    assert a.sd_months == pytest.approx(10.38)
    assert a.sds == pytest.approx(1.0771, abs=1e-4)
    assert a.difference_months == pytest.approx(16.0) and a.call == "normal"


def test_interpolated_between_rows():
    # F, 126 months lies halfway between 120 (125.66, 11.73) and 132 (137.86, 11.94):
    # mean 131.76, SD 11.835. BA 100 -> (100 - 131.76) / 11.835 = -2.6836: delayed.
    a = assess(100.0, 126.0, male=False)
    assert a.expected_bone_age_months == pytest.approx(131.76)
    assert a.sd_months == pytest.approx(11.835)
    assert a.sds == pytest.approx(-2.6836, abs=1e-4)
    assert a.call == "delayed"


def test_advanced_and_the_threshold():
    # M, 150 months: mean (148.82 + 158.39) / 2 = 153.605, SD 10.41. +2 SD = 174.425.
    assert assess(174.0, 150.0, male=True).call == "normal"
    assert assess(175.0, 150.0, male=True).call == "advanced"


@pytest.mark.parametrize(
    ("male", "ca", "mean"), [(True, 3.0, 3.01), (True, 204.0, 206.21), (False, 3.0, 3.02), (False, 192.0, 189.44)]
)
def test_edges_of_the_table_are_exact(male, ca, mean):
    assert assess(mean, ca, male).sds == pytest.approx(0.0)


@pytest.mark.parametrize(("male", "ca"), [(True, 2.9), (True, 204.5), (False, 192.5), (False, 0.0)])
def test_outside_the_table_there_is_no_sds(male, ca):
    a = assess(100.0, ca, male)
    assert a.sds is None and "no standard" in a.call and a.difference_months == pytest.approx(100.0 - ca)


def test_packaged_table_is_the_shared_one():
    shared = require(SHARED_DATA / "greulich-pyle-brush-standards.csv")
    with open(shared, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for sex in ("M", "F"):
        ours = table()[sex]
        theirs = [r for r in rows if r["sex"] == sex]
        assert [float(r["chronological_age_months"]) for r in theirs] == list(ours.ages)
        assert [float(r["mean_bone_age_months"]) for r in theirs] == list(ours.means)


@pytest.mark.parametrize("value", [-1, 241, float("inf"), "abc", "-3"])
def test_absurd_chronological_ages_are_refused(value):
    with pytest.raises(BadInputError):
        parse_optional_age(value, "chronological age")


def test_a_missing_chronological_age_is_none():
    # A REST request's optional column arrives as NaN where a row leaves it out.
    assert all(parse_optional_age(blank, "chronological age") is None for blank in (None, float("nan"), "", "  "))


@pytest.mark.parametrize(("value", "male"), [("M", True), ("f", False), ("Male", True), ("FEMALE", False)])
def test_sex_values(value, male):
    assert parse_sex(value) is male


@pytest.mark.parametrize("value", ["X", "", "2", "unknown"])
def test_bad_sex_values_are_refused(value):
    with pytest.raises(BadInputError):
        parse_sex(value)


def test_years_and_months():
    assert years_and_months(125.4) == "10 y 5 m" and years_and_months(11.6) == "1 y 0 m"
