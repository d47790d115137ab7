"""Train: warm up with the backbone frozen, then fine-tune everything; checkpoint every epoch and
resume after an interruption; log the run to MLflow; save the model that reports months."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from boneage import tracking
from boneage.config import Params
from boneage.contracts import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PREDICTOR_FILE,
    RUN_FILE,
    TARGET_FILE,
    read_dataset_card,
    read_manifest,
    write_json_atomic,
)
from boneage.errors import BoneageError
from boneage.model.calibration import calibrate_interval
from boneage.model.network import (
    BoneAgeModel,
    MonthsMAE,
    build_model,
    from_train_model,
    make_loss,
    recalibrate_batchnorm,
    save_model_atomic,
    weights_origin,
)
from boneage.model.predictor_config import PredictorConfig
from boneage.serve import packaging
from boneage.training.dataset import make_dataset, predict_split
from boneage.training.fit_ood import fit_for_model, split_fit_data
from boneage.training.monitor_reference import write_reference
from boneage.training.precision import training_precision

CHECKPOINT_MODEL_FILE = "train.keras"
TRAINING_CURVE_FILE = "training_curve.png"


@dataclass
class TrainResult:
    model_path: Path
    run_id: str
    epochs_run: int
    best_val_mae: float
    resumed_from_epoch: int


def target_stats(manifest: pd.DataFrame) -> tuple[float, float]:
    """Standardisation from the training split only (the test split never leaks in)."""
    ages = manifest.loc[manifest["split"] == "train", "boneage"].astype(float)
    if len(ages) < 2:
        raise BoneageError("fewer than 2 training images: cannot standardise the target")
    return float(ages.mean()), float(max(ages.std(), 1.0))


def _strategy() -> tf.distribute.Strategy:
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _config_fingerprint(params: Params, data_dir: Path) -> str:
    """What a checkpoint must match to be resumed: the recipe and the exact data (not the time
    limits, which a resumed run may change)."""
    recipe = params.model_dump(mode="json", include={"seed", "preset", "preprocess", "model", "train"})
    recipe["train"].pop("max_minutes", None)
    recipe["train"].pop("budget_minutes", None)
    payload = json.dumps(recipe, sort_keys=True) + tracking.file_md5(data_dir / MANIFEST_FILE)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class _Plan:
    """Where the current phase ends: its first epoch and the epoch it stops after (``end``; the
    budget may move it), with the steps of an epoch and the training seconds before this run."""

    first: int
    end: int
    steps_per_epoch: int
    seconds_before: float = 0.0
    planned: bool = False

    @property
    def total_steps(self) -> int:
        return max(1, (self.end - self.first) * self.steps_per_epoch)


class _CosineByStep(keras.callbacks.Callback):
    """The learning rate before each step: a cosine from ``peak`` down to ``floor`` at the plan's
    last step (the curve of keras' CosineDecay, which cannot change its length once compiled: this
    one follows the plan when the budget moves it)."""

    def __init__(self, peak: float, floor: float, plan: _Plan):
        super().__init__()
        self.peak, self.floor, self.plan = peak, floor, plan

    def rate(self, step: int) -> float:
        progress = min(step, self.plan.total_steps) / self.plan.total_steps
        return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate = self.rate(int(keras.ops.convert_to_numpy(optimizer.iterations)))


class _Budget(keras.callbacks.Callback):
    """train.budget_minutes: after the second epoch of the phase (the first one pays for building
    the graphs), plan how many more epochs fit in what is left of the budget at that epoch's pace,
    at most the phase's end, and stop there. After each later epoch the plan is checked against the
    recent pace (the median of the last REPLAN_EPOCHS epochs): when the machine slowed down (a busy
    node, another job on its cores) the end moves earlier, and the cosine, which follows the plan,
    still ends at its floor inside the budget instead of being cut off by train.max_minutes."""

    REPLAN_EPOCHS = 3

    def __init__(self, plan: _Plan, budget_seconds: float, started: float):
        super().__init__()
        self.plan, self.budget, self.started, self.epoch_ends = plan, budget_seconds, started, [started]

    def _fits(self, epoch: int, pace: float, now: float) -> int:
        left = self.budget - self.plan.seconds_before - (now - self.started)
        return epoch + 1 + max(0, int(left // pace))

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        now = time.monotonic()
        self.epoch_ends.append(now)
        durations = np.diff(self.epoch_ends)
        if not self.plan.planned and len(durations) == 2:
            pace = float(durations[1])
            self.plan.end, self.plan.planned = min(self.plan.end, self._fits(epoch, pace, now)), True
            mlflow.set_tags({"boneage.planned_epochs": self.plan.end, "boneage.seconds_per_epoch": round(pace, 1)})
            print(f"train.budget_minutes: {pace:.0f} s an epoch; training ends after epoch {self.plan.end}", file=sys.stderr)
        elif self.plan.planned and len(durations) > 2:
            pace = float(np.median(durations[-self.REPLAN_EPOCHS :]))
            fits = self._fits(epoch, pace, now)
            if fits < self.plan.end:
                self.plan.end = max(epoch + 1, fits)
                mlflow.set_tags({"boneage.planned_epochs": self.plan.end, "boneage.seconds_per_epoch": round(pace, 1)})
                note = f"slower now ({pace:.0f} s an epoch); training ends after epoch {self.plan.end}"
                print(f"train.budget_minutes: {note}", file=sys.stderr)
        if epoch + 1 >= self.plan.end:
            self.model.stop_training = True


class _EpochEnd(keras.callbacks.Callback):
    """Per epoch: checkpoint (model with optimizer state, then state.json with the plan, both
    atomic), history row, MLflow metrics, and the wall-clock limit: training stops after an epoch
    when another one as long would end past the deadline, so the limit is a limit, not a target."""

    def __init__(self, ckpt_dir: Path, fingerprint: str, phase: str, deadline: float | None, plan: _Plan, started: float):
        super().__init__()
        self.ckpt_dir, self.fingerprint, self.history_path = ckpt_dir, fingerprint, ckpt_dir / HISTORY_FILE
        self.phase, self.deadline, self.plan, self.started = phase, deadline, plan, started

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        save_model_atomic(self.model, self.ckpt_dir / CHECKPOINT_MODEL_FILE)
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch + 1,
            "phase": self.phase,
            "completed": False,
            "planned_end": self.plan.end if self.plan.planned else None,
            "seconds_trained": round(self.plan.seconds_before + time.monotonic() - self.started, 1),
        }
        write_json_atomic(self.ckpt_dir / CHECKPOINT_STATE_FILE, state)
        row = {"epoch": epoch + 1, "phase": self.phase, **{k: round(float(v), 6) for k, v in logs.items()}}
        new = not self.history_path.exists()
        with open(self.history_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch + 1)
        now = time.monotonic()
        if self.deadline and now + (now - self.epoch_started) > self.deadline:
            print(
                f"train.max_minutes: another epoch would end past the budget; stopping after epoch {epoch + 1}", file=sys.stderr
            )
            self.model.stop_training = True


class _PreciseBatchNorm(keras.callbacks.Callback):
    """After the last training step of each epoch, before validation runs, re-estimate the
    BatchNorm statistics over ``batches`` batches of un-augmented training images."""

    def __init__(self, images: tf.data.Dataset, batches: int, steps_per_epoch: int):
        super().__init__()
        self.images, self.batches, self.steps = images, batches, steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.steps - 1:
            recalibrate_batchnorm(self.model, (inputs for inputs, _ in self.images.take(self.batches)))


def compile_model(model: keras.Model, params: Params, learning_rate, target_sd: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=make_loss(params.train.loss, params.train.huber_delta),
        metrics=[MonthsMAE(target_sd)],
        jit_compile=params.train.jit_compile,
    )


def _load_checkpoint(ckpt_dir: Path, fingerprint: str) -> tuple[keras.Model, dict] | None:
    state_path, model_path = ckpt_dir / CHECKPOINT_STATE_FILE, ckpt_dir / CHECKPOINT_MODEL_FILE
    if not (state_path.is_file() and model_path.is_file()):
        return None
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError:
        return None
    if state.get("fingerprint") != fingerprint or state.get("completed"):
        return None
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as exc:  # a corrupt checkpoint is reported and ignored, never half-used
        print(f"ignoring unreadable checkpoint {model_path}: {exc}", file=sys.stderr)
        return None
    return model, state


@dataclass
class _Data:
    """What training reads: the preprocessed manifest, the target's standardisation and the
    datasets (``recal`` holds un-augmented training batches for precise BatchNorm)."""

    manifest: pd.DataFrame
    target_mean: float
    target_sd: float
    train_from: Callable[[int], tf.data.Dataset]  # the training stream from its n-th batch
    val: tf.data.Dataset
    steps_per_epoch: int
    recal: tf.data.Dataset | None
    recal_batches: int

    @property
    def n_train(self) -> int:
        return int((self.manifest["split"] == "train").sum())


def _load_data(params: Params, data_dir: Path) -> _Data:
    manifest = read_manifest(data_dir)
    mean, sd = target_stats(manifest)
    size, tcfg = params.preprocess.image_size, params.train
    n_train, n_val = (int((manifest["split"] == s).sum()) for s in ("train", "val"))
    standardise = {"target_mean": mean, "target_sd": sd}
    train_from = functools.partial(
        make_dataset,
        data_dir,
        "train",
        size,
        tcfg.batch_size,
        **standardise,
        training=True,
        augment=tcfg.augment,
        shuffle_buffer=tcfg.shuffle_buffer,
        seed=params.seed,
        examples=n_train,
        cache=tcfg.cache_images,
    )
    val_ds = make_dataset(data_dir, "val", size, tcfg.batch_size, **standardise, examples=n_val)
    recal, recal_batches = None, 0
    if tcfg.bn_recalibration_images:
        recal_images = min(tcfg.bn_recalibration_images, n_train)
        recal_batch = min(tcfg.bn_recalibration_batch_size or recal_images, recal_images)
        recal_batches = -(-recal_images // recal_batch)
        recal = make_dataset(
            data_dir,
            "train",
            size,
            recal_batch,
            **standardise,
            training=True,
            augment=None,
            seed=params.seed + 1,
            shuffle_buffer=tcfg.shuffle_buffer,
        )
    steps = tcfg.steps_per_epoch or max(1, -(-n_train // tcfg.batch_size))
    return _Data(manifest, mean, sd, lambda batch: train_from(start_batch=batch), val_ds, steps, recal, recal_batches)


def _start_or_resume(
    params: Params, data: _Data, ckpt_dir: Path, fingerprint: str
) -> tuple[BoneAgeModel, dict | None, str | None]:
    """The model to train: from the checkpoint when one matches this recipe and data (with its
    state and MLflow run id), else freshly built in an emptied checkpoint folder."""
    resumed = _load_checkpoint(ckpt_dir, fingerprint)
    if resumed:
        train_model, state = resumed
        run_file = ckpt_dir / RUN_FILE
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.exists() else None
        print(f"resuming from the checkpoint after epoch {state['epoch']} ({state['phase']})", file=sys.stderr)
        return from_train_model(train_model, data.target_mean, data.target_sd), state, run_id
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    return build_model(params.model, params.preprocess.image_size, data.target_mean, data.target_sd), None, None


def _log_run_start(params: Params, data: _Data, data_dir: Path, model: BoneAgeModel) -> None:
    import mlflow

    manifest = data.manifest
    mlflow.log_params(tracking.flatten(params.model_dump(mode="json")))
    mlflow.log_params(
        {
            "data.n_train": data.n_train,
            "data.n_val": int((manifest["split"] == "val").sum()),
            "data.n_test": int((manifest["split"] == "test").sum()),
            "target.mean_months": round(data.target_mean, 4),
            "target.sd_months": round(data.target_sd, 4),
            "model.parameters": model.train.count_params(),
        }
    )
    mlflow.set_tags(
        {
            **tracking.image_lineage(),
            "git.commit": tracking.git_commit(),
            **tracking.data_lineage(data_dir),
            "boneage.preset": params.preset,
        }
    )
    # The manifests as MLflow datasets: the run page's Datasets panel names what trained and judged it.
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        rows = manifest[manifest["split"] == split]
        if len(rows):
            with warnings.catch_warnings():  # MLflow's hint about integer columns: these have no missing values
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(
                    rows, source=str(Path(data_dir).resolve() / MANIFEST_FILE), name=f"{split} films"
                )
                mlflow.log_input(dataset, context=context)  # the schema is inferred here, lazily


def model_provenance(params: Params, data_dir: Path, recipe_fingerprint: str) -> dict:
    """What the model learned from: the dataset card's kind, fingerprint, source and films, and the
    resolution and recipe. "unknown" where the data carries no card (preprocessed before cards)."""
    card = read_dataset_card(data_dir)
    return {
        "dataset_kind": card.get("kind", "unknown"),
        "dataset_fingerprint": card.get("fingerprint", "unknown"),
        "dataset_source": card.get("source", "unknown"),
        "films": card.get("films", {}),
        "image_size": params.preprocess.image_size,
        "crop": params.preprocess.crop,
        "backbone": params.model.backbone,
        "backbone_weights": weights_origin(params.model),
        "backbone_image_size": params.model.image_size or params.preprocess.image_size,
        "seed": params.seed,
        "preset": params.preset,
        "recipe_fingerprint": recipe_fingerprint,
        "boneage_version": packaging.boneage_version(),
        "git_commit": tracking.git_commit(),
    }


def _phases(params: Params) -> list[tuple[str, int, int, bool, float]]:
    """(name, first epoch, end epoch, backbone trainable, peak learning rate) per phase."""
    tcfg = params.train
    if params.model.weights.lower() == "none":
        # From random weights a frozen backbone is noise: nothing to warm up around.
        return [("finetune", 0, tcfg.epochs, True, tcfg.learning_rate)]
    warmup = min(tcfg.warmup_epochs, tcfg.epochs)
    return [
        ("warmup", 0, warmup, False, tcfg.learning_rate),
        ("finetune", warmup, tcfg.epochs, True, tcfg.fine_tune_learning_rate),
    ]


def _callbacks(params: Params, data: _Data, phase: str, lr: float, plan: _Plan, epoch_end: _EpochEnd, budget: _Budget | None):
    """In order: precise BN (before validation), the cosine rate, the budget (which decides where the
    phase ends before the checkpoint records it), the epoch's record, the plateau and early stopping."""
    tcfg = params.train
    callbacks: list[keras.callbacks.Callback] = []
    if data.recal:
        callbacks.append(_PreciseBatchNorm(data.recal, data.recal_batches, data.steps_per_epoch))
    if tcfg.lr_schedule == "cosine":
        callbacks.append(_CosineByStep(lr, tcfg.min_learning_rate, plan))
    callbacks += [*([budget] if budget else []), epoch_end]
    if tcfg.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_mae_months",
                mode="min",
                factor=tcfg.reduce_lr_factor,
                patience=tcfg.reduce_lr_patience,
                min_delta=tcfg.min_improvement_months,
                min_lr=tcfg.min_learning_rate,
            )
        )
    if phase == "finetune":
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_mae_months",
                mode="min",
                patience=tcfg.early_stopping_patience,
                min_delta=tcfg.min_improvement_months,
                restore_best_weights=True,
            )
        )
    return callbacks


