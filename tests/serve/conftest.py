"""Serving a model the way the README says (`make serve`, `make serve-kserve`), on a port the operating
system hands out (retried if another process takes it first), stopped and waited for after the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from boneage.orchestrate.services import free_port
from tests.conftest import BIN, REPO

START_TIMEOUT_S = 180
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Server:
    """How one README serving line is run: its make target, the variables naming the model and the
    port, the targets a test must not rerun (installs), and the URL that answers once it is ready."""

    target: str
    model_var: str
    port_var: str
    installed: tuple[str, ...]
    ready_path: str


MLFLOW_SERVE = Server("serve", "MODEL", "PORT", ("setup",), "/ping")
KSERVE = Server("serve-kserve", "KSERVE_MODEL", "KSERVE_PORT", ("setup", "serve-env"), "/v2/health/ready")


def readme_serve_command(target: str = "serve") -> str:
    """The first `make TARGET` line of the README's code blocks, as written (its comment dropped)."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.split()[:2] == ["make", target])
    return line.split("#", 1)[0].strip()


def _command(server: Server, model: str, extra: dict[str, str]) -> str:
    """The README's line with another model; `-o setup` (and the serving environment's target): the
    environments are installed already, and a test never runs apt-get or pip."""
    words = [w for w in readme_serve_command(server.target).split() if not w.startswith(f"{server.model_var}=")]
    assigned = [f"{k}={v}" for k, v in {server.model_var: model, **extra}.items()]
    skipped = [arg for target in server.installed for arg in ("-o", target)]
    return " ".join([words[0], *skipped, *words[1:], *assigned])


@contextlib.contextmanager
def served(model: str, tracking_uri: str, log: Path, server: Server = MLFLOW_SERVE, **extra: str) -> Iterator[str]:
    """The model behind the README's serving line, from a shell without the project's environment
    on PATH (make puts it there); ``extra`` make variables (RECORDS=...); yields the base URL."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri}
        command = _command(server, model, {**extra, server.port_var: str(port)})
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            if _ready(f"http://127.0.0.1:{port}{server.ready_path}", proc, log):
                yield f"http://127.0.0.1:{port}"
                return
        finally:
            _stop(proc)
    pytest.fail(f"{server.target} never held a port in {PORT_ATTEMPTS} tries:\n{log.read_text()[-3000:]}")


def _ready(url: str, proc: subprocess.Popen, log: Path) -> bool:
    """True once the server answers; False when it lost its port to another process (retry)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "address already in use" in log.read_text().lower():
                return False
            pytest.fail(f"the server exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    pytest.fail(f"the server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def smooth_ramp_png(folder: Path) -> Path:
    """A smooth grey ramp: no edges at all, so it is refused before any model sees it."""
    path = folder / "ramp.png"
    cv2.imwrite(str(path), np.tile(np.linspace(20, 230, 256), (256, 1)).astype(np.uint8))
    return path


def photograph_png(folder: Path) -> Path:
    """A photograph in grey (matplotlib's sample of Grace Hopper): edges enough to pass the edge
    test, so it is the model's out-of-distribution check that refuses it."""
    import matplotlib

    path = folder / "photograph.png"
    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path), photo)
    return path
