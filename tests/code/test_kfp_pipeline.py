"""The Kubeflow pipeline as compiled: its DAG, resources, images, retries and caching; the image
build files; and `submit`'s errors against hosts that are down or refuse the credentials."""

from __future__ import annotations

import ast
import http.server
import inspect
import re
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from boneage.cli import app
from boneage.config import Params, load_params
from boneage.orchestrate.services import free_port
from tests.conftest import BIN, REPO

# A component loads its params, calls its kfp_steps function and writes the outputs.
MAX_COMPONENT_STATEMENTS = 8
STEPS = ["ingest", "preprocess", "train", "evaluate", "register"]
# The one-model pipeline; params.yaml's own (with ensemble members) compiles the ensemble pipeline.
SINGLE = "ensemble.members=[]"


def compile_spec(tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    args = ["pipeline", "compile", "--out", str(out), "--params", str(REPO / "params.yaml")]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))  # also proves the file is valid YAML
    assert len(docs) == 2, "expected the pipeline spec and its Kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return compile_spec(tmp_path_factory.mktemp("kfp"), SINGLE)


@pytest.fixture(scope="module")
def compiled_ensemble(tmp_path_factory) -> tuple[dict, dict]:
    params = load_params(REPO / "params.yaml")
    assert len(params.ensemble.members) >= 2, "params.yaml's ensemble section lists the demo's members"
    return compile_spec(tmp_path_factory.mktemp("kfp-ensemble"))