def _fit(params: Params, data: _Data, model: BoneAgeModel, ckpt_dir: Path, fingerprint: str, resumed_state: dict | None) -> str:
    """Run the phases from where the checkpoint left off, until done, early-stopped, at the end the
    budget planned or out of time. Returns the precision it trained in."""
    tcfg = params.train
    start_epoch = int(resumed_state["epoch"]) if resumed_state else 0
    started = time.monotonic()
    deadline = started + tcfg.max_minutes * 60 if tcfg.max_minutes else None
    verbose = 1 if sys.stderr.isatty() else 2
    phases = _phases(params)
    with training_precision(tcfg.mixed_precision) as precision:
        import mlflow

        mlflow.set_tag("boneage.training_precision", precision)
        for phase, first, last, backbone_trainable, lr in phases:
            if last <= max(first, start_epoch):
                continue
            continuing = resumed_state is not None and start_epoch > first and resumed_state["phase"] == phase
            if not continuing:
                model.backbone.trainable = backbone_trainable
                compile_model(model.train, params, lr, data.target_sd)
            plan = _resumed_plan(_Plan(first, last, data.steps_per_epoch), resumed_state if continuing else None)
            budget = _Budget(plan, tcfg.budget_minutes * 60, started) if tcfg.budget_minutes and phase == phases[-1][0] else None
            epoch_end = _EpochEnd(ckpt_dir, fingerprint, phase, deadline, plan, started)
            # A phase reads the training stream from its start; a resumed one from where it stopped.
            model.train.fit(
                data.train_from((max(first, start_epoch) - first) * data.steps_per_epoch),
                validation_data=data.val,
                epochs=plan.end,
                initial_epoch=max(first, start_epoch),
                steps_per_epoch=data.steps_per_epoch,
                callbacks=_callbacks(params, data, phase, lr, plan, epoch_end, budget),
                verbose=verbose,
                shuffle=False,
            )
            if model.train.stop_training:
                break
    return precision


