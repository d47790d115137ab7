"""The project's Docker image: its size, how long a rebuild takes after a one-line code change, and
what running each Kubeflow step in its own container costs next to the subprocess runner, with the
CPU and memory each step used (what kfp.step_resources is sized from). Needs Docker and the image
(`make image`, or `make test-containers` which builds it); the service stack is started here.

    python -m benchmarks.bench_containers
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.bench_orchestration import scratch_project
from benchmarks.common import PROJECT, WORK, record, rounded
from boneage.orchestrate.kfp_runner import run_local

# What the Dockerfile copies from the build context (the rebuild is timed on a copy of it).
BUILD_CONTEXT = ("Dockerfile", ".dockerignore", "docker", "requirements.lock", "pyproject.toml", "README.md", "src")
CHANGED_FILE = Path("src/boneage/__init__.py")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def image_size_mb(image: str) -> float:
    return round(int(_docker("image", "inspect", image, "--format", "{{.Size}}")) / 2**20, 1)


def rebuild_seconds(image: str) -> float:
    """Rebuild the image from a copy of its build context with one line of code changed: every layer
    but the project's comes from the cache."""
    base = _docker("image", "inspect", image, "--format", '{{index .Config.Labels "io.boneage.base-image"}}')
    with tempfile.TemporaryDirectory(prefix="boneage-context-") as tmp:
        context = Path(tmp)
        for name in BUILD_CONTEXT:
            src = PROJECT / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, context / name)
        with open(context / CHANGED_FILE, "a") as fh:
            fh.write("# a one-line change\n")
        start = time.perf_counter()
        subprocess.run(
            ["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", f"{image}-rebuild", "."],
            cwd=context, env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=True, capture_output=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    _docker("image", "rm", f"{image}-rebuild")
    return round(seconds, 1)


def main() -> None:
    from boneage.config import load_params
    from boneage.orchestrate import services

    params_path = PROJECT / "params.yaml"
    image = load_params(params_path).kfp.cpu_image
    base = _docker("image", "inspect", image, "--format", '{{index .Config.Labels "io.boneage.base-image"}}')
    sizes = {"cpu_image_mb": image_size_mb(image), "base_image": base, "base_image_mb": image_size_mb(base)}
    rebuilds = [rebuild_seconds(image) for _ in range(3)]
    print(f"image {sizes}; rebuild after a one-line change: {rebuilds} s", flush=True)

    work, _ = scratch_project()
    root = Path(tempfile.mkdtemp(prefix="boneage-services-"))
    stack = services.start(root, {name: services.free_port() for name in services.DEFAULT_PORTS}, password=os.urandom(12).hex())
    saved = dict(os.environ)
    os.environ.update(stack.client_env())
    cwd = Path.cwd()
    os.chdir(work)
    runs: dict[str, list] = {"subprocess": [], "docker": []}
    try:
        params = load_params(work / "params.yaml", {"mlflow.tracking_uri": stack.mlflow_uri})
        for _ in range(2):
            for runner in runs:
                result = run_local(params, {}, WORK / "containers" / runner, project_dir=PROJECT, runner=runner)
                runs[runner].append(
                    {
                        "wall_seconds": round(result.wall_seconds, 1),
                        "overhead_seconds": round(result.overhead_seconds, 1),
                        "steps": result.step_usage,
                    }
                )
                print(f"{runner}: {runs[runner][-1]}", flush=True)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        services.stop(root)
        shutil.rmtree(root, ignore_errors=True)
    overhead = {r: statistics.median(x["overhead_seconds"] for x in v) for r, v in runs.items()}
    record(
        "containers",
        {
            "title": "The CPU image, and the kfp.local pipeline with every step in a container",
            **sizes,
            "rebuild_after_one_line_change_seconds": rebuilds,
            "overhead_seconds": overhead,
            "runs": runs,
            "summary": f"CPU image {sizes['cpu_image_mb'] / 1024:.2f} GiB (base {sizes['base_image_mb']:.0f} MiB); "
            f"rebuild after a one-line change {statistics.median(rebuilds):.0f} s; pipeline overhead "
            f"{overhead['docker']:.0f} s in containers vs {overhead['subprocess']:.0f} s as subprocesses",
            "goal": "measured (no goal set)",
            "verdict": "",
            "per_run_seconds": rounded([x["wall_seconds"] for v in runs.values() for x in v], 1),
        },
    )


if __name__ == "__main__":
    main()
