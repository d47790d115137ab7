"""Ensembles: members trained from the recipe of record (each with its own seed, backbone or size,
``ensemble.members``), combined into one model that scores an image with all of them.

- ``train_member`` trains one member (the same ``train`` as the single model, with its own MLflow
  run), retrying ``ensemble.member_attempts`` times from its checkpoint, and records in its folder
  whether it finished and why not. A member that fails does not fail its step: the ensemble decides.
- ``build`` takes the members that finished (at least ``ensemble.min_members``, else it fails with
  each missing member's reason) and makes one Keras model: each member's months with its own bias
  correction taken out, optionally averaged over fixed test-time views (small turns and scales),
  combined by the mean or by weights fitted on part of the validation films. One bias correction
  and one conformal interval for the ensemble are then fitted on validation films the weights did
  not use, and one out-of-distribution check on the training films. The folder it writes holds the
  same files as train's, so evaluate, register, predict and serving take it as they take one model.

The ensemble's MLflow run is the parent of its members' runs; the members' provenance and
fingerprints go into its provenance, hence onto the registered version's tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers

from boneage import tracking
from boneage.config import EnsembleMember, Params
from boneage.contracts import (
    MEMBER_FILE,
    MODEL_FILE,
    PREDICTOR_FILE,
    TARGET_FILE,
    read_dataset_card,
    read_manifest,
    write_json_atomic,
)
from boneage.errors import BoneageError
from boneage.model import ood
from boneage.model.calibration import IntervalCalibration, calibrate_interval
from boneage.model.network import (
    ENSEMBLE_MEMBER_PREFIX,
    IMAGE_INPUT,
    OUTPUT,
    SEX_INPUT,
    FixedView,
    load_predict_model,
    save_model_atomic,
)
from boneage.model.ood import POOL_LAYER
from boneage.model.predictor_config import PredictorConfig
from boneage.serve import packaging
from boneage.training.dataset import make_dataset
from boneage.training.fit_ood import fit_for_model
from boneage.training.monitor_reference import write_reference

TRAINED, FAILED = "trained", "failed"
# What every member's provenance shares (the data and its preparation): the ensemble's too.
DATA_PROVENANCE = ("dataset_kind", "dataset_fingerprint", "dataset_source", "films", "image_size", "crop")
MEMBER_TAG = "boneage.ensemble_member"
PARENT_RUN_TAG = "mlflow.parentRunId"  # how the MLflow UI nests a run under another


class _NoRetracingNotes(logging.Filter):
    """Scoring several models, each over a last, smaller batch, makes TensorFlow note each retrace:
    expected here, and pages of it would bury the step's own output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoRetracingNotes())


def find_member(params: Params, name: str) -> EnsembleMember:
    for member in params.ensemble.members:
        if member.name == name:
            return member
    known = ", ".join(m.name for m in params.ensemble.members) or "none"
    raise BoneageError(f"ensemble member {name!r} is not in ensemble.members (members: {known})")


def train_member(params: Params, name: str, data_dir: Path, out_dir: Path) -> dict:
    """Train member ``name`` into ``out_dir`` and write its record (``member.json``): trained, with
    its run and its measured time, or failed, with the reason of its last attempt."""
    from boneage.training.train import train

    member = find_member(params, name)
    member_params = params.member_params(member)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MEMBER_FILE).unlink(missing_ok=True)
    attempts = params.ensemble.member_attempts
    record = {"name": name, "seed": member_params.seed, "overrides": dict(member.overrides)}
    for attempt in range(1, attempts + 1):
        wall, cpu = time.perf_counter(), tracking.cpu_seconds()
        try:
            result = train(member_params, data_dir, out_dir, run_name=f"member-{name}", run_tags={MEMBER_TAG: name})
        except Exception as exc:  # any failure of one member is recorded; the ensemble step decides
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, BoneageError):
                reason = f"{type(exc).__name__}: {reason}"
            print(f"member {name}: attempt {attempt} of {attempts} failed: {reason}", file=sys.stderr)
            record.update(status=FAILED, reason=reason, attempts=attempt)
            continue
        record.update(
            status=TRAINED,
            reason="",
            attempts=attempt,
            run_id=result.run_id,
            epochs_run=result.epochs_run,
            best_val_mae=result.best_val_mae,
            backbone=member_params.model.backbone,
            backbone_image_size=member_params.model.image_size or member_params.preprocess.image_size,
            # The member's own time: what one node of a cluster would spend on it.
            train_seconds=round(time.perf_counter() - wall, 1),
            cpu_seconds=round(tracking.cpu_seconds() - cpu, 1),
        )
        break
    write_json_atomic(out_dir / MEMBER_FILE, record)
    return record


@dataclass
class Member:
    name: str
    folder: Path
    record: dict
    provenance: dict
    offset_months: float  # the member's own bias correction, taken out of its months
    model: keras.Model