def _resumed_plan(plan: _Plan, state: dict | None) -> _Plan:
    """The phase's plan, with what a resumed checkpoint recorded: the end the budget planned and
    the seconds already trained."""
    if state:
        plan.seconds_before = float(state.get("seconds_trained") or 0.0)
        if state.get("planned_end"):
            plan.end, plan.planned = int(state["planned_end"]), True
    return plan


def _calibrate_and_save(
    params: Params, data: _Data, model: BoneAgeModel, data_dir: Path, out_dir: Path, provenance: dict
) -> BoneAgeModel:
    """Fit the bias correction and the conformal interval on the validation residuals and the
    out-of-distribution check on the training films, then write the model that reports months,
    its predictor.json and its check."""
    import mlflow

    tcfg = params.train
    size, image_side = params.preprocess.image_size, tcfg.ood.image_side if tcfg.ood.enabled else None
    val_pred, val_data = _validation_predictions(model, data_dir, data.manifest, size, tcfg.batch_size, image_side)
    interval = calibrate_interval(val_pred["predicted"], val_pred["boneage"], tcfg, params.data.age_bands_years)
    offset = interval.offset_months
    mlflow.log_metric("interval_halfwidth_months", interval.halfwidth_months)
    mlflow.log_metrics({f"interval_halfwidth_months_band{i}": w for i, w in enumerate(interval.band_halfwidths_months)})
    PredictorConfig.of(params, interval, provenance).write(out_dir / PREDICTOR_FILE)
    fit_for_model(model.predict, data_dir, out_dir, params, val_data)
    if offset:
        model = from_train_model(model.train, data.target_mean, data.target_sd, offset)
        mlflow.log_metric("val_bias_correction_months", offset)
        print(f"bias correction from the validation split: {offset:+.2f} months", file=sys.stderr)
    save_model_atomic(model.predict, out_dir / MODEL_FILE)
    write_json_atomic(
        out_dir / TARGET_FILE, {"mean_months": data.target_mean, "sd_months": data.target_sd, "offset_months": offset}
    )
    return model


