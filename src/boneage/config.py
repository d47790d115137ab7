"""One typed config, loaded from ``params.yaml``, that flows to every step.

Every tunable number lives here (with its default and its bounds) so that no step buries a magic
number. A bad value fails at load time with the offending key named, never deep inside a step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from boneage.contracts import DATASET_KINDS, MAX_AGE_MONTHS, MIN_AGE_MONTHS, is_synthetic_source
from boneage.errors import BoneageError

DEFAULT_PARAMS_PATH = Path("params.yaml")

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Workers = Annotated[int, Field(ge=0, description="0 means one worker per CPU core")]


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them rather than ignore them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    val: Fraction = 0.15
    test: Fraction = 0.15

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:.2f} leaves too little for training")
        return self


class SyntheticConfig(_Strict):
    """The embedded default dataset (see ``boneage.data.synth``)."""

    count: Annotated[int, Field(ge=1)] = 800
    image_size: Annotated[int, Field(ge=64, le=4096)] = 384
    label_noise_sd_months: Annotated[float, Field(ge=0.0)] = 6.0
    workers: Workers = 0


class DataConfig(_Strict):
    # A local Kaggle-layout folder, a .zip of one, or gs://bucket/prefix. The literal "synthetic"
    # means the embedded default dataset, generated on the fly into `synthetic_dir`.
    source: str = "synthetic"
    synthetic_dir: str = "data/synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    split: SplitConfig = SplitConfig()
    # Band edges in years; the last edge closes the last band. RSNA covers 0-19 years.
    age_bands_years: tuple[float, ...] = (0, 2, 6, 10, 14, 19)
    # Labels outside these are quarantined; narrower than the contract's limits, never wider.
    min_age_months: Annotated[float, Field(ge=MIN_AGE_MONTHS, le=MAX_AGE_MONTHS)] = MIN_AGE_MONTHS
    max_age_months: Annotated[float, Field(gt=MIN_AGE_MONTHS, le=MAX_AGE_MONTHS)] = MAX_AGE_MONTHS
    # Larger images are refused as decompression bombs (RSNA films are < 10 Mpx).
    max_image_pixels: Annotated[int, Field(ge=1)] = 60_000_000
    workers: Workers = 0
    # gs:// sources: parallel downloads, and how long one request keeps retrying (429, 5xx,
    # timeouts, dropped connections, with exponential backoff) before ingest gives up.
    download_workers: Annotated[int, Field(ge=1)] = 8
    download_retry_seconds: Annotated[float, Field(gt=0)] = 120.0

    @model_validator(mode="after")
    def _check_bands(self) -> DataConfig:
        edges = self.age_bands_years
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"age_bands_years must be increasing with at least 2 edges, got {edges}")
        if self.max_age_months <= self.min_age_months:
            raise ValueError("max_age_months must be greater than min_age_months")
        return self


class PreprocessConfig(_Strict):
    image_size: Annotated[int, Field(ge=75, le=1024)] = 299  # 75 px is InceptionV3's minimum
    # "locator": the learned hand locator (boneage.data.handlocator) finds the hand and the crop takes it.
    # "hand": the rules on thresholds find it. "none": the seed recipe's whole-image squash.
    # "hand-v1": the first rules, kept only to measure what the later crops buy.
    crop: Literal["locator", "hand", "hand-v1", "none"] = "locator"
    # Around the hand's box, on each side: this fraction of the box's longer side.
    crop_margin: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    # crop "locator": a packaged locator's name (src/boneage/resources/NAME.npz) or an .npz path.
    locator: str = "hand-locator-v1"
    # crop "locator": look again at the first box plus this share of its longer side around it
    # (boneage.data.handlocator.film_box); None: one look, as models prepared before it had.
    locator_second_look: Annotated[float, Field(ge=0.0, le=0.5)] | None = None
    # Side of the thumbnail on which the hand is located; the crop is then taken at full resolution.
    detect_size: Annotated[int, Field(ge=64, le=2048)] = 384
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    clahe_clip_limit: Annotated[float, Field(ge=0.0)] = 2.0
    clahe_tile_grid: Annotated[int, Field(ge=1, le=64)] = 8
    shard_size: Annotated[int, Field(ge=1)] = 256
    contact_sheet_count: Annotated[int, Field(ge=0)] = 40
    workers: Workers = 0

    @model_validator(mode="after")
    def _check_window(self) -> PreprocessConfig:
        lo, hi = self.window_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"window_percentiles must satisfy 0 <= low < high <= 100, got {lo, hi}")
        return self


# small_cnn: a few conv blocks, no pretrained weights; for quick checks and tests, not for real use.
Backbone = Literal["inception_v3", "resnet50", "efficientnet_b0", "efficientnet_b3", "mobilenet_v3_small", "small_cnn"]


class ModelConfig(_Strict):
    backbone: Backbone = "inception_v3"
    # The side the backbone sees; None: the prepared image's (preprocess.image_size). A smaller or
    # larger side is resized inside the model, so that ensemble members of several resolutions share
    # one preprocessed dataset and one scoring path.
    image_size: Annotated[int, Field(ge=32, le=1024)] | None = None
    # "imagenet" (the default for real training), "none" (random initialisation), or a path to
    # a Keras weights file for the backbone without its top. Never falls back from one to another.
    weights: str = "imagenet"
    use_sex: bool = True
    sex_units: Annotated[int, Field(ge=1)] = 16
    # "avg": global average pooling. "flatten": the seed recipe's Flatten.
    pooling: Literal["avg", "flatten"] = "avg"
    head_units: tuple[Annotated[int, Field(ge=1)], ...] = (256,)
    head_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    # Keras' 0.99 diverges in inference mode on short runs from random weights; 0.9 settles quickly.
    batchnorm_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9


class AugmentConfig(_Strict):
    enabled: bool = True
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 15.0
    scale: Annotated[float, Field(ge=0, lt=1)] = 0.1
    shift: Annotated[float, Field(ge=0, lt=1)] = 0.05
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.1
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.15


class OodConfig(_Strict):
    """The out-of-distribution check each model carries (boneage.model.ood), fitted after training."""

    enabled: bool = True
    # Refuse inputs farther from the training films than this quantile of the validation films'
    # scores (split between the check's scores): about 1 - quantile of films like them are refused.
    quantile: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.995
    # The image signature: thumbnails of this side of the prepared image and of its gradients.
    image_side: Annotated[int, Field(ge=2, le=64)] = 16
    # Features whose training SD is below this fraction of the median SD are scaled by that floor.
    sd_floor_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    # The orientation classifier (logistic regression): inverse L2 strength, and its iterations.
    orientation_regularisation: Annotated[float, Field(gt=0.0)] = 0.1
    orientation_max_iterations: Annotated[int, Field(ge=10)] = 300


class TrainConfig(_Strict):
    batch_size: Annotated[int, Field(ge=1)] = 32
    epochs: Annotated[int, Field(ge=1)] = 30
    # Epochs with the backbone frozen before fine-tuning the whole network.
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    fine_tune_learning_rate: Annotated[float, Field(gt=0)] = 1e-4
    loss: Literal["mae", "huber", "mse"] = "huber"
    huber_delta: Annotated[float, Field(gt=0)] = 1.0  # in standardised target units
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = None  # None: one pass over the training split
    # "plateau": ReduceLROnPlateau on the validation MAE (long runs). "cosine": decay each step to
    # min_learning_rate by the last epoch (short fixed budgets, where plateaus are never detected
    # in time: on the CPU demo it ends on a low rate instead of a noisy one).
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    reduce_lr_patience: Annotated[int, Field(ge=1)] = 2
    reduce_lr_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    min_learning_rate: Annotated[float, Field(gt=0)] = 1e-6
    early_stopping_patience: Annotated[int, Field(ge=1)] = 5
    # What counts as an improvement of the validation MAE for plateau decay and early stopping: a
    # fall of more than this many months (0: any fall).
    min_improvement_months: Annotated[float, Field(ge=0)] = 0.0
    # Without cache_images, each pass takes the shards in a shuffled order and shuffles their
    # records in windows of this many; with it, at least this many (the whole split) at once.
    shuffle_buffer: Annotated[int, Field(ge=1)] = 2048
    # Before each validation, re-estimate BatchNorm statistics on this many un-augmented training
    # images ("precise BN"; 0 disables). From random weights the moving averages lag the
    # fast-changing weights and inference-mode error explodes: on the demo data it cut validation
    # MAE from 30.8 to 16.6 months for the same weights.
    bn_recalibration_images: Annotated[int, Field(ge=0)] = 256
    # Images per forward pass of that re-estimate; the passes' statistics are pooled (0: all in one
    # pass). Each pass normalises the earlier layers by its own statistics, so small passes drift
    # from what inference sees: on the demo, 4 passes of 32 gave test MAE 15.4 months where one pass
    # of 128 gave 13.5. One pass costs memory, though: 128 images at 299 px took 16.5 GB of RAM.
    bn_recalibration_batch_size: Annotated[int, Field(ge=0)] = 32
    augment: AugmentConfig = AugmentConfig()
    # After training, shift predictions by the median validation residual (months). A short run
    # often ends with a systematic offset (demo: +3.4 months on validation, +6.3 on test); the
    # validation split measures it without touching the test split.
    correct_bias_on_val: bool = True
    # Below this many validation images the median residual is mostly noise: no correction.
    bias_correction_min_images: Annotated[int, Field(ge=1)] = 50
    # The nominal coverage of the prediction interval, calibrated on the validation split
    # (split conformal: the interval covers a new case's true age with at least this probability).
    interval_level: Annotated[float, Field(gt=0, lt=1)] = 0.9
    # One interval width per band of *predicted* age (data.age_bands_years), each calibrated on the
    # validation films predicted in that band (Mondrian conformal): wider where the model is weaker.
    # A band with fewer validation films than interval_min_band_films takes the pooled width.
    interval_by_band: bool = True
    interval_min_band_films: Annotated[int, Field(ge=1)] = 100
    ood: OodConfig = OodConfig()
    # Hold the training split's decoded images in memory (images x side^2 bytes: 81 MB for 8,832
    # films at 96 px) and shuffle all of them each pass, instead of decoding PNGs every epoch
    # through a shuffle buffer.
    cache_images: bool = True
    # The arithmetic of training (boneage.training.precision). "auto": mixed float16 on a GPU, bfloat16
    # matrix products on a CPU that does bfloat16 natively (AVX512-BF16, AMX), else float32.
    # "on": the same, but an error where only float32 is fast. "off": float32. Restored after training.
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    # XLA-compile the training step. Off by default: on this 2-core CPU a whole demo epoch took as
    # long with it as without (71 s vs 2x42 s for half the steps) and compiling cost ~100 s more.
    jit_compile: bool = False
    # Fit the training to this many minutes: after the second epoch of the (last) phase, plan how
    # many more epochs fit in what is left at the pace measured, at most `epochs`, and end the cosine
    # decay with them. The same recipe thus uses an hour fully on a fast CPU and a slow one (each
    # run records its plan). None: train `epochs` as written.
    budget_minutes: Annotated[float, Field(gt=0)] | None = None
    # Stop the run (between epochs) after this many minutes; None: no limit. A hard stop, where
    # budget_minutes is a plan.
    max_minutes: Annotated[float, Field(gt=0)] | None = None


# What may differ between members: they share one preprocessed dataset and one run's tracking.
MEMBER_OVERRIDABLE = ("model.", "train.")


class EnsembleMember(_Strict):
    """One member of the ensemble: the recipe of record with its own seed and any ``model.*`` or
    ``train.*`` keys overridden (dotted keys: ``model.backbone``, ``model.image_size``, ``train.epochs``)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
    seed: int | None = None  # None: params.yaml's seed
    overrides: dict[str, object] = {}

    @model_validator(mode="after")
    def _recipe_keys_only(self) -> EnsembleMember:
        # The members share one preprocessed dataset, and the data and tracking settings are the run's.
        wrong = [k for k in self.overrides if not k.startswith(MEMBER_OVERRIDABLE)]
        if wrong:
            raise ValueError(f"member {self.name}: only {'/'.join(MEMBER_OVERRIDABLE)} keys may differ, not {wrong}")
        return self


