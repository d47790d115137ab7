"""Shared fixtures. Tests may read ../shared/data (the real RSNA sample and labels); the package never does."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from boneage.config import Params

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RSNA_SAMPLE = SHARED_DATA / "rsna-sample"
RSNA_LABELS = SHARED_DATA / "rsna-labels"
FIXTURES = Path(__file__).parent / "fixtures"


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


_durations: dict[str, float] = {}
_outcomes: dict[str, str] = {}
_started = time.time()


def pytest_runtest_logreport(report):
    """Each test's time (setup, call and teardown together) and outcome, for DURATIONS_FILE."""
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def pytest_sessionfinish(session, exitstatus):
    """Write every test's duration (a run of the whole suite or of part of it) where people look."""
    if not _durations:
        return
    DURATIONS_FILE.parent.mkdir(exist_ok=True)
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "markers": session.config.getoption("markexpr") or "",
        "session_seconds": round(time.time() - _started, 1),
        "tests": len(_durations),
        "outcomes": {k: sum(v == k for v in _outcomes.values()) for k in sorted(set(_outcomes.values()))},
        "durations": dict(sorted(((k, round(v, 2)) for k, v in _durations.items()), key=lambda kv: -kv[1])),
    }
    DURATIONS_FILE.write_text(json.dumps(record, indent=1) + "\n")


@pytest.fixture
def params() -> Params:
    return Params()


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


@pytest.fixture(scope="session")
def stack():
    """A real service stack, PostgreSQL + the GCS emulator + an MLflow server with basic auth,
    started by the same code as `make services`, on free ports, in a scratch folder."""
    import os
    import shutil
    import tempfile

    from boneage import services

    # Not under pytest's 0700 tmp folder: as root, PostgreSQL runs as `postgres`, which must reach it.
    root = Path(tempfile.mkdtemp(prefix="boneage-services-"))
    ports = {name: services.free_port() for name in services.DEFAULT_PORTS}
    started = services.start(root, ports, password="test-" + os.urandom(12).hex())
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
