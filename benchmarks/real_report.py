"""The real-data figures of docs/real-data.md, written from benchmarks/results.json (never typed by hand):
the crop table, the recipe of record's accuracy, its learning curve (docs/real-learning-curve.png)
and the equal-budget comparison."""

from __future__ import annotations

from benchmarks.common import DOCS, PROJECT, replace_block

PAGE, BLOCK = DOCS / "real-data.md", "real"
CURVE_PNG = PROJECT / "docs" / "real-learning-curve.png"


def _crop_lines(crop: dict) -> list[str]:
    if not crop:
        return ["Crop figures: not measured yet (`python -m benchmarks.bench_real crop --source DIR`).", ""]
    lines = [
        "| hand crop | films refused | good crops on people's boxes | of them, on the boxes the locator never saw "
        "| covers ≥ 95% of the box | area ≤ 1.6× the box |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "hand-v1": "first rules (hand-v1)",
        "hand": "rules on thresholds (hand)",
        "locator-one-look": "learned locator, one look",
        "locator": "**learned locator, second look** (the recipe's)",
    }
    for key in names:
        c = crop.get(key)
        if c:
            lines.append(
                f"| {names[key]} | {c['refused']} of {c['films']:,} ({c['refused_pct']:.2f}%) | "
                f"{c.get('good_pct', float('nan')):.1f}% of {c.get('boxes', 0)} | "
                f"{c.get('unseen_good_pct', float('nan')):.1f}% of {c.get('unseen_boxes', 0)} | "
                f"{c.get('covered_pct', float('nan')):.1f}% | {c.get('tight_pct', float('nan')):.1f}% |"
            )
    return [
        *lines,
        "",
        "The locator (`src/boneage/resources/hand-locator-v1.json` says how it was fitted) learned from the boxes of "
        "the films the split puts in training, after the rules' boxes on every film; the boxes of the validation and "
        "test films it never saw. The misses before and after: [crop-misses.png](crop-misses.png).",
        "",
        *_second_look_lines(crop.get("second_look_choice")),
        *_sample_lines(crop.get("samples_iou")),
    ]


def _sample_lines(ious: dict | None) -> list[str]:
    if not ious:
        return []
    found, crop = ious["found_box"], ious["crop"]
    return [
        f"On the {ious['films']} full-resolution samples, against boxes marked by eye on a 5% grid (to where the forearm "
        f"leaves the film, not to the wrist as people's boxes end): the box found has an IoU ≥ 0.8 on {found['at_goal']} "
        f"(median {found['median']:.2f}, lowest {found['min']:.2f}); the crop, with its margin, on {crop['at_goal']} "
        f"(median {crop['median']:.2f}).",
        "",
    ]


def _second_look_lines(choice: dict | None) -> list[str]:
    if not choice:
        return []
    tried = ", ".join(f"{look}: {good}" for look, good in choice["val_good"].items())
    test = ", ".join(f"{look}: {good}" for look, good in choice["test_good"].items())
    return [
        "Its second look (`preprocess.locator_second_look`): the locator looks again at the film cut to its first box "
        "plus a context around it, where the hand fills more of its 64 px input. The context was chosen on the "
        f"{choice['val_boxes']} validation films' boxes (good crops; {tried}): {choice['chosen']}. On the "
        f"{choice['test_boxes']} test films' boxes, read for that choice only: {test}.",
        "",
    ]