class TtaConfig(_Strict):
    """Test-time augmentation: each member also scores the image turned by each of ``rotations_deg``
    and scaled by each of ``scales`` (about its centre), and the views are averaged. No flips: a
    left hand mirrored is a right hand, which the films never show."""

    enabled: bool = False
    rotations_deg: tuple[Annotated[float, Field(ge=-30, le=30)], ...] = (-5.0, 5.0)
    scales: tuple[Annotated[float, Field(ge=0.8, le=1.25)], ...] = (0.95, 1.05)


class EnsembleConfig(_Strict):
    """Several models trained from the recipe and combined into one (boneage.training.ensemble)."""

    members: tuple[EnsembleMember, ...] = ()
    # "mean": the members' plain average. "weighted": non-negative weights summing to 1, fitted by
    # least squares on `weight_fit_fraction` of the validation films; the rest calibrate the bias
    # correction and the interval, so that those are fitted on residuals nothing else used.
    combine: Literal["mean", "weighted"] = "mean"
    weight_fit_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    # Fewer members than this finished: the ensemble step fails, naming each missing member's reason.
    min_members: Annotated[int, Field(ge=1)] = 2
    # Tries of a member's training (each resumes from its checkpoint) before it is recorded as failed.
    member_attempts: Annotated[int, Field(ge=1)] = 2
    tta: TtaConfig = TtaConfig()

    @model_validator(mode="after")
    def _check_members(self) -> EnsembleConfig:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if self.members and self.min_members > len(self.members):
            raise ValueError(f"min_members {self.min_members} is more than the {len(self.members)} members")
        return self


