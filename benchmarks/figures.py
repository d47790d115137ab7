"""The README's "What it reaches" block: the demo's and the recipe of record's figures in a few
lines, from benchmarks/results.json (the pages they come from hold the whole tables)."""

from __future__ import annotations

import statistics


def block(results: dict) -> str:
    lines = ["| data | model | test MAE (months) | vs predict-the-mean | measured |", "|---|---|---:|---:|---|"]
    demo = results.get("demo", {})
    if demo.get("runs") and demo.get("machine"):
        runs, m = demo["runs"], demo["machine"]
        maes, ratios = [r["test_mae"] for r in runs], [r["ratio"] for r in runs]
        lines.append(
            f"| synthetic (the demo, {len(runs)} seeds) | InceptionV3 + sex, 96 px, from random weights | "
            f"{statistics.mean(maes):.2f} ± {statistics.stdev(maes) if len(maes) > 1 else 0:.2f} | "
            f"{100 * statistics.mean(ratios):.0f}% | {m['date']}, {m['cpu']}, {m['cores']} cores |"
        )
    real = results.get("real_data", {}).get("recipe")
    if real:
        r, m = real["metrics"], real["machine"]
        lines.append(
            f"| real RSNA films at 100 px ({r['test_n']:,} test films) | the recipe of record (`rsna-cpu`) | "
            f"{r['test_mae']:.2f} (95% CI {r['test_mae_95ci'][0]:.2f}–{r['test_mae_95ci'][1]:.2f}) | "
            f"{100 * r['ratio']:.0f}% | {m['date']}, {m['cpu']}, {m['cores']} cores |"
        )
    crop = results.get("real_data", {}).get("crop", {}).get("locator")
    tail = []
    if crop:
        tail.append(
            f"The hand crop finds the hand on {crop['good_pct']:.1f}% of 400 people's boxes "
            f"({crop['unseen_good_pct']:.1f}% of the {crop['unseen_boxes']} it never saw)."
        )
        if real and crop.get("measured", "") > real["machine"]["date"]:
            tail.append(
                f"The crop figures are of {crop['measured']}; the recipe of record was trained and measured on "
                f"{real['machine']['date']}, with the crop of that day (docs/real-data.md)."
            )
    return "\n".join(lines + [""] + tail) + "\n"