def train(
    params: Params, data_dir: Path, out_dir: Path, run_name: str | None = None, run_tags: dict[str, str] | None = None
) -> TrainResult:
    """Train on ``data_dir`` (preprocess's output) into ``out_dir``, resuming a matching checkpoint.
    ``run_name`` and ``run_tags`` name and tag the MLflow run (an ensemble member's)."""
    import mlflow

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    keras.utils.set_random_seed(params.seed)  # before the model is built: its first weights draw from it
    data = _load_data(params, data_dir)
    experiment_id = tracking.connect(params)  # fails fast, before any training, if MLflow is down
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    fingerprint = _config_fingerprint(params, data_dir)
    # The precision's dtype policy is read when the layers are built (float16), its graph option
    # when the train step first runs (bfloat16): set for both, restored after each.
    with _strategy().scope(), training_precision(params.train.mixed_precision):
        model, resumed_state, run_id = _start_or_resume(params, data, ckpt_dir, fingerprint)
    start_epoch = int(resumed_state["epoch"]) if resumed_state else 0
    size = params.preprocess.image_size
    with mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id else run_name or f"{params.model.backbone}-{size}px",
        tags=run_tags,
        log_system_metrics=params.mlflow.log_system_metrics,
    ) as run:
        write_json_atomic(ckpt_dir / RUN_FILE, {"run_id": run.info.run_id})
        if start_epoch == 0:
            _log_run_start(params, data, data_dir, model)
        _fit(params, data, model, ckpt_dir, fingerprint, resumed_state)
        history = pd.read_csv(ckpt_dir / HISTORY_FILE) if (ckpt_dir / HISTORY_FILE).exists() else pd.DataFrame()
        best_val = float(history["val_mae_months"].min()) if "val_mae_months" in history else float("nan")
        provenance = model_provenance(params, data_dir, fingerprint)
        mlflow.set_tags(tracking.flatten(provenance, "provenance."))
        model = _calibrate_and_save(params, data, model, data_dir, out_dir, provenance)
        write_reference(params, data_dir, out_dir)
        shutil.copyfile(ckpt_dir / HISTORY_FILE, out_dir / HISTORY_FILE)
        model_uri = _log_training_artifacts(model, out_dir, size, provenance)
        tracking.write_run_file(out_dir, run.info.run_id, experiment_id, tracking.tracking_uri(params), model_uri)
        state_path = ckpt_dir / CHECKPOINT_STATE_FILE
        write_json_atomic(state_path, {**json.loads(state_path.read_text()), "completed": True})
    return TrainResult(out_dir / MODEL_FILE, run.info.run_id, len(history), best_val, start_epoch)