@dataclass
class EnsembleResult:
    model_path: Path
    run_id: str
    members: list[str]
    failed: dict[str, str]
    weights: list[float]
    offset_months: float
    val_mae: float


def read_records(params: Params, member_dirs: list[Path]) -> tuple[dict[str, tuple[Path, dict]], dict[str, str]]:
    """((folder, record) of each configured member that finished, reason for each that did not)."""
    found: dict[str, tuple[Path, dict]] = {}
    for folder in map(Path, member_dirs):
        path = folder / MEMBER_FILE
        if path.is_file():
            record = json.loads(path.read_text())
            found[record["name"]] = (folder, record)
    trained, failed = {}, {}
    for member in params.ensemble.members:
        if member.name not in found:
            failed[member.name] = "no record: its training never finished"
            continue
        folder, record = found[member.name]
        if record.get("status") != TRAINED:
            failed[member.name] = record.get("reason") or "failed"
        elif not (folder / MODEL_FILE).is_file():
            failed[member.name] = f"recorded as trained, but {folder / MODEL_FILE} is missing"
        else:
            trained[member.name] = (folder, record)
    return trained, failed


def _load_members(params: Params, trained: dict[str, tuple[Path, dict]], data_dir: Path) -> list[Member]:
    card = read_dataset_card(data_dir)
    members = []
    for name, (folder, record) in trained.items():
        provenance = tracking.read_provenance(folder)
        if card.get("fingerprint") and provenance.get("dataset_fingerprint") not in (None, card["fingerprint"]):
            raise BoneageError(
                f"{folder}: member {name} was trained on dataset {provenance['dataset_fingerprint']}, "
                f"not on {data_dir} ({card['fingerprint']}): retrain it on this data"
            )
        if provenance.get("image_size") not in (None, params.preprocess.image_size):
            raise BoneageError(
                f"{folder}: member {name} takes {provenance['image_size']} px images, the data has "
                f"{params.preprocess.image_size} px (members share one preprocessed dataset)"
            )
        target = json.loads((folder / TARGET_FILE).read_text())
        model = load_predict_model(folder / MODEL_FILE)
        members.append(Member(name, folder, record, provenance, float(target.get("offset_months", 0.0)), model))
    return members


def views(params: Params) -> list[tuple[float, float]]:
    """(degrees, scale) of each view a member scores: the image itself, then the TTA views."""
    tta = params.ensemble.tta
    if not tta.enabled:
        return [(0.0, 1.0)]
    return [(0.0, 1.0), *((d, 1.0) for d in tta.rotations_deg), *((0.0, s) for s in tta.scales)]


def _layer_name(name: str) -> str:
    return ENSEMBLE_MEMBER_PREFIX + name.replace("-", "_")


def member_stack(members: list[tuple[str, keras.Model]], views: list[tuple[float, float]], size: int):
    """(inputs, [B, K] months of each member averaged over the views, a [B, 1] zero that carries the
    first member's pooled features as the layer ``pool``: what the out-of-distribution check reads)."""
    image = keras.Input((size, size, 1), name=IMAGE_INPUT, dtype="uint8")
    male = keras.Input((1,), name=SEX_INPUT, dtype="float32")
    seen = [image, *(FixedView(d, s, name=f"view_{k}")(image) for k, (d, s) in enumerate(views[1:], 1))]
    outputs = []
    for i, (name, model) in enumerate(members):
        if i == 0:
            scorer = ood.scoring_model(model)
            nested = keras.Model(scorer.input, scorer.outputs, name=_layer_name(name))
        else:
            nested = keras.Model(model.input, model.output, name=_layer_name(name))
        months = []
        for k, view in enumerate(seen):
            out = nested({IMAGE_INPUT: view, SEX_INPUT: male})
            if i == 0:
                out, features = out
                if k == 0:
                    tap = _features_tap(features)
            months.append(out)
        outputs.append(layers.Average(name=f"views_of_{name.replace('-', '_')}")(months) if len(months) > 1 else months[0])
    stack = layers.Concatenate(name="members")(outputs) if len(outputs) > 1 else outputs[0]
    return {IMAGE_INPUT: image, SEX_INPUT: male}, stack, tap


def _features_tap(features):
    """The first member's features as the layer ``pool``, joined to the output by a dense layer of
    zero weights (adds exactly 0): a layer off the output's path would not be part of the saved model."""
    pool = layers.Identity(name=POOL_LAYER)(features)
    flat = layers.GlobalAveragePooling2D(name="pool_mean")(pool) if len(pool.shape) == 4 else pool
    return layers.Dense(1, use_bias=False, kernel_initializer="zeros", trainable=False, name="pool_tap")(flat)


