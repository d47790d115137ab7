"""What every test folder shares: the repository's paths and the real data beside it, the one small
recipe the tests train with, one trained model for the tests that only read it, the service stack,
the image factories, and the per-test durations each run leaves in reports/test-durations.json.
Tests may read ../shared/data (the real RSNA films); the package never does."""

from __future__ import annotations

import csv
import json
import os
import platform
import struct
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from boneage.config import Params
from boneage.errors import BoneageError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the project's environment: boneage, dvc, mlflow
SHARED_DATA = REPO.parent / "shared" / "data"
RSNA_SAMPLE = SHARED_DATA / "rsna-sample"
RSNA_LABELS = SHARED_DATA / "rsna-labels"
FIXTURES = Path(__file__).parent / "fixtures"
# The serving environment (make serve-env): KServe's server and SDK live there, not in .venv.
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"


# CI sets this: a shared file that is missing fails its test instead of skipping it, so that a
# regression cannot hide behind a skip.
REQUIRE_SHARED_DATA = os.environ.get("BONEAGE_REQUIRE_SHARED_DATA") == "1"
DURATIONS_FILE = REPO / "reports" / "test-durations.json"


def require(path: Path) -> Path:
    if not path.exists():
        message = f"{path} not present (the real RSNA sample lives in ../shared/data)"
        if REQUIRE_SHARED_DATA:
            pytest.fail(f"{message}; BONEAGE_REQUIRE_SHARED_DATA=1 forbids skipping")
        pytest.skip(message)
    return path


# Each module's seconds in the last fresh-clone run that benchmarks/timings.py timed (kept in the
# repository): the estimate for a module that the last run here did not time (a fresh clone has no
# reports/test-durations.json).
TIMINGS_FILE = REPO / "benchmarks" / "results.json"
# The modules that take minutes, in seconds of a whole run on 2 workers (2026-12-01): the estimate of
# last resort, where TIMINGS_FILE has no per-module record either.
LONGEST_MODULES = {
    "tests/test_pipelines.py": 323.0,  # the scratch project's `dvc repro`, kfp.local, the batch pipeline
    "tests/model/test_training.py": 190.0,
    "tests/test_real_data_dvc.py": 108.0,
    "tests/model/test_gpu_recipe.py": 91.0,
    "tests/serve/test_monitor.py": 84.0,
}


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _timed_module_seconds() -> dict[str, float]:
    """{module: seconds} of the last fresh-clone run in TIMINGS_FILE, or nothing."""
    try:
        modules = json.loads(TIMINGS_FILE.read_text())["timings"]["tests"]["modules"]
        return {module: float(timed["durations"]) for module, timed in modules.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _module_seconds() -> dict[str, float]:
    """Each module's seconds in the last run here (DURATIONS_FILE) where it ran, else in the last
    fresh-clone run timed (TIMINGS_FILE), else LONGEST_MODULES'."""
    try:
        durations = json.loads(DURATIONS_FILE.read_text())["durations"]
    except (OSError, ValueError, KeyError):
        durations = {}
    seconds: dict[str, float] = {}
    for nodeid, duration in durations.items():
        seconds[_module(nodeid)] = seconds.get(_module(nodeid), 0.0) + duration
    return {**LONGEST_MODULES, **_timed_module_seconds(), **seconds}


def pytest_configure(config):
    """Under pytest-xdist each worker (and every process it starts: `dvc repro`'s stages, servers)
    gets its share of the cores for TensorFlow's thread pools, instead of every worker's pools
    spinning on all of them at once."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        share = str(max(1, (os.cpu_count() or 1) // int(workers)))
        from boneage.contracts import THREAD_VARIABLES

        for variable in THREAD_VARIABLES:
            os.environ.setdefault(variable, share)


def pytest_collection_modifyitems(config, items):
    """Longest modules first. The workers (make test: pytest-xdist, a module to a worker) take the
    modules in this order, so that neither is left alone with a long one at the end; the order
    within a module is kept. Every worker reads the same file at collection, so all agree."""
    seconds = _module_seconds()
    items.sort(key=lambda item: -seconds.get(_module(item.nodeid), 0.0))  # stable: keeps each module's order


_durations: dict[str, float] = {}
_cpu: dict[str, float] = {}
_outcomes: dict[str, str] = {}
_started = time.time()
_phase_cpu_started = 0.0


def _cpu_seconds() -> float:
    """CPU seconds of this process and of the processes it started and waited for (`dvc repro`'s
    stages, the CLIs); not of servers still running, nor of containers."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_runtest_logstart(nodeid, location):
    global _phase_cpu_started
    _phase_cpu_started = _cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report carries the CPU seconds spent since the last phase's report, or since the
    test started (user_properties travel from a pytest-xdist worker to the controller)."""
    global _phase_cpu_started
    outcome = yield
    now = _cpu_seconds()
    outcome.get_result().user_properties.append(("cpu_seconds", now - _phase_cpu_started))
    _phase_cpu_started = now


def pytest_runtest_logreport(report):
    """Each test's time and CPU time (setup, call and teardown together) and outcome, for DURATIONS_FILE."""
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    _cpu[report.nodeid] = _cpu.get(report.nodeid, 0.0) + dict(report.user_properties).get("cpu_seconds", 0.0)
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def pytest_sessionfinish(session, exitstatus):
    """Write every test's duration (a run of the whole suite or of part of it) where people look.
    Under pytest-xdist the controller writes it, from the reports its workers send."""
    if not _durations or hasattr(session.config, "workerinput"):
        return
    DURATIONS_FILE.parent.mkdir(exist_ok=True)
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "markers": session.config.getoption("markexpr") or "",
        "workers": getattr(session.config.option, "numprocesses", None) or 1,
        "session_seconds": round(time.time() - _started, 1),
        "tests": len(_durations),
        "outcomes": {k: sum(v == k for v in _outcomes.values()) for k in sorted(set(_outcomes.values()))},
        "durations": dict(sorted(((k, round(v, 2)) for k, v in _durations.items()), key=lambda kv: -kv[1])),
        "cpu_seconds": dict(sorted(((k, round(v, 2)) for k, v in _cpu.items()), key=lambda kv: -kv[1])),
    }
    DURATIONS_FILE.write_text(json.dumps(record, indent=1) + "\n")


