"""The model card (Mitchell et al., FAT* 2019; MONAI's model zoo asks one of every bundle): what a
registered model is for and not for, what it learned from, how well it does overall, by sex and by
age band, what its out-of-distribution check refuses, and what it cannot do. Written by code from
the model's provenance (predictor.json) and its evaluation (metrics.json) alone: `register` puts it
on the registered version's description and beside registry.json; docs/model-card.md is the
recipe of record's."""

from __future__ import annotations

from boneage.contracts import INTENDED_USE_NOTICE, age_band_labels

INTENDED_USE = (
    "Research and teaching: estimating skeletal maturity (bone age, in months) from a left-hand "
    "radiograph, to study bone-age models and the pipeline that trains, tracks and serves them."
)
OUT_OF_SCOPE = (
    "Not a medical device. Not for diagnosis, treatment or any decision about a child. Not for "
    "radiographs other than a left hand in posteroanterior view (films turned or mirrored are put "
    "upright; anything still unlike the training films is refused). Not for populations, scanners or "
    "ages unlike the training data's."
)
# Below this slope of predicted on true age, the model pulls the youngest and oldest toward the middle.
SLOPE_PULL = 0.9


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _mae(group: dict) -> str:
    return "–" if "mae" not in group else f"{group['mae']:.2f}"


def _metrics_rows(test: dict, bands: list[str]) -> list[str]:
    rows = [
        "| films | test films | MAE (months) | 90% interval covers | refused by the check |",
        "|---|---:|---:|---:|---:|",
        f"| all | {test.get('n', 0)} | {_mae(test)} | {_pct(test.get('interval_coverage'))} | {_pct(test.get('ood_refused'))} |",
    ]
    for name, group in test.get("by_sex", {}).items():
        rows.append(f"| {name} | {group.get('n', 0)} | {_mae(group)} | {_pct(group.get('interval_coverage'))} | – |")
    by_band = test.get("by_age_band", {})
    for band in [b for b in bands if b in by_band]:
        group = by_band[band]
        rows.append(f"| {band} | {group.get('n', 0)} | {_mae(group)} | {_pct(group.get('interval_coverage'))} | – |")
    return rows


def _limitations(provenance: dict, test: dict) -> list[str]:
    notes = [
        f"Trained at {provenance.get('image_size', '?')} px ({provenance.get('backbone', '?')} seeing "
        f"{provenance.get('backbone_image_size', '?')} px): finer detail of the growth plates is lost; published "
        "full-resolution models with ImageNet weights reach about 4–5 months."
    ]
    if provenance.get("backbone_weights") in ("none", "stand-in", None):
        notes.append("Its backbone started from random weights (no ImageNet weights): it learns more slowly and less.")
    slope = test.get("slope")
    if slope is not None and slope < SLOPE_PULL:
        notes.append(
            f"It pulls ages toward the middle (slope of predicted on true age {slope:.2f}): the youngest children "
            "are rated older and the oldest younger, and their intervals miss more often than 10%."
        )
    if provenance.get("dataset_kind") != "real":
        notes.append(
            "It was trained on drawn (synthetic) films: its numbers are no child's bone age; every output is marked "
            "and gives no SDS and no call."
        )
    notes.append("The interval holds 90% of true ages within each band of predicted age, not of true age.")
    return notes


def model_card(provenance: dict, metrics: dict, age_bands_years, name: str = "boneage", version: str | None = None) -> str:
    """The card, in Markdown."""
    films = provenance.get("films", {})
    test, baseline = metrics.get("test", {}), metrics.get("baseline", {}).get("predict_the_mean_mae")
    title = f"# Model card: {name}" + (f" version {version}" if version else "")
    lines = [
        title,
        "",
        f"**{INTENDED_USE_NOTICE}**",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Out of scope",
        "",
        OUT_OF_SCOPE,
        "",
        "## The model",
        "",
        f"- {provenance.get('backbone', '?')} with sex as a second input, a regression head; backbone weights at the "
        f"start: {provenance.get('backbone_weights', 'unknown')}; recipe `{provenance.get('preset', '?')}` (fingerprint "
        f"{provenance.get('recipe_fingerprint', 'unknown')}), seed {provenance.get('seed', '?')};",
        f"- input: the hand found by the `{provenance.get('crop', '?')}` crop, at {provenance.get('image_size', '?')} px;",
        f"- boneage {provenance.get('boneage_version', '?')}, commit {provenance.get('git_commit', 'unknown')}.",
        "",
        "## Training data",
        "",
        f"- {provenance.get('dataset_kind', 'unknown')} films from {provenance.get('dataset_source', 'unknown')}, "
        f"fingerprint {provenance.get('dataset_fingerprint', 'unknown')};",
        f"- {films.get('train', '?')} training, {films.get('val', '?')} validation (early choices, calibration and "
        f"the check's thresholds) and {films.get('test', '?')} test films (read once, for these figures).",
        "",
        "## Metrics on the test films",
        "",
        *_metrics_rows(test, age_band_labels(tuple(age_bands_years))),
        "",
    ]
    if baseline:
        lines += [f"Predicting the training films' mean age scores {baseline:.2f} months; the model {_mae(test)}.", ""]
    lines += [
        "## The out-of-distribution check",
        "",
        "Four scores fitted on the training films (the backbone's features, the image's layout, its texture, its "
        "orientation), each with its threshold at the 99.5th percentile (split four ways) of the validation films': "
        "a film above any threshold is refused with the reason, never given a number. Films turned by quarter turns "
        "or mirrored are put upright first, and the output says so. "
        f"On this model's own test films it refused {_pct(test.get('ood_refused'))}.",
        "",
        "## Known limitations",
        "",
        *[f"- {note}" for note in _limitations(provenance, test)],
    ]
    return "\n".join(lines) + "\n"