def combined_model(inputs: dict, stack, tap, weights: np.ndarray, bias_months: float) -> keras.Model:
    """months = sum_i weights_i * member_i + bias_months: one fixed dense layer over the stack."""
    head = layers.Dense(1, name="combine", trainable=False, dtype="float32")
    months = layers.Add(name=OUTPUT)([head(stack), tap])
    head.set_weights([np.asarray(weights, "float32").reshape(-1, 1), np.array([bias_months], "float32")])
    return keras.Model(inputs, months, name="boneage_ensemble")


def _predict_matrix(model: keras.Model, data_dir: Path, split: str, size: int, batch: int) -> pd.DataFrame:
    rows, ids = [], []
    for inputs, _, batch_ids in make_dataset(data_dir, split, size, batch, with_ids=True):
        rows.append(np.asarray(model.predict_on_batch(inputs), dtype=float))
        ids.extend(i.decode() for i in batch_ids.numpy())
    return pd.DataFrame(np.concatenate(rows), index=ids)


def fit_weights(raw: np.ndarray, true: np.ndarray, combine: str) -> np.ndarray:
    """The members' weights: equal, or non-negative least squares on ``raw`` [n, K] scaled to sum
    to 1 (the bias correction that follows absorbs any offset)."""
    k = raw.shape[1]
    if combine == "mean":
        return np.full(k, 1.0 / k)
    from scipy.optimize import nnls

    weights, _ = nnls(raw, true)
    if weights.sum() <= 0:
        raise BoneageError("ensemble.combine weighted: least squares gave every member weight 0; use combine: mean")
    return weights / weights.sum()


def split_validation(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(films that fit the weights, films that calibrate the bias and the interval): disjoint."""
    ordered = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_fit = int(round(fraction * len(ordered)))
    return [ordered[i] for i in order[:n_fit]], [ordered[i] for i in order[n_fit:]]


def build(params: Params, member_dirs: list[Path], data_dir: Path, out_dir: Path) -> EnsembleResult:
    """Combine the finished members in ``member_dirs`` into one model in ``out_dir`` (see the module)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    members, failed = _finished_members(params, member_dirs, data_dir)
    combination = _combine(params, members, data_dir)
    run_id = _save_and_log(params, combination, members, failed, data_dir, out_dir)
    print(
        f"ensemble of {len(members)} ({', '.join(m.name for m in members)}): validation MAE {combination.val_mae:.2f} "
        f"months on {len(combination.true)} films "
        f"(members: {', '.join(f'{k} {v:.2f}' for k, v in combination.member_mae.items())})",
        file=sys.stderr,
    )
    return EnsembleResult(
        out_dir / MODEL_FILE,
        run_id,
        [m.name for m in members],
        failed,
        combination.weights.tolist(),
        combination.interval.offset_months,
        combination.val_mae,
    )


def _finished_members(params: Params, member_dirs: list[Path], data_dir: Path) -> tuple[list[Member], dict[str, str]]:
    """The members that finished, loaded, and the reason each other one did not; an error when fewer
    than ensemble.min_members finished."""
    cfg = params.ensemble
    if not cfg.members:
        raise BoneageError("ensemble.members is empty: list the members in params.yaml (see its ensemble section)")
    trained, failed = read_records(params, member_dirs)
    if len(trained) < cfg.min_members:
        reasons = "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise BoneageError(
            f"only {len(trained)} of {len(cfg.members)} ensemble members finished, fewer than ensemble.min_members "
            f"({cfg.min_members}): {reasons}"
        )
    for name, why in failed.items():
        print(f"ensemble: member {name} left out: {why}", file=sys.stderr)
    return _load_members(params, trained, data_dir), failed


@dataclass
class _Combination:
    """The members combined into one Keras model, and what its validation films said of it."""

    model: keras.Model
    weights: np.ndarray
    interval: IntervalCalibration
    true: np.ndarray  # the calibration films' ages
    member_mae: dict[str, float]
    val_mae: float