class MlflowConfig(_Strict):
    # MLFLOW_TRACKING_URI in the environment wins over this.
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "boneage"
    # Models trained on real films register here (predict's default: models:/boneage@champion);
    # models trained on the synthetic dataset under their own name, so never as a clinical model.
    registered_model: str = "boneage"
    synthetic_registered_model: str = "boneage-synthetic"
    log_system_metrics: bool = True
    # Seconds to wait for an MLflow server's answer before calling it down (checked before training).
    probe_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    # When the server is down or refuses us: fail (default), or log to local_fallback_uri and say so.
    fallback_to_local: bool = False
    local_fallback_uri: str = "sqlite:///mlruns/mlflow.db"


# Named, complete recipes (src/boneage/presets/NAME.yaml): each sets every preprocess, model and
# train key, so a recipe never inherits anything from another one. params.yaml names one and may
# override single keys of it (dvc exp run -S train.epochs=20); the code defaults below are only
# the types' fallbacks and are never what a run trains with.
PRESETS_DIR = Path(__file__).parent / "presets"
Preset = Literal["demo", "seed", "rsna-cpu", "rsna-gpu"]
RECIPE_SECTIONS = ("preprocess", "model", "train")


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise BoneageError(f"preset {name!r} not found (known presets: {known})")
    return yaml.safe_load(path.read_text()) or {}


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = "NoSchedule"


