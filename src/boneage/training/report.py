"""Human-readable summaries of a run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

from boneage.errors import BoneageError


def read_report(path: Path) -> dict:
    """A JSON file a step wrote (metrics.json, registry.json), or an error saying how to make it."""
    if not Path(path).is_file():
        raise BoneageError(f"{path}: not found (run the pipeline first: make demo)")
    return json.loads(Path(path).read_text())


def registry_line(decision: dict) -> str:
    """The register step's decision in one line."""
    return f"registered {decision['model']} version {decision['version']} as {decision['alias']}: {decision['reason']}"


def metrics_table(metrics: dict) -> str:
    """A Markdown table: test and validation MAE overall, by sex and by band, the test interval's
    coverage and the share of test films the out-of-distribution check refuses, beside the baselines."""
    lines = [
        "| group | val MAE | test MAE | test within 12 m | test interval coverage | test OOD refused | test n |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label, val, test):
        def fmt(m, key, pct=False):
            if not m or key not in m:
                return "-"
            return f"{100 * m[key]:.0f}%" if pct else f"{m[key]:.2f}"

        n = test.get("n", 0) if test else 0
        lines.append(
            f"| {label} | {fmt(val, 'mae')} | {fmt(test, 'mae')} | {fmt(test, 'within_12m', True)} "
            f"| {fmt(test, 'interval_coverage', True)} | {fmt(test, 'ood_refused', True)} | {n} |"
        )

    val, test = metrics.get("val", {}), metrics.get("test", {})
    row("all", val, test)
    for group in ("by_sex", "by_age_band"):
        for name in test.get(group, {}):
            row(name, val.get(group, {}).get(name), test[group][name])
    base = metrics.get("baseline", {})
    lines.append("")
    if base.get("predict_the_mean_mae"):
        ratio = test.get("mae", float("nan")) / base["predict_the_mean_mae"]
        lines.append(f"predict-the-mean test MAE: {base['predict_the_mean_mae']:.2f} months (model: {100 * ratio:.0f}% of it)")
    if "slope" in test:
        lines.append(f"slope of predicted on true age (test): {test['slope']:.2f} (1: no pull toward the middle ages)")
    if base.get("noise_floor_mae"):
        lines.append(f"noise floor (label noise, synthetic data): {base['noise_floor_mae']:.2f} months")
    return "\n".join(lines)