def test_ensemble_pipeline_trains_each_member_in_a_parallel_for_with_a_gpu_and_no_other_step_has_one(compiled_ensemble):
    spec, k8s = compiled_ensemble
    params = load_params(REPO / "params.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    loops = [name for name, task in tasks.items() if "parameterIterator" in task]
    assert len(loops) == 1 and "train" not in tasks
    assert sorted(set(tasks) - set(loops)) == sorted(["ingest", "preprocess", "ensemble", "evaluate", "register"])
    # The loop runs over the `members` pipeline parameter, whose default is params.yaml's list.
    iterator = tasks[loops[0]]["parameterIterator"]
    assert iterator["items"]["inputParameter"].endswith("members")
    declared = spec["root"]["inputDefinitions"]["parameters"]["members"]["defaultValue"]
    assert [m["name"] for m in declared] == [m.name for m in params.ensemble.members]
    loop_dag = spec["components"][tasks[loops[0]]["componentRef"]["name"]]["dag"]["tasks"]
    assert list(loop_dag) == ["member"]
    # The ensemble waits for every member (their models, collected) and hands its run to evaluate and register.
    assert loops[0] in tasks["ensemble"]["dependentTasks"]
    assert tasks["ensemble"]["inputs"]["artifacts"]["member_models"]["taskOutputArtifact"]["producerTask"] == loops[0]
    for step in ("evaluate", "register"):
        run_id = tasks[step]["inputs"]["parameters"]["mlflow_run_id"]["taskOutputParameter"]
        assert run_id == {"outputParameterKey": "Output", "producerTask": "ensemble"}
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        if name == "exec-member":
            assert "gpu_count" in resources["accelerator"]["resourceCount"]
            assert resources["resourceCpuRequest"] == params.kfp.train_cpu
            assert k8s[name]["nodeSelector"]["labels"] == params.kfp.gpu_node_selector
            assert executor["container"]["image"] == params.kfp.image
        else:
            assert "accelerator" not in resources, f"{name} asks for a GPU"
            assert "nodeSelector" not in k8s.get(name, {}) and executor["container"]["image"] == params.kfp.cpu_image
    size = params.kfp.step_resources["ensemble"]
    ensemble = executors["exec-ensemble"]["container"]["resources"]
    assert (ensemble["resourceCpuRequest"], ensemble["resourceMemoryRequest"]) == (size.cpu, size.memory)
    assert loop_dag["member"]["retryPolicy"]["maxRetryCount"] == 1  # resumes from its checkpoint


def test_dag_has_the_five_steps_in_order(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEPS)
    for upstream, step in zip(STEPS, STEPS[1:], strict=False):
        assert upstream in tasks[step].get("dependentTasks", []), f"{step} does not wait for {upstream}"
    assert "dependentTasks" not in tasks["ingest"]
    # evaluate and register take the MLflow run id from train: one pipeline run, one MLflow run.
    for step in ("evaluate", "register"):
        run_id = tasks[step]["inputs"]["parameters"]["mlflow_run_id"]["taskOutputParameter"]
        assert run_id == {"outputParameterKey": "Output", "producerTask": "train"}


def test_pipeline_parameters_cover_the_run_time_choices(compiled):
    spec, _ = compiled
    declared = spec["root"]["inputDefinitions"]["parameters"]
    for name in (
        "source_uri",
        "image_size",
        "epochs",
        "backbone",
        "gpu_count",
        "gpu_type",
        "mlflow_tracking_uri",
        "experiment",
        "params_yaml",
    ):
        assert name in declared
    params = load_params(REPO / "params.yaml", {"ensemble.members": []})
    assert declared["image_size"]["defaultValue"] == params.preprocess.image_size
    # The params travel whole (with what --set changed) and validate back into the same typed config.
    assert Params.model_validate(yaml.safe_load(declared["params_yaml"]["defaultValue"])) == params


def test_gpu_resources_and_tolerations_on_the_train_step_only(compiled):
    spec, k8s = compiled
    executors = spec["deploymentSpec"]["executors"]
    params = load_params(REPO / "params.yaml")
    for step in STEPS:
        resources = executors[f"exec-{step}"]["container"].get("resources", {})
        if step == "train":
            accel = resources["accelerator"]
            assert "gpu_count" in accel["resourceCount"] and "gpu_type" in accel["resourceType"]
            assert resources["resourceCpuRequest"] == params.kfp.train_cpu
            assert resources["resourceMemoryRequest"] == params.kfp.train_memory
            assert k8s["exec-train"]["nodeSelector"]["labels"] == params.kfp.gpu_node_selector
            assert [t["key"] for t in k8s["exec-train"]["tolerations"]] == [t.key for t in params.kfp.gpu_tolerations]
        else:
            assert "accelerator" not in resources, f"{step} asks for a GPU"
            size = params.kfp.step_resources[step]
            assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == (size.cpu, size.memory), step
            assert "nodeSelector" not in k8s.get(f"exec-{step}", {})
            assert "tolerations" not in k8s.get(f"exec-{step}", {})


def _images(spec) -> dict[str, str]:
    return {name.removeprefix("exec-"): e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_training_runs_the_gpu_image_and_every_other_step_the_cpu_image_make_push_pushes(compiled, tmp_path):
    spec, _ = compiled
    params = load_params(REPO / "params.yaml")
    images = _images(spec)
    assert images.pop("train") == params.kfp.image and set(images.values()) == {params.kfp.cpu_image}
    dry_run = subprocess.run(["make", "-n", "push"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert f"docker push {params.kfp.image}" in dry_run and f"docker push {params.kfp.cpu_image}" in dry_run
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert params.kfp.image.endswith(f":{version}") and params.kfp.cpu_image.endswith(f":{version}"), "a tag lags the version"
    # Given another registry, `make push` and `make compile` agree on the names.
    other = "registry.example.org/team"
    push_run = subprocess.run(["make", "-n", "push", f"REGISTRY={other}"], cwd=REPO, capture_output=True, text=True).stdout
    compile_run = subprocess.run(["make", "-n", "compile", f"REGISTRY={other}"], cwd=REPO, capture_output=True, text=True).stdout
    gpu, cpu = f"{other}/boneage-gpu:{version}", f"{other}/boneage-cpu:{version}"
    assert f"docker push {gpu}" in push_run and f"docker push {cpu}" in push_run
    assert f"--set kfp.image={gpu} --set kfp.cpu_image={cpu}" in compile_run
    respec, _ = compile_spec(tmp_path, SINGLE, f"kfp.image={gpu}", f"kfp.cpu_image={cpu}")
    images = _images(respec)
    assert images.pop("train") == gpu and set(images.values()) == {cpu}


def test_network_steps_retry_with_backoff(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    params = load_params(REPO / "params.yaml")
    for step in ("ingest", "evaluate", "register"):
        policy = tasks[step]["retryPolicy"]
        assert policy["maxRetryCount"] == params.kfp.retries and policy["backoffDuration"] == params.kfp.retry_backoff
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 1  # resumes from its checkpoint
    assert "retryPolicy" not in tasks["preprocess"]  # local work only: a failure is a bug, not a blip


def test_caching_keys_and_switches(compiled, tmp_path):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}
    assert tasks["register"]["cachingOptions"] == {}, "the registry decision must never come from the cache"
    # data_version is an input of ingest, hence part of its cache key.
    assert "data_version" in tasks["ingest"]["inputs"]["parameters"]
    # Only the inputs a step uses are in its cache key: a new epoch count does not redo ingest.
    assert "epochs" not in tasks["ingest"]["inputs"]["parameters"]
    assert "epochs" not in tasks["preprocess"]["inputs"]["parameters"]
    no_cache, _ = compile_spec(tmp_path, SINGLE, "kfp.cache_training=false")
    assert no_cache["root"]["dag"]["tasks"]["train"]["cachingOptions"] == {}


def test_secrets_for_mlflow_and_gcs(compiled):
    _, k8s = compiled
    params = load_params(REPO / "params.yaml")
    for step in ("ingest", "train", "evaluate", "register"):
        env = k8s[f"exec-{step}"]["secretAsEnv"][0]
        assert env["secretName"] == params.kfp.mlflow_secret.name
        assert {e["envVar"] for e in env["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert k8s[f"exec-{step}"]["secretAsVolume"][0]["secretName"] == params.kfp.gcs_secret


def test_components_are_thin_wrappers_over_kfp_steps():
    from boneage.orchestrate import components

    for step in components.STEPS:
        source = inspect.getsource(step)
        imports = re.findall(r"^\s+(?:from|import) (\S+)", source, re.M)
        assert imports == ["boneage.orchestrate"], f"{step.__name__} imports {imports}; components call kfp_steps only"
        assert f"kfp_steps.{step.__name__}(" in source
        # Statements, not lines (the formatter may spread one call over many): load the params,
        # call the step, write its outputs. No branches of its own.
        func = ast.parse(textwrap.dedent(source)).body[0]
        statements = [n for n in func.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(statements) <= MAX_COMPONENT_STATEMENTS, f"{step.__name__} has grown logic of its own"
        assert not any(isinstance(n, ast.If | ast.While | ast.Try) for n in ast.walk(func)), step.__name__


@pytest.mark.parametrize("dockerfile", ["Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    proc = subprocess.run([str(BIN / "hadolint"), str(REPO / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / dockerfile).read_text()
    assert "requirements.lock" in text, "the image must install the same pins as `make setup`"


def _submit(tmp_path: Path, host: str):
    package = tmp_path / "p.yaml"
    package.write_text("{}")
    return CliRunner().invoke(
        app, ["pipeline", "submit", "--host", host, "--package", str(package), "--params", str(REPO / "params.yaml")]
    )


def test_submit_to_an_unreachable_host_is_a_clear_error(tmp_path):
    result = _submit(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "cannot reach the Kubeflow Pipelines API" in result.output and "--host" in result.output
    assert "Traceback" not in result.output


def test_submit_with_refused_credentials_is_a_clear_error(tmp_path):
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _submit(tmp_path, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert "refused the credentials (HTTP 401)" in result.output and "--token" in result.output


def test_submit_without_a_compiled_package_says_to_compile(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            "http://127.0.0.1:1",
            "--package",
            str(tmp_path / "missing.yaml"),
            "--params",
            str(REPO / "params.yaml"),
        ],
    )
    assert result.exit_code == 1 and "boneage pipeline compile" in result.output
