"""Orchestration overhead, in a scratch copy of the project with the demo's data (800 synthetic
films at 384 px, 96 px crops) and a small CNN in place of InceptionV3 (the model's size changes
neither figure, only how long the first run takes):

- a no-op `dvc repro` (everything up to date): what a user waits for to learn there is nothing to
  do. Goal: at most 3 s.
- the kfp.local pipeline's wall time minus the sum of its steps' own work (``work_seconds`` that
  each step records on its artifact): process starts, imports and artifact copies."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import PROJECT, REPEATS, WORK, record, rounded, verdict
from boneage.orchestrate.kfp_runner import run_local

GOAL_NOOP_SECONDS = 3.0
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def scratch_project() -> tuple[Path, dict]:
    work = WORK / "orchestration"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "data.dvc"):
        shutil.copy(PROJECT / name, work / name)
    shutil.copytree(PROJECT / "dvc_plots", work / "dvc_plots", ignore=shutil.ignore_patterns("render"))
    (work / "src").symlink_to(PROJECT / "src")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["model"].update({"backbone": "small_cnn", "head_units": [32]})
    params["train"].update({"epochs": 1, "steps_per_epoch": 4})
    params["mlflow"]["log_system_metrics"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.org",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    _run(["git", "init", "-q"], work, env)
    _run(["dvc", "init", "-q"], work, env)
    shutil.copy(PROJECT / ".dvc" / "config", work / ".dvc" / "config")
    return work, env


def main() -> None:
    from boneage.config import load_params

    work, env = scratch_project()
    first = _run(["dvc", "repro"], work, env)
    noops = [_run(["dvc", "repro"], work, env) for _ in range(max(REPEATS, 5))]
    noop = statistics.median(noops)
    record(
        "dvc_noop",
        {
            "title": "No-op `dvc repro` (6 stages, 800 images up to date)",
            "first_repro_seconds": round(first, 1),
            "seconds": round(noop, 2),
            "runs": rounded(noops, 2),
            "summary": f"{noop:.2f} s",
            "goal": f"<= {GOAL_NOOP_SECONDS:.0f} s",
            "verdict": verdict(noop <= GOAL_NOOP_SECONDS),
        },
    )
    print(f"no-op dvc repro: {noop:.2f} s")

    params = load_params(
        work / "params.yaml",
        {"mlflow.tracking_uri": f"sqlite:///{work}/mlruns/mlflow.db", "mlflow.artifact_root": str(work / "mlruns" / "artifacts")},
    )
    runs = []
    cwd = Path.cwd()
    os.chdir(work)  # the steps resolve data.source and the MLflow store as the CLI would, from the project
    try:
        for _i in range(REPEATS):
            result = run_local(params, {}, work / "local_outputs", project_dir=PROJECT)
            runs.append(
                {
                    "wall_seconds": round(result.wall_seconds, 2),
                    "steps": result.step_seconds,
                    "overhead_seconds": round(result.overhead_seconds, 2),
                }
            )
    finally:
        os.chdir(cwd)
    overhead = statistics.median(r["overhead_seconds"] for r in runs)
    wall = statistics.median(r["wall_seconds"] for r in runs)
    record(
        "kfp_local_overhead",
        {
            "title": "kfp.local pipeline: wall time minus the steps' own work (5 steps)",
            "wall_seconds": wall,
            "overhead_seconds": overhead,
            "runs": runs,
            "summary": f"{overhead:.1f} s of {wall:.1f} s wall ({overhead / 5:.1f} s per step)",
            "goal": "measured (no goal set)",
            "verdict": "",
        },
    )
    print(f"kfp.local: wall {wall:.1f} s, overhead {overhead:.1f} s")


if __name__ == "__main__":
    main()