def _search_lines(search: dict, previous: dict | None = None) -> list[str]:
    if not search:
        return []
    lines = [
        "The recipe search: each candidate got the same training budget (the preset's 60 minutes, the epochs planned "
        "at its own pace), the same split and the same crop; chosen on the validation films only (the test split is "
        "read once, by the winner's `make real-data`).",
        "",
        "| candidate | val MAE | images seen | epochs | s an epoch | planned minutes | precision |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    best = min(search, key=lambda k: search[k]["val_mae"])
    for name, c in search.items():
        mark = "**" if name == best else ""
        lines.append(
            f"| {mark}{c['description']}{mark} | {mark}{c['val_mae']:.2f}{mark} | {c['images_seen']:,} | {c['epochs']} | "
            f"{c['seconds_per_epoch']:.0f} | {c['planned_minutes']:.0f} | {c['precision']} |"
        )
    before = (
        [
            f"Before the search the recipe of record ({previous['description']}, {previous['date']}) reached a validation MAE "
            f"of {previous['val_mae']:.2f} after {previous['epochs']} epochs ({previous['images_seen']:,} images).",
            "",
        ]
        if previous
        else []
    )
    return [*lines, "", f"Candidates tried: {len(search)}.", "", *before]


def _recipe_lines(recipe: dict) -> list[str]:
    if not recipe:
        return ["Recipe of record: not measured yet (`make real-data`, then `python -m benchmarks.bench_real recipe`).", ""]
    m, machine = recipe["metrics"], recipe["machine"]
    lo, hi = m["test_mae_95ci"]
    curve = recipe["curve"]
    best = min(curve, key=lambda c: c["val_mae"])
    lines = [
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, TensorFlow "
        f"{machine['tensorflow']}), one run of `make real-data` from a fresh clone, preset `rsna-cpu`, "
        f"{recipe['train_films']:,} training films, {len(curve)} epochs:",
        "",
        "| | test MAE (months) | vs predict-the-mean |",
        "|---|---:|---:|",
        f"| predict the training mean | {m['predict_the_mean_mae']:.2f} | 100% |",
        f"| **rsna-cpu (InceptionV3 + sex, 96 px)** | **{m['test_mae']:.2f}** (95% CI {lo:.2f}–{hi:.2f}) | "
        f"**{100 * m['ratio']:.0f}%** |",
        "",
        f"Validation MAE {m['val_mae']:.2f} (the saved model, bias-corrected; per epoch before the correction the "
        f"best was {best['val_mae']:.2f}, epoch {best['epoch']}); {m['test_n']} test films. "
        "By sex: "
        + ", ".join(f"{k} {v:.2f}" for k, v in m["by_sex"].items())
        + ". By band: "
        + ", ".join(f"{k} {v['mae']:.1f} ({v['n']} films)" for k, v in _bands_in_order(m["by_age_band"]))
        + ".",
        *_pace_lines(recipe, m),
        f"Goal ≤ 0.35× predict-the-mean: {'met' if m['ratio'] <= 0.35 else 'missed'} ({m['ratio']:.2f}×).",
        "",
        f"![validation MAE against training images seen]({CURVE_PNG.name})",
        "",
    ]
    return lines


def _pace_lines(recipe: dict, m: dict) -> list[str]:
    """The pull toward the middle and the time it took (when recorded)."""
    lines = []
    if "slope" in m:
        lines.append(f"Slope of predicted on true age {m['slope']:.2f} (1 is no pull toward the middle).")
    if recipe.get("training_minutes"):
        lines.append(f"Training took {recipe['training_minutes']:.0f} minutes.")
    if recipe.get("wall_minutes"):
        lines.append(
            f"The whole `make real-data` from a fresh clone took {recipe['wall_minutes']:.0f} minutes of wall time, "
            f"install included (the pipeline alone {recipe.get('pipeline_wall_minutes', float('nan')):.0f})."
        )
    return lines


def _bands_in_order(bands: dict) -> list[tuple[str, dict]]:
    """Age bands youngest first ("2-6y" before "10-14y", which a string sort gets wrong)."""
    return sorted(bands.items(), key=lambda kv: float(kv[0].split("-")[0]))


def _paired(variant: dict) -> str:
    if "vs_recipe_mae" not in variant:
        return "—"
    diff, lo, hi = variant["vs_recipe_mae"]
    return f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"


def _variant_lines(variants: dict, measured: dict | None = None) -> list[str]:
    if not variants:
        return ["Equal-budget comparison: not measured yet (`python -m benchmarks.bench_real variants --source DIR`).", ""]
    when = f"Measured {measured['date']} with {measured['recipe']}. " if measured else ""
    lines = [
        f"{when}Side by side under one shorter budget, on the same splits: the InceptionV3 variants see the same number "
        "of training images; the seed preset, whose 224 px step costs several of theirs, gets about their "
        "wall-clock time. The test split is read once per recipe; the 95% intervals are bootstraps over the test films "
        "(the paired one resamples the same films for both recipes). One training run each: neither interval covers "
        "the spread between training runs.",
        "",
        "| recipe | budget | test MAE | 95% CI | minus the recipe's (paired 95% CI) | vs predict-the-mean | val MAE "
        "| images seen | training minutes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants.values():
        m = v["metrics"]
        lo, hi = m["test_mae_95ci"]
        lines.append(
            f"| {v['description']} | {v['budget']} | {m['test_mae']:.2f} | {lo:.2f}–{hi:.2f} | {_paired(v)} | "
            f"{100 * m['ratio']:.0f}% | "
            f"{m['val_mae']:.2f} | {v['images_seen']:,} | {v['train_minutes']:.1f} |"
        )
    return [*lines, ""]


def plot_learning_curve(recipe: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = recipe["curve"]
    seen = [c["images_seen"] / 1000 for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(seen, [c["val_mae"] for c in curve], "o-", label="validation MAE")
    ax.plot(seen, [c["train_mae"] for c in curve], "s--", alpha=0.6, label="training MAE (augmented)")
    ax.axhline(recipe["metrics"]["predict_the_mean_mae"], color="grey", ls=":", label="predict the mean (test)")
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel("MAE (months)")
    ax.set_title("rsna-cpu on real RSNA films (100 px), 2 CPU cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    CURVE_PNG.parent.mkdir(exist_ok=True)
    fig.savefig(CURVE_PNG)
    plt.close(fig)


def _tried_line(data: dict) -> list[str]:
    tried = int(bool(data.get("recipe"))) + len(data.get("variants", {}))
    if not tried:
        return []
    return [
        f"Recipes read on the real test split so far: {tried}, once each (the recipe of record at its full "
        "budget and each row above); none was tuned on it.",
        "",
    ]


def block(data: dict) -> str:
    return "\n".join(
        [
            *_crop_lines(data.get("crop", {})),
            *_search_lines(data.get("search", {}), data.get("previous_recipe")),
            *_recipe_lines(data.get("recipe", {})),
            *_variant_lines(data.get("variants", {}), data.get("variants_measured")),
            *_tried_line(data),
        ]
    )


def write_readme_block(data: dict) -> None:
    if data.get("recipe"):
        plot_learning_curve(data["recipe"])
    replace_block(PAGE, BLOCK, block(data))


def model_card_block(results: dict) -> str:
    """docs/model-card.md: the recipe of record's model card, from the provenance and evaluation
    `bench_real recipe` stored (the same code writes the registered version's description)."""
    from boneage.config import Params
    from boneage.training.model_card import model_card

    card = results.get("real_data", {}).get("recipe", {}).get("card")
    if not card:
        return "Not written yet: `make real-data`, then `python -m benchmarks.bench_real recipe --workspace .`.\n"
    bands = Params().data.age_bands_years
    return model_card(card["provenance"], card["metrics"], bands, "boneage (the recipe of record)")
