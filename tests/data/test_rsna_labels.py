"""Data tests against the official RSNA label CSVs (12,611 training rows, the test-set CSV)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from boneage.config import Params
from boneage.contracts import age_band, parse_age, parse_sex
from boneage.data.ingest import AGE_HEADERS, ID_HEADERS, SEX_HEADERS, assign_split
from tests.conftest import RSNA_LABELS, require


@pytest.fixture(scope="module")
def train_labels() -> pd.DataFrame:
    return pd.read_csv(require(RSNA_LABELS / "boneage-training-dataset.csv"), dtype={"id": str})


def test_training_csv_schema_is_what_ingest_expects(train_labels):
    cols = [c.lower() for c in train_labels.columns]
    assert any(c in ID_HEADERS for c in cols) and any(c in AGE_HEADERS for c in cols) and any(c in SEX_HEADERS for c in cols)
    assert len(train_labels) == 12611
    assert train_labels["id"].is_unique


def test_every_real_label_row_parses(train_labels):
    cfg = Params().data
    for row in train_labels.itertuples():
        parse_age(str(row.boneage), "bone age", cfg.min_age_months, cfg.max_age_months)
        parse_sex(str(row.male))


def test_test_set_csv_has_ids_and_sex():
    path = require(RSNA_LABELS / "boneage-test-dataset.csv")
    with open(path) as fh:
        header = next(csv.reader(fh))
        rows = list(csv.reader(fh))
    assert [h.lower() for h in header] == ["case id", "sex"]
    assert {r[1] for r in rows} <= {"M", "F"}
    assert all(parse_sex(r[1]) in (True, False) for r in rows)


def test_split_fractions_hold_in_every_sex_and_age_stratum(train_labels):
    """The hash split is stratified in expectation; on the real distribution every stratum with
    enough images must land within 4 points of each target fraction."""
    params = Params()
    df = train_labels.assign(
        split=[assign_split(i, params.seed, 0.15, 0.15) for i in train_labels["id"]],
        band=[age_band(a, params.data.age_bands_years) for a in train_labels["boneage"]],
    )
    for (male, band), group in df.groupby(["male", "band"]):
        if len(group) < 300:
            continue
        shares = group["split"].value_counts(normalize=True)
        assert abs(shares.get("test", 0) - 0.15) < 0.04, (male, band, shares.to_dict())
        assert abs(shares.get("val", 0) - 0.15) < 0.04, (male, band, shares.to_dict())


def test_split_is_stable_when_rows_are_added_or_removed(train_labels):
    ids = list(train_labels["id"])
    before = {i: assign_split(i, 7, 0.15, 0.15) for i in ids[:6000]}
    after = {i: assign_split(i, 7, 0.15, 0.15) for i in ids[3000:]}  # 3000 removed, 6611 added
    assert all(before[i] == after[i] for i in set(before) & set(after))


def test_another_seed_draws_the_split_anew(train_labels):
    """Two seeds' splits of the same films agree as often as two independent draws would
    (0.7^2 + 0.15^2 + 0.15^2 = 53.5% of films), not always (a split that ignores the seed)."""
    ids = list(train_labels["id"][:2000])
    agree = np.mean([assign_split(i, 1, 0.15, 0.15) == assign_split(i, 2, 0.15, 0.15) for i in ids])
    independent = 0.7**2 + 2 * 0.15**2
    assert abs(agree - independent) < 5 * np.sqrt(independent * (1 - independent) / len(ids)), agree