class SecretEnv(_Strict):
    """A Kubernetes secret whose keys become environment variables of the steps that need them."""

    name: str
    keys_to_env: dict[str, str]


class StepResources(_Strict):
    cpu: str
    memory: str


class KfpConfig(_Strict):
    """How the Kubeflow pipeline is built: the image, the GPU node pool and the secrets.
    The run-time choices (data, image size, epochs, backbone, GPUs, MLflow) are pipeline parameters."""

    # The images the components run in; `make push` pushes these very names. Only training (the
    # step with the GPU) runs the GPU image; every other step runs the CPU image.
    image: str = "ghcr.io/boneage/boneage-gpu:0.1.0"
    cpu_image: str = "ghcr.io/boneage/boneage-cpu:0.1.0"
    pipeline_name: str = "boneage"
    gpu_type: str = "nvidia.com/gpu"
    gpu_count: Annotated[int, Field(ge=0)] = 1
    # GKE labels its GPU nodes with the accelerator model; other clusters use their own label.
    gpu_node_selector: dict[str, str] = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu"),)
    train_cpu: str = "8"
    train_memory: str = "32G"
    # Requests of the CPU steps, from what they used in the project's image on the demo
    # (benchmarks/bench_containers.py, results.json "containers": peak memory of the step and its
    # largest worker, CPU seconds per second): ingest 143 MB and 1.1, preprocess 690 MB and 1.3,
    # evaluate 830 MB and 0.7, register 166 MB and 0.2; about twice the memory as headroom for
    # larger datasets and images (evaluate at 299 px was not measured in a container).
    step_resources: dict[str, StepResources] = {
        "ingest": StepResources(cpu="1", memory="512M"),
        "preprocess": StepResources(cpu="2", memory="2G"),
        "evaluate": StepResources(cpu="1", memory="2G"),
        "register": StepResources(cpu="250m", memory="512M"),
        "ensemble": StepResources(cpu="2", memory="4G"),
    }
    # Steps that talk to GCS or MLflow over the network are retried; training resumes from its checkpoint.
    retries: Annotated[int, Field(ge=0)] = 3
    retry_backoff: str = "60s"
    cache_training: bool = True
    mlflow_secret: SecretEnv | None = SecretEnv(
        name="mlflow-credentials", keys_to_env={"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
    )
    # A service-account key mounted for google-cloud-storage; None on clusters with Workload Identity.
    gcs_secret: str | None = "gcs-credentials"


class KserveConfig(_Strict):
    """The InferenceService `boneage serve manifest` writes for a registered version (KServe's
    custom-predictor form: the serving image runs boneage.serve.kserve_model, KServe's storage
    initializer copies the version's files from storageUri to /mnt/models)."""

    name: Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")] = "boneage"
    namespace: str | None = None  # None: the namespace kubectl applies it in
    image: str = "ghcr.io/boneage/boneage-serve:0.1.0"  # `make image-serve`
    # The MLflow server's artifact destination (its --artifacts-destination): where a version whose
    # source is mlflow-artifacts:/... lives in the bucket. A gs:// source is used as it is.
    artifact_destination: str = "gs://boneage-mlflow/artifacts"
    # A Kubernetes service account with read access to the bucket (KServe's storage initializer
    # uses its credentials) and write access to the records sink.
    service_account: str | None = "boneage-serving"
    # Requests and limits of one replica. One replica scores on 2 cores; its resident memory while
    # answering is in benchmarks/results.json "serving".
    cpu: str = "2"
    memory: str = "3Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 4
    # Knative scales on in-flight requests per replica; one replica uses its 2 cores on one request.
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    scale_target: Annotated[int, Field(ge=1)] = 2
    # The share of traffic a challenger gets when its manifest is applied over the champion's.
    canary_traffic_percent: Annotated[int, Field(ge=1, le=99)] = 10
    # Where every replica writes its records for `boneage monitor` (None: no records).
    records: str | None = "gs://boneage-monitoring/records"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class MonitorConfig(_Strict):
    """How `boneage monitor` judges a window of records against the model's reference (see
    boneage.serve.monitor)."""

    # Family-wise false-alarm level of one window: split over its tests (Bonferroni).
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.001
    # A distribution moved only when it also shifted by this much (Wasserstein distance in the
    # reference's standard deviations).
    min_shift_sd: Annotated[float, Field(gt=0.0)] = 0.25
    # A window with fewer films is reported as not judged (exit status 4).
    min_films: Annotated[int, Field(ge=10)] = 100


class BatchConfig(_Strict):
    """The batch-scoring pipeline (`boneage pipeline compile --batch`): a worklist cut into shards,
    each scored by its own step on a CPU node."""

    shard_films: Annotated[int, Field(ge=1)] = 2000
    max_shards: Annotated[int, Field(ge=1)] = 64
    shard_cpu: str = "2"
    shard_memory: str = "4G"
    # Scoring workers inside one shard's step (threads reading and preparing films).
    shard_workers: Annotated[int, Field(ge=1)] = 2
    pipeline_name: str = "boneage-batch"


class Params(_Strict):
    seed: int = 42
    # The recipe: a preset's preprocess/model/train keys, under any that params.yaml sets itself.
    preset: Preset | None = None
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    mlflow: MlflowConfig = MlflowConfig()
    kfp: KfpConfig = KfpConfig()
    kserve: KserveConfig = KserveConfig()
    monitor: MonitorConfig = MonitorConfig()
    batch: BatchConfig = BatchConfig()

    @model_validator(mode="after")
    def _members_are_valid_recipes(self) -> Params:
        for member in self.ensemble.members:  # a bad override fails at load time, naming the member
            self.member_params(member)
        return self

    def member_params(self, member: EnsembleMember) -> Params:
        """The params one ensemble member trains with: this recipe, the member's seed and overrides.
        Its own out-of-distribution check is skipped: the ensemble fits one for all members."""
        raw = self.model_dump(mode="json")
        raw["seed"] = self.seed if member.seed is None else member.seed
        raw["ensemble"]["members"] = []  # a member is one model
        raw = set_dotted(raw, {**member.overrides, "train.ood.enabled": False})
        try:
            return Params.model_validate(raw)
        except ValidationError as exc:
            raise BoneageError(_format_validation_error(Path(f"ensemble member {member.name}"), exc)) from None

    def trains_on_synthetic_data(self) -> bool:
        return is_synthetic_source(self.data.source, self.data.synthetic_dir)

    def registered_model_name(self, dataset_kind: str | None = None) -> str:
        """The registry name for a model: by the dataset kind its provenance records, or, for a
        model that records none, by what data.source names."""
        synthetic = dataset_kind == "synthetic" if dataset_kind in DATASET_KINDS else self.trains_on_synthetic_data()
        return self.mlflow.synthetic_registered_model if synthetic else self.mlflow.registered_model

    def age_band_edges_months(self) -> list[float]:
        return [y * 12.0 for y in self.data.age_bands_years]


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def apply_preset(raw: dict) -> dict:
    """The named preset's recipe, with the keys that ``raw`` (params.yaml) sets itself on top."""
    name = raw.get("preset")
    if name is None:
        return raw
    if name not in Preset.__args__:
        raise BoneageError(f"preset {name!r} is not one of {', '.join(Preset.__args__)}")
    return _deep_merge(load_preset(name), raw)


def set_dotted(raw: dict, overrides: dict[str, object]) -> dict:
    """Apply ``{"train.epochs": 3, ...}`` overrides (as `dvc exp run -S` does) to a raw params dict."""
    out = _deep_merge(raw, {})
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            node[key] = dict(child) if isinstance(child, dict) else {}
            node = node[key]
        node[leaf] = value
    return out


def parse_params(text: str, overrides: dict[str, object] | None = None, source: str = "params.yaml") -> Params:
    """Validate params given as YAML text (how pipeline steps receive them), with dotted overrides."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BoneageError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BoneageError(f"{source}: expected a mapping at the top level")
    try:
        return Params.model_validate(apply_preset(set_dotted(raw, overrides or {})))
    except ValidationError as exc:
        raise BoneageError(_format_validation_error(Path(source), exc)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_PATH, overrides: dict[str, object] | None = None) -> Params:
    """Load and validate ``params.yaml``; a missing file is an error that says where to run from."""
    path = Path(path)
    if not path.exists():
        raise BoneageError(f"{path}: params file not found (run from the project root or pass --params)")
    return parse_params(path.read_text(), overrides, source=str(path))