def _combine(params: Params, members: list[Member], data_dir: Path) -> _Combination:
    """Each member's validation months without its own correction; the weights (fitted on a share of
    the films when ensemble.combine is weighted); the ensemble's own correction and interval on the rest."""
    cfg, size, batch = params.ensemble, params.preprocess.image_size, params.train.batch_size
    inputs, stack, tap = member_stack([(m.name, m.model) for m in members], views(params), size)
    offsets = np.array([m.offset_months for m in members])
    val = _predict_matrix(keras.Model(inputs, stack), data_dir, "val", size, batch)
    if val.empty:
        raise BoneageError(f"{data_dir}: no validation films to combine and calibrate the members on")
    raw = val.to_numpy().reshape(len(val), -1) - offsets  # each member before its own correction
    true = read_manifest(data_dir).set_index("id").loc[val.index, "boneage"].to_numpy(dtype=float)
    position = {film: i for i, film in enumerate(val.index)}
    if cfg.combine == "weighted":
        fit_ids, calibration_ids = split_validation(list(val.index), cfg.weight_fit_fraction, params.seed)
    else:
        fit_ids, calibration_ids = [], list(val.index)
    fit_rows = [position[i] for i in fit_ids]
    weights = fit_weights(raw[fit_rows], true[fit_rows], cfg.combine)
    calibration = [position[i] for i in calibration_ids]
    combined = raw[calibration] @ weights
    interval = calibrate_interval(combined, true[calibration], params.train, params.data.age_bands_years)
    # months = sum_i w_i (member_i - offset_i) + the ensemble's own offset
    model = combined_model(inputs, stack, tap, weights, interval.offset_months - weights @ offsets)
    member_mae = {
        m.name: float(np.mean(np.abs(raw[calibration, i] + m.offset_months - true[calibration]))) for i, m in enumerate(members)
    }
    val_mae = float(np.mean(np.abs(combined + interval.offset_months - true[calibration])))
    return _Combination(model, weights, interval, true[calibration], member_mae, val_mae)


def _save_and_log(
    params: Params, combination: _Combination, members: list[Member], failed: dict[str, str], data_dir: Path, out_dir: Path
) -> str:
    """Write the ensemble's folder (the same files as train's: model, predictor.json, its check,
    target.json, run.json) and its MLflow run, the members' runs' parent; its run id."""
    import mlflow

    experiment_id = tracking.connect(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    interval, weights = combination.interval, combination.weights
    provenance = _provenance(params, members, failed, weights)
    PredictorConfig.of(params, interval, provenance).write(out_dir / PREDICTOR_FILE)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"ensemble-{len(members)}") as run:
        client = mlflow.MlflowClient()
        for member in members:  # the members' runs become this run's children
            client.set_tag(member.record["run_id"], PARENT_RUN_TAG, run.info.run_id)
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json", include={"seed", "preset", "preprocess", "ensemble"})))
        mlflow.set_tags(
            {
                **tracking.image_lineage(),
                "git.commit": tracking.git_commit(),
                **tracking.data_lineage(data_dir),
                **tracking.flatten(provenance, "provenance."),
            }
        )
        mlflow.log_metrics(
            {
                "val_mae_months": combination.val_mae,
                "val_bias_correction_months": interval.offset_months,
                "interval_halfwidth_months": interval.halfwidth_months,
                "ensemble_members": len(members),
                **{f"member_val_mae_months.{name}": mae for name, mae in combination.member_mae.items()},
                **{f"member_weight.{m.name}": float(w) for m, w in zip(members, weights, strict=True)},
            }
        )
        fit_for_model(combination.model, data_dir, out_dir, params)
        save_model_atomic(combination.model, out_dir / MODEL_FILE)
        write_json_atomic(out_dir / TARGET_FILE, {"offset_months": interval.offset_months, "weights": weights.tolist()})
        write_reference(params, data_dir, out_dir)
        model_uri = packaging.log_scoring_model(combination.model, out_dir, params.preprocess.image_size, provenance)
        tracking.write_run_file(out_dir, run.info.run_id, experiment_id, tracking.tracking_uri(params), model_uri)
    return run.info.run_id


def _provenance(params: Params, members: list[Member], failed: dict[str, str], weights: np.ndarray) -> dict:
    """The ensemble's provenance: the data's (shared by every member), then which members are in,
    with their own recipe fingerprints, runs and times, and which were left out, and why."""
    first = members[0].provenance
    fingerprints = sorted(m.provenance.get("recipe_fingerprint", "unknown") for m in members)
    combination = json.dumps({"members": fingerprints, "ensemble": params.ensemble.model_dump(mode="json")}, sort_keys=True)
    return {
        **{
            k: first.get(k, "unknown")
            for k in ("dataset_kind", "dataset_fingerprint", "dataset_source", "films", "image_size", "crop")
        },
        "backbone": "ensemble of " + ", ".join(m.provenance.get("backbone", "unknown") for m in members),
        "preset": params.preset,
        "recipe_fingerprint": hashlib.sha256(combination.encode()).hexdigest()[:16],
        "boneage_version": packaging.boneage_version(),
        "git_commit": tracking.git_commit(),
        "combine": params.ensemble.combine,
        "tta_views": len(views(params)),
        "members_in": ",".join(m.name for m in members),
        "members": {
            m.name: {
                "weight": round(float(w), 4),
                "run_id": m.record.get("run_id"),
                "recipe_fingerprint": m.provenance.get("recipe_fingerprint"),
                "backbone": m.provenance.get("backbone"),
                "backbone_image_size": m.record.get("backbone_image_size"),
                "seed": m.record.get("seed"),
                "train_seconds": m.record.get("train_seconds"),
            }
            for m, w in zip(members, weights, strict=True)
        },
        "members_failed": dict(failed),
    }
