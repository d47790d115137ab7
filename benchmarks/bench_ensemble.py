"""Ensembles on real films, and what they cost to serve.

``real``: under one training budget (bench_real's equal budget: the rsna-cpu recipe for 3 cosine
epochs of 200 steps, 19,200 images) on the real RSNA films (100 px copies), on the same held-out
test split, compare

- the single recipe-of-record model (seed 42; bench_real's "recipe" run, reused when present);
- an ensemble of 3 members (seeds 1-3) that each got a third of the budget (a third of the steps);
- an ensemble of 3 full-budget members (seeds 42, 1, 2): the cluster case, where the wall time is
  one member's;
- each ensemble with test-time augmentation off and on.

Every arm goes through the same ``boneage.training.ensemble.build`` (the single model as an ensemble of one),
so that each gets the same bias correction and band-conditional interval fitted on the validation
films; then ``evaluate`` reads the test split once per arm. The wall time that K nodes would take is
the slowest member's own measured time; one machine takes their sum.

``latency``: the pyfunc's scoring path (``boneage predict``'s Predictor: read, crop, normalise,
model, interval, check) for one real film at a time, p50 over the 40 full-resolution samples, for
one model and for ensembles of 3 (TTA off and on), InceptionV3 at the demo's 96 px, random weights
(weights change no timing). Goal: the 3-member ensemble's p50 <= 250 ms on 2 cores.

    python -m benchmarks.bench_ensemble real --source ../shared/data/rsna-100px
    python -m benchmarks.bench_ensemble latency
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DOCS,
    REPEATS,
    SAMPLES,
    WORK,
    bench_params,
    load_results,
    machine,
    prepared_synthetic,
    record,
    replace_block,
    verdict,
)

RESULT_KEY = "ensemble"
REAL = WORK / "real"  # bench_real's workspace: its ingest, preprocessed data and "recipe" model
OUT = WORK / "ensemble"
GOAL_P50_MS = 250.0
LATENCY_SIZE = 96  # the demo's
LATENCY_MEMBERS = 3
LATENCY_CHECK_FILMS = 200  # synthetic films the timed models' out-of-distribution checks are fitted on
ARMS = {
    "single": [("full-42", 42, 1)],
    "thirds": [(f"third-{s}", s, 3) for s in (1, 2, 3)],
    "full": [("full-42", 42, 1), ("full-1", 1, 1), ("full-2", 2, 1)],
}
ARM_NAMES = {
    "single": "one model (the recipe, seed 42)",
    "thirds": "3 members, a third of the budget each",
    "full": "3 full-budget members (cluster: one member's wall time)",
}


def _params(source: Path, epochs: int, steps: int, members: list[tuple[str, int, int]], tta: bool):
    return bench_params(
        **{
            "preset": "rsna-cpu",
            "data.source": str(source),
            "train.epochs": epochs,
            "train.steps_per_epoch": steps,
            "train.ood.enabled": False,  # not what is compared here; bench_ood measures the check
            "mlflow.tracking_uri": f"sqlite:///{REAL}/mlruns.db",
            "mlflow.artifact_root": str(REAL / "mlruns"),
            "mlflow.experiment": "bench-ensemble",
            "mlflow.log_system_metrics": False,
            "ensemble.members": [
                {"name": name, "seed": seed, "overrides": {"train.steps_per_epoch": -(-steps // share)}}
                for name, seed, share in members
            ],
            "ensemble.min_members": len(members),
            "ensemble.tta.enabled": tta,
        }
    )


def _reuse_recipe_run(folder: Path) -> None:
    """bench_real's "recipe" run (the same recipe, seed and budget) as member full-42, with the
    time that run measured; nothing is retrained."""
    from boneage.contracts import MEMBER_FILE

    recipe = REAL / "models-recipe"
    if (folder / MEMBER_FILE).is_file() or not (recipe / "model.keras").is_file():
        return
    variant = load_results().get("real_data", {}).get("variants", {}).get("recipe", {})
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not folder.exists():
        folder.symlink_to(recipe.resolve(), target_is_directory=True)
    record_ = {
        "name": "full-42",
        "seed": 42,
        "overrides": {},
        "status": "trained",
        "reason": "",
        "attempts": 1,
        "run_id": json.loads((recipe / "run.json").read_text())["run_id"],
        "backbone": "inception_v3",
        "backbone_image_size": 96,
        "train_seconds": round(60 * variant.get("train_minutes", float("nan")), 1),
        "reused_from": "bench_real recipe",
    }
    (folder / MEMBER_FILE).write_text(json.dumps(record_, indent=2))


def _arm(name: str, source: Path, epochs: int, steps: int, with_tta: bool = True) -> dict:
    from benchmarks.bench_real import bootstrap_interval, prepared_real
    from boneage.contracts import MEMBER_FILE
    from boneage.training.ensemble import build, train_member, views
    from boneage.training.evaluate import evaluate

    members = ARMS[name]
    params = _params(source, epochs, steps, members, tta=False)
    data = prepared_real(params, REAL)
    folders = [OUT / "members" / member for member, _, _ in members]
    _reuse_recipe_run(OUT / "members" / "full-42")
    for folder, member in zip(folders, params.ensemble.members, strict=True):
        done = folder / MEMBER_FILE
        if not (done.is_file() and json.loads(done.read_text())["status"] == "trained"):
            print(f"== {name}: member {member.name}", flush=True)
            train_member(params, member.name, data, folder)
    records = [json.loads((f / MEMBER_FILE).read_text()) for f in folders]
    result = {
        "description": ARM_NAMES[name],
        "members": [r["name"] for r in records],
        "member_train_minutes": [round(r["train_seconds"] / 60, 1) for r in records],
        # One node per member: the slowest member's own time. One machine: one after another.
        "wall_minutes_k_nodes": round(max(r["train_seconds"] for r in records) / 60, 1),
        "wall_minutes_one_machine": round(sum(r["train_seconds"] for r in records) / 60, 1),
        "images_seen": int(sum(epochs * -(-steps // share) * params.train.batch_size for _, _, share in members)),
    }
    for tta in (False, True) if with_tta else (False,):
        key = "tta" if tta else "plain"
        tuned = _params(source, epochs, steps, members, tta=tta)
        out = OUT / f"{name}-{key}"
        built = build(tuned, folders, data, out)
        metrics = evaluate(tuned, data, out, OUT / f"reports-{name}-{key}", log_to_mlflow=False)
        test = metrics["test"]
        result[key] = {
            "test_mae": round(test["mae"], 2),
            "test_mae_95ci": bootstrap_interval(OUT / f"reports-{name}-{key}" / "predictions.csv"),
            "val_mae": round(built.val_mae, 2),
            "interval_coverage": round(test["interval_coverage"], 3),
            "interval_mean_width_months": round(test["interval_mean_width"], 1),
            "test_n": test["n"],
            "views": len(views(tuned)),
        }
        print(f"== {name} {key}: {result[key]}", flush=True)
    return result


def _store(part: str | None = None, value=None) -> None:
    """Record ``part`` (or re-record what is there) and rewrite its docs block from the record."""
    data = {k: v for k, v in load_results().get(RESULT_KEY, {}).items() if k in ("real", "latency")}
    if part:
        data[part] = value
    runs = [{"arm": name, **arm} for name, arm in data.get("real", {}).get("arms", {}).items()]
    runs += [{"latency": name, **run} for name, run in data.get("latency", {}).get("runs", {}).items()]
    title = "ensembles: real films, serving latency"
    record(RESULT_KEY, {**data, "runs": runs, "title": title, "machine": machine(), **_summary(data)})
    write_readme(load_results()[RESULT_KEY])


def _summary(data: dict) -> dict:
    parts = []
    real_arms = data.get("real", {}).get("arms", {})
    if "single" in real_arms and "full" in real_arms:
        single, full = real_arms["single"]["plain"]["test_mae"], real_arms["full"]["plain"]["test_mae"]
        parts.append(f"real films: test MAE single {single:.2f}, 3 full members {full:.2f} months")
    latency = data.get("latency")
    if not latency:
        return {"summary": "; ".join(parts), "goal": "measured (no goal set)", "verdict": ""}
    p50 = latency["ensemble_p50_ms"]
    parts.append(f"3-member ensemble p50 {p50:.0f} ms per image (one model {latency['single_p50_ms']:.0f} ms)")
    return {
        "summary": "; ".join(parts),
        "goal": f"ensemble of 3 p50 <= {GOAL_P50_MS:.0f} ms at {LATENCY_SIZE} px",
        "verdict": verdict(p50 <= GOAL_P50_MS),
    }


def real(source: Path, epochs: int, steps: int, only: list[str], with_tta: bool = True) -> None:
    done = load_results().get(RESULT_KEY, {}).get("real", {})
    arms = dict(done.get("arms", {}))
    for name in only:
        arms[name] = _arm(name, source, epochs, steps, with_tta)
        _store(
            "real",
            {
                "budget": f"{epochs} epochs x {steps} steps x 32 = {epochs * steps * 32:,} images per full budget",
                "data": "real RSNA films, 100 px copies, rsna-cpu recipe; test split of bench_real",
                "test_reads": sum(("plain" in arm) + ("tta" in arm) for arm in arms.values()),
                "arms": arms,
                "measured": time.strftime("%Y-%m-%d"),
            },
        )


def latency() -> None:
    from boneage.config import Params
    from boneage.contracts import MODEL_FILE, PREDICTOR_FILE
    from boneage.model.calibration import IntervalCalibration
    from boneage.model.network import build_model
    from boneage.model.predictor_config import PredictorConfig
    from boneage.serve.predict import Predictor, predict_files
    from boneage.training.ensemble import combined_model, member_stack, views
    from boneage.training.fit_ood import fit_for_model

    files = sorted(SAMPLES.glob("*.png"))
    if not files:
        raise SystemExit(f"no samples at {SAMPLES} (the latency benchmark reads ../shared/data)")
    params = bench_params(**{"preset": "demo"})
    checked_on = prepared_synthetic(LATENCY_CHECK_FILMS, LATENCY_SIZE)
    models = [
        (f"m{i}", build_model(params.model, LATENCY_SIZE, target_mean=127.0, target_sd=42.0).predict)
        for i in range(LATENCY_MEMBERS)
    ]
    with_tta = params.model_dump(mode="json")
    with_tta["ensemble"]["tta"]["enabled"] = True
    tta_views = views(Params.model_validate(with_tta))
    setups = {"single": (models[:1], [(0.0, 1.0)]), "ensemble": (models, [(0.0, 1.0)]), "ensemble_tta": (models, tta_views)}
    out = {}
    for name, (members, seen) in setups.items():
        folder = OUT / f"latency-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        inputs, stack, tap = member_stack(members, seen, LATENCY_SIZE)
        model = combined_model(inputs, stack, tap, np.full(len(members), 1 / len(members)), 0.0)
        model.save(folder / MODEL_FILE)
        # The served path checks each film against the training films: fit a check (on synthetic films).
        fit_for_model(model, checked_on, folder, params)
        PredictorConfig.of(params, IntervalCalibration(0.0, 12.0, [], []), {}).write(folder / PREDICTOR_FILE)
        predictor = Predictor.load(str(folder))
        for path in files[:3]:
            predict_files(predictor, [path], sex="F")
        p50s = []
        for _ in range(REPEATS):
            latencies = []
            for path in files:
                start = time.perf_counter()
                predict_files(predictor, [path], sex="F")
                latencies.append(1000 * (time.perf_counter() - start))
            p50s.append(float(np.percentile(latencies, 50)))
        out[name] = {"p50_ms": round(statistics.median(p50s), 1), "runs_p50_ms": [round(v, 1) for v in p50s], "views": len(seen)}
        print(f"{name}: p50 {out[name]['p50_ms']} ms", flush=True)
    _store(
        "latency",
        {
            "image_size": LATENCY_SIZE,
            "members": LATENCY_MEMBERS,
            "images": len(files),
            "single_p50_ms": out["single"]["p50_ms"],
            "ensemble_p50_ms": out["ensemble"]["p50_ms"],
            "ensemble_tta_p50_ms": out["ensemble_tta"]["p50_ms"],
            "runs": out,
            "measured": time.strftime("%Y-%m-%d"),
        },
    )


PAGE, BLOCK = DOCS / "ensembles.md", "ensemble"


def write_readme(data: dict) -> None:
    replace_block(PAGE, BLOCK, block(data))


def _for_scale() -> str:
    """The arms were trained with the recipe of record before the search (batch 32, float32): that
    recipe at its full budget, and where today's is."""
    previous = load_results().get("real_data", {}).get("previous_recipe")
    if not previous:
        return "For scale: the recipe of record at its full budget: see docs/real-data.md."
    return (
        f"For scale: that recipe ({previous['description']}) at its full budget ({previous['epochs']} epochs, "
        f"{previous['images_seen']:,} images) reached a test MAE of {previous['test_mae']:.2f} months; today's recipe of "
        "record is in docs/real-data.md."
    )