def _validation_predictions(model: BoneAgeModel, data_dir: Path, manifest: pd.DataFrame, size: int, batch_size: int, image_side):
    """(id, predicted, boneage of every validation film; what the out-of-distribution check needs from
    them, or None without a check)."""
    val = manifest[manifest["split"] == "val"]
    if val.empty:
        return pd.DataFrame(columns=["id", "predicted", "boneage"]), None
    if image_side:
        pred, data = split_fit_data(model.predict, data_dir, "val", size, batch_size, image_side, 1)
    else:
        pred, data = predict_split(model.predict, data_dir, "val", size, batch_size), None
    return pred.merge(val[["id", "boneage"]], on="id", how="left"), data


def _log_training_artifacts(model: BoneAgeModel, out_dir: Path, size: int, provenance: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    history = pd.read_csv(out_dir / HISTORY_FILE)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["epoch"], history["mae_months"], label="train")
    ax.plot(history["epoch"], history["val_mae_months"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (months)")
    ax.set_title("Training curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / TRAINING_CURVE_FILE, dpi=100)
    plt.close(fig)
    mlflow.log_artifact(str(out_dir / TRAINING_CURVE_FILE), "plots")
    mlflow.log_artifact(str(out_dir / HISTORY_FILE), "training")
    return packaging.log_scoring_model(model.predict, out_dir, size, provenance)
