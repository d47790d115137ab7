"""Serving a registered model the way the README says: `make serve`, on a port the operating system
hands out (retried if another process takes it first), stopped and waited for after the test."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from boneage.orchestrate.services import free_port
from tests.conftest import BIN, REPO

START_TIMEOUT_S = 180
PORT_ATTEMPTS = 3


def readme_serve_command() -> str:
    """The first `make serve` line of the README's code blocks, as written (its comment dropped)."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("make serve"))
    return line.split("#", 1)[0].strip()


def _command(model: str) -> str:
    """The README's line with another MODEL; `-o setup`: the environment is installed already, and a
    test never runs `make setup` (apt-get and pip have no place inside a test)."""
    words = re.sub(r"MODEL=\S+", f"MODEL={model}", readme_serve_command()).split()
    return " ".join([words[0], "-o", "setup", *words[1:]])


@contextlib.contextmanager
def served(model: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """The model behind `make serve`, from a shell without the project's environment on PATH (make
    puts it there); yields the base URL."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri, "PORT": str(port)}
        with open(log, "w") as out:
            server = subprocess.Popen(
                ["bash", "-c", _command(model)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            if _ready(f"http://127.0.0.1:{port}/ping", server, log):
                yield f"http://127.0.0.1:{port}"
                return
        finally:
            _stop(server)
    pytest.fail(f"make serve never held a port in {PORT_ATTEMPTS} tries:\n{log.read_text()[-3000:]}")


def _ready(url: str, proc: subprocess.Popen, log: Path) -> bool:
    """True once the server answers; False when it lost its port to another process (retry)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "address already in use" in log.read_text().lower():
                return False
            pytest.fail(f"make serve exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    pytest.fail(f"make serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