def block(data: dict) -> str:
    """The ensemble block of docs/ensembles.md, from results.json alone."""
    m = data.get("machine", {})
    lines = [
        f"Measured by `benchmarks/bench_ensemble.py` on {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('date', '?')}."
    ]
    real_part = data.get("real")
    if real_part:
        lines += [
            "",
            f"Real films, one budget ({real_part['budget']}); {real_part['data']}. Test MAE with its bootstrap 95% interval; "
            f"the 90% interval's coverage and mean width on the test films; the test split read {real_part['test_reads']} times "
            "(once per arm and TTA setting).",
            _for_scale(),
            "",
            "| arm | test MAE (months) | with TTA | interval coverage / width | wall: K nodes / one machine (min) |",
            "|---|---|---|---|---|",
        ]
        for name, arm in real_part["arms"].items():
            plain, tta = arm["plain"], arm.get("tta")
            low, high = plain["test_mae_95ci"]
            with_tta = f"{tta['test_mae']:.2f}" if tta else "not run"
            lines.append(
                f"| {ARM_NAMES.get(name, arm['description'])} | {plain['test_mae']:.2f} [{low:.2f}, {high:.2f}] "
                f"| {with_tta} | {100 * plain['interval_coverage']:.1f}% / "
                f"{plain['interval_mean_width_months']:.1f} months "
                f"| {arm['wall_minutes_k_nodes']:.1f} / {arm['wall_minutes_one_machine']:.1f} |"
            )
    latency_part = data.get("latency")
    if latency_part:
        lines += [
            "",
            "Serving one real film (1600×2080 PNG → bone age, the pyfunc's path: read, crop, model, interval, "
            f"out-of-distribution check), p50 over {latency_part['images']} films at "
            f"{latency_part['image_size']} px: one model {latency_part['single_p50_ms']:.0f} ms, an ensemble of "
            f"{latency_part['members']} {latency_part['ensemble_p50_ms']:.0f} ms, with TTA "
            f"({latency_part['runs']['ensemble_tta']['views']} views) {latency_part['ensemble_tta_p50_ms']:.0f} ms "
            f"(goal ≤ {GOAL_P50_MS:.0f} ms for the ensemble: {data.get('verdict', '?')}).",
        ]
        if latency_part["ensemble_tta_p50_ms"] > GOAL_P50_MS:
            lines[-1] += (
                " TTA multiplies the members' passes by its views, which takes it past the goal: it is off by "
                "default (`ensemble.tta.enabled`), for batch scoring rather than one film at a time."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("real", "latency", "readme"))
    parser.add_argument("--source", type=Path, help="a Kaggle-layout folder of real films")
    parser.add_argument("--epochs", type=int, default=3, help="cosine epochs of the budget (bench_real's)")
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch of a full-budget member")
    parser.add_argument("--only", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA evaluation (it scores every film 5 times per member)")
    args = parser.parse_args()
    if args.part == "real":
        if not args.source:
            parser.error("--source is required")
        real(args.source, args.epochs, args.steps, args.only, not args.no_tta)
    elif args.part == "latency":
        latency()
    else:
        _store()


if __name__ == "__main__":
    main()