@pytest.fixture(autouse=True)
def _tracking_store_left_as_found():
    """mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ, where it would
    outrank every later test's own store (tracking.tracking_uri: the user's variable wins), and keeps
    the store in MLflow's process-wide default, where a later test's `models:/` URI would look for
    its model: both are put back as they were before the test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # no process-wide store (this also unsets the variable)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def params() -> Params:
    return Params()


# --- The one small recipe the tests train with --------------------------------------------------
def small_recipe(tmp: Path, **sections) -> Params:
    """The tests' recipe: the demo's in miniature (a small CNN from random weights on 75 px crops
    of synthetic films found by the rules, cosine decay, no augmentation), logging to a SQLite
    MLflow store under ``tmp``. ``sections`` replace or extend its sections (``train={...}``)."""
    raw = {
        "seed": 4,
        "data": {"source": str(tmp / "synth")},
        "preprocess": {"image_size": 75, "workers": 1, "crop": "hand"},
        "model": {"backbone": "small_cnn", "weights": "none", "head_units": [64], "head_dropout": 0.0},
        "train": {
            "batch_size": 32,
            "epochs": 14,
            "learning_rate": 3e-3,
            "lr_schedule": "cosine",
            "early_stopping_patience": 50,
            "bn_recalibration_images": 64,
            "augment": {"enabled": False},
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db",
            "artifact_root": str(tmp / "mlruns" / "art"),
            "log_system_metrics": False,
        },
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return Params.model_validate(raw)


def synthetic_prepared(tmp: Path, params: Params, count: int, seed: int, size: int = 192) -> Path:
    """``count`` synthetic films drawn into tmp/synth, ingested and preprocessed with ``params``;
    the preprocessed folder."""
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.data.synth import write_dataset

    write_dataset(tmp / "synth", count=count, seed=seed, size=size, workers=1)
    result = ingest(params, tmp / "ingest")
    preprocess(params, result.manifest_path, tmp / "pre")
    return tmp / "pre"


@pytest.fixture(scope="session")
def trained_small(tmp_path_factory) -> SimpleNamespace:
    """The small recipe trained once a session on 320 synthetic films, with its check and interval:
    shared by every test that only reads a trained model (they must not change its folder)."""
    import pandas as pd

    from boneage.serve.predict import Predictor, predict_files
    from boneage.training.train import train

    tmp = tmp_path_factory.mktemp("trained-small")
    params = small_recipe(tmp)
    data = synthetic_prepared(tmp, params, count=320, seed=11)
    result = train(params, data, tmp / "models")
    manifest = pd.read_csv(tmp / "ingest" / "manifest.csv", dtype={"id": str})
    predictor = Predictor.load(str(tmp / "models"))
    test_ids = manifest.loc[manifest["split"] == "test", "id"]
    test_films = [tmp / "synth" / "boneage-training-dataset" / f"{i}.png" for i in test_ids]
    scored = predict_files(predictor, test_films, sex="F")
    return SimpleNamespace(
        tmp=tmp,
        params=params,
        data=data,
        models=tmp / "models",
        run_id=result.run_id,
        manifest=manifest,
        predictor=predictor,
        test_films=test_films,
        # The test films the model's out-of-distribution check lets through: what the tests of the
        # scoring mechanics score (the check's own refusals are tested on their own).
        accepted=[Path(r.source) for r in scored if not r.rejected],
        refused_test_films=sum(1 for r in scored if r.rejected),
    )


# --- Image factories ----------------------------------------------------------------------------
def hand_like(h=400, w=300, dtype=np.uint8) -> np.ndarray:
    """A dark film, a bright palm with fingers, a film-edge frame and an 'L' marker."""
    peak = np.iinfo(dtype).max
    img = np.full((h, w), peak // 20, dtype)
    img[int(h * 0.45) : h, int(w * 0.25) : int(w * 0.75)] = peak * 6 // 10  # palm and forearm
    for k in range(4):
        x = int(w * (0.27 + 0.12 * k))
        img[int(h * 0.15) : int(h * 0.5), x : x + int(w * 0.08)] = peak * 6 // 10  # fingers
    img[:6, :] = img[-6:, :] = peak  # film border
    img[:, :6] = img[:, -6:] = peak
    img[30:70, w - 50 : w - 42] = peak  # the 'L' marker, away from the hand
    img[62:70, w - 50 : w - 25] = peak
    return img


def dicom_file(path, pixels: np.ndarray, photometric: str, with_pixels=True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientSex, ds.PatientAge = "F", "010Y"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def good_png() -> bytes:
    img = np.zeros((64, 48), np.uint8)
    img[10:60, 10:38] = 180
    return cv2.imencode(".png", img)[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header announcing 10 gigapixels in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )


def blob_png(path: Path, size=(96, 128), value=200, dtype=np.uint8) -> Path:
    """A dark film with a bright hand-sized blob: enough for ingest and crop plumbing."""
    h, w = size
    img = np.zeros((h, w), dtype=dtype)
    img[h // 5 : h - 2, w // 4 : 3 * w // 4] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def write_kaggle_dataset(root: Path, rows: list[tuple[str, str, str]], images: dict[str, bytes | None] | None = None) -> Path:
    """rows: (id, boneage, male) as raw strings; images: id -> bytes to write instead of a good PNG,
    or None to leave the file out. Ids not in ``images`` get a good PNG."""
    images = images or {}
    img_dir = root / "boneage-training-dataset"
    img_dir.mkdir(parents=True, exist_ok=True)
    with open(root / "boneage-training-dataset.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "boneage", "male"])
        writer.writerows(rows)
    for image_id, _, _ in rows:
        if "/" in image_id or ".." in image_id:
            continue
        if image_id in images:
            if images[image_id] is not None:
                (img_dir / f"{image_id}.png").write_bytes(images[image_id])
        else:
            blob_png(img_dir / f"{image_id}.png")
    return root


STACK_ATTEMPTS = 3


@pytest.fixture(scope="session")
def stack():
    """A real service stack, PostgreSQL + the GCS emulator + an MLflow server with basic auth,
    started by the same code as `make services`, on free ports, in a scratch folder."""
    import os
    import shutil
    import tempfile

    from boneage.orchestrate import services

    # Not under pytest's 0700 tmp folder: as root, PostgreSQL runs as `postgres`, which must reach it.
    root = Path(tempfile.mkdtemp(prefix="boneage-services-"))
    password = "test-" + os.urandom(12).hex()
    for attempt in range(STACK_ATTEMPTS):
        # Ports the system hands out; another process may take one before a server binds it: retry.
        ports = {name: services.free_port() for name in services.DEFAULT_PORTS}
        try:
            started = services.start(root, ports, password=password)
            break
        except BoneageError:
            services.stop(root)
            if attempt == STACK_ATTEMPTS - 1:
                raise
    try:
        yield started
    finally:
        services.stop(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack_env(stack, monkeypatch) -> dict[str, str]:
    """This process talks to the stack, as `eval "$(boneage services env)"` arranges in a shell."""
    env = stack.client_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
