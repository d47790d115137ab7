"""The synthetic dataset: deterministic, real label distribution, anatomy that follows bone age."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from boneage.contracts import noise_floor_mae
from boneage.data.synth import CARPALS, draw_labels, draw_nuisance, maturity_years, render_with, write_dataset
from tests.conftest import RSNA_LABELS, require


def digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    write_dataset(tmp_path / "a", count=10, seed=3, size=256, workers=2)
    write_dataset(tmp_path / "b", count=10, seed=3, size=256, workers=1)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    write_dataset(tmp_path / "c", count=10, seed=4, size=256, workers=1)
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_kaggle_layout_and_varied_sizes(tmp_path):
    import cv2

    write_dataset(tmp_path, count=12, seed=0, size=300, workers=1)
    labels = pd.read_csv(tmp_path / "boneage-training-dataset.csv", dtype={"id": str})
    assert list(labels.columns) == ["id", "boneage", "male"]
    shapes = {cv2.imread(str(tmp_path / "boneage-training-dataset" / f"{i}.png"), cv2.IMREAD_UNCHANGED).shape for i in labels["id"]}
    assert all(len(s) == 2 and s[0] == 300 for s in shapes)  # 8-bit grayscale
    assert len({s[1] for s in shapes}) > 3  # varying aspect ratios


@pytest.fixture(scope="module")
def real_labels():
    return pd.read_csv(require(RSNA_LABELS / "boneage-training-dataset.csv"))


def test_label_distribution_matches_the_real_csv(real_labels):
    drawn = draw_labels(4000, seed=11, label_noise_sd=6.0)
    ages = np.array([a for _, a, _, _ in drawn], float)
    males = np.array([m for _, _, m, _ in drawn])
    assert stats.ks_2samp(ages, real_labels["boneage"]).pvalue > 0.01
    assert stats.binomtest(int(males.sum()), len(males), real_labels["male"].mean()).pvalue > 0.01
    # Per sex, too: girls' ages in RSNA run younger than boys'.
    for sex in (True, False):
        assert stats.ks_2samp(ages[males == sex], real_labels.loc[real_labels["male"] == sex, "boneage"]).pvalue > 0.01


def test_the_distribution_test_has_power(real_labels):
    """The KS test above would catch a wrong generator: a uniform age draw is rejected."""
    uniform = np.random.default_rng(0).uniform(0, 228, 4000)
    assert stats.ks_2samp(uniform, real_labels["boneage"]).pvalue < 1e-6


def test_label_noise_has_the_documented_sd():
    drawn = draw_labels(20000, seed=5, label_noise_sd=6.0)
    err = np.array([true - label for _, label, _, true in drawn if 20 < label < 220])
    assert err.std() == pytest.approx(6.0, rel=0.05)
    assert np.abs(err).mean() == pytest.approx(noise_floor_mae(6.0), rel=0.05)


AGES = np.arange(0, 229, 6)


@pytest.fixture(scope="module")
def geometry_by_age():
    nz = draw_nuisance(np.random.default_rng(7))
    return [render_with(float(a), True, 256, nz)[1] for a in AGES]


@pytest.mark.parametrize("feature", ["hand_length", "carpal_area", "epiphysis_width_ratio", "bone_density",
                                     "cortical_contrast", "ossified_length", "bone_fill"])
def test_feature_rises_monotonically_with_age(geometry_by_age, feature):
    values = np.array([getattr(g, feature) for g in geometry_by_age])
    assert np.all(np.diff(values) >= -1e-9), values
    assert values[-1] > values[0]


def test_physis_opens_then_closes_with_fusion(geometry_by_age):
    gaps = np.array([g.physis_gap for g in geometry_by_age])
    assert gaps[0] == 0  # no epiphysis yet at birth
    after_peak = gaps[int(np.argmax(gaps)):]
    assert np.all(np.diff(after_peak) <= 1e-9) and after_peak[-1] == 0  # fused by 19 years


def test_carpals_appear_in_atlas_order(geometry_by_age):
    order = [name for name, *_ in CARPALS]
    seen_counts = []
    for g in geometry_by_age:
        assert g.carpals_visible == order[: len(g.carpals_visible)]
        seen_counts.append(len(g.carpals_visible))
    assert seen_counts[0] <= 1 and seen_counts[-1] == 8
    assert order[0] == "capitate" and order[1] == "hamate" and order[-1] == "pisiform"


def test_girls_are_more_mature_at_the_same_bone_age():
    assert maturity_years(120, male=False) > maturity_years(120, male=True)
    nz = draw_nuisance(np.random.default_rng(1))
    girl, boy = render_with(120, False, 256, nz)[1], render_with(120, True, 256, nz)[1]
    assert girl.carpal_area > boy.carpal_area or girl.epiphysis_width_ratio > boy.epiphysis_width_ratio


def test_features_are_visible_in_pixels():
    """A 16-year-old's film has more bright bone than a 2-year-old's at the same nuisance."""
    nz = draw_nuisance(np.random.default_rng(2))
    young, old = render_with(24, True, 384, nz)[0], render_with(192, True, 384, nz)[0]
    assert (old > 180).sum() > 1.5 * (young > 180).sum()
