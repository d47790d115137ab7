"""Tracking against the local service stack (`make services`: MLflow on PostgreSQL, artifacts in the
GCS emulator, basic auth), with the server's password cache off (MLflow's default) and on
(`services.AUTH_CACHE_SECONDS`):

- one authenticated request (`experiments/search`), the median of many;
- one small run logged as a training step logs one: params, a metric per epoch, a few artifacts.

Without the cache the server derives the password's scrypt hash on every request. Goal: a cached
request within 0.1 s."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.common import REPEATS, WORK, record, rounded, verdict
from boneage.orchestrate import services

GOAL_REQUEST_SECONDS = 0.1
REQUESTS = 30
# The shape of a small training run's logging: params, a metric history, a few files.
RUN_PARAMS = 40
RUN_METRIC_STEPS = 20
RUN_ARTIFACTS = 5


def request_seconds(stack: services.Stack) -> list[float]:
    url = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search"
    auth = (services.MLFLOW_ADMIN, stack.password)
    with requests.Session() as session:
        session.get(url, params={"max_results": 1}, auth=auth, timeout=30).raise_for_status()
        times = []
        for _ in range(REQUESTS):
            start = time.perf_counter()
            session.get(url, params={"max_results": 1}, auth=auth, timeout=30).raise_for_status()
            times.append(time.perf_counter() - start)
    return times


def run_seconds(stack: services.Stack, files: Path) -> float:
    import mlflow

    os.environ.update(stack.client_env())
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # one summary line, not a link per run
    logging.getLogger("mlflow.tracking.fluent").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_experiment("bench-tracking")
    start = time.perf_counter()
    with mlflow.start_run():
        mlflow.log_params({f"param_{i}": i for i in range(RUN_PARAMS)})
        for step in range(RUN_METRIC_STEPS):
            mlflow.log_metric("val_mae_months", 30.0 - step, step=step)
        for path in sorted(files.iterdir()):
            mlflow.log_artifact(str(path))
    return time.perf_counter() - start


def measure(cache_seconds: int, files: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix="boneage-services-"))
    ports = {name: services.free_port() for name in services.DEFAULT_PORTS}
    stack = services.start(root, ports, password="bench-" + os.urandom(12).hex(), auth_cache_seconds=cache_seconds)
    try:
        times = request_seconds(stack)
        runs = [run_seconds(stack, files) for _ in range(REPEATS)]
    finally:
        services.stop(root)
    return {
        "request_seconds": round(statistics.median(times), 4),
        "request_runs": rounded(times, 4),
        "run_seconds": round(statistics.median(runs), 2),
        "run_runs": rounded(runs, 2),
    }


def main() -> None:
    files = WORK / "tracking-files"
    files.mkdir(parents=True, exist_ok=True)
    for i in range(RUN_ARTIFACTS):
        (files / f"artifact_{i}.json").write_text("{}" * 1000)
    off = measure(0, files)
    on = measure(services.AUTH_CACHE_SECONDS, files)
    summary = (
        f"a request {off['request_seconds'] * 1000:.0f} -> {on['request_seconds'] * 1000:.0f} ms; "
        f"a small run logged {off['run_seconds']:.1f} -> {on['run_seconds']:.1f} s"
    )
    record(
        "tracking_requests",
        {
            "title": (
                f"MLflow server on the local stack, password cache off -> on ({services.AUTH_CACHE_SECONDS} s): "
                f"one request; one run of {RUN_PARAMS} params, {RUN_METRIC_STEPS} metric steps, {RUN_ARTIFACTS} files"
            ),
            "runs": [{"auth_cache_seconds": 0, **off}, {"auth_cache_seconds": services.AUTH_CACHE_SECONDS, **on}],
            "summary": summary,
            "goal": f"a cached request <= {GOAL_REQUEST_SECONDS} s",
            "verdict": verdict(on["request_seconds"] <= GOAL_REQUEST_SECONDS),
        },
    )
    print(summary)


if __name__ == "__main__":
    main()
