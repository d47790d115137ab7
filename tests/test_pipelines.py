"""Both orchestrations end to end on tiny synthetic data, in a scratch copy of the project, logging
to the real service stack (MLflow server on PostgreSQL, artifacts in the GCS emulator):
`dvc repro` of the one-model chain (every stage runs, the model is registered, a second repro is a
no-op, plots render offline, `dvc exp run -S` sweeps), the Kubeflow pipeline under kfp.local (which
must agree with DVC on the split and the metrics), and the MLflow UI in headless Chromium showing the
runs. With `-m containers` (`.ci/run`): the ensemble's DVC stages on top of the same project, and
every step in the CPU image, single model and ensemble, agreeing with DVC."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import mlflow
import pandas as pd
import psycopg2
import pytest
import requests
import yaml
from scipy import stats

from boneage.contracts import THREAD_VARIABLES
from boneage.data import gcs
from boneage.model.ood import PARTS
from boneage.orchestrate import services
from tests import browser
from tests.conftest import BIN, REPO, SERVE_PYTHON

# The same seed, records and thread count give the same training in every runner: dvc, kfp.local
# and the containers agreed to the last bit on 2026-12-02 (ensemble val MAE 19.2234 in all three).
# The margin is for float sums that a different build of a library could order otherwise.
PARITY_MAE_MONTHS = 0.05


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, stack) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """A scratch project with tiny params, after one `dvc repro` logged to the service stack."""
    work = tmp_path_factory.mktemp("pipelines") / "project"
    work.mkdir()
    for name in ("dvc.yaml", "data.dvc"):
        shutil.copy(REPO / name, work / name)
    (work / "dvc_plots").mkdir()
    shutil.copy(REPO / "dvc_plots" / "offline.html", work / "dvc_plots" / "offline.html")
    (work / "src").symlink_to(REPO / "src")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synthetic"].update({"count": 60, "image_size": 160})
    params["preprocess"]["image_size"] = 75
    params["train"].update({"epochs": 2, "steps_per_epoch": None, "batch_size": 16, "bn_recalibration_images": 32})
    # Orchestration is under test here, not InceptionV3 (tests/model trains that): a small CNN
    # keeps each of the three pipeline runs to seconds of training.
    params["model"].update({"backbone": "small_cnn", "head_units": [32]})
    params["mlflow"]["log_system_metrics"] = False
    # Two tiny members with their own seeds: the ensemble path (member@N stages, the ParallelFor).
    params["ensemble"]["members"] = [{"name": "seed-1", "seed": 1}, {"name": "seed-2", "seed": 2}]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
        **stack.client_env(),
        "BONEAGE_TEST_PG_DSN": stack.postgres_dsn,
        # One TensorFlow thread in every step of this module, here and in the containers (the Docker
        # runner passes these through), however the suite is run: the runners compared here then do
        # the same float sums in the same order.
        **dict.fromkeys(THREAD_VARIABLES, "1"),
    }
    run(["git", "init", "-q"], work, env)
    run(["dvc", "init", "-q"], work, env)
    shutil.copy(REPO / ".dvc" / "config", work / ".dvc" / "config")  # the offline plot template

    # The one-model chain (synth ... register). The ensemble's stages run in the container tests
    # (`ensemble_project`), which compare them with the Docker pipeline's ParallelFor.
    first = run(["dvc", "repro", "register"], work, env)
    return work, env, first


SINGLE_STAGES = ("synth", "ingest", "preprocess", "train", "evaluate", "register")
ENSEMBLE_STAGES = ("member@0", "member@1", "ensemble", "evaluate_ensemble", "register_ensemble")


@pytest.fixture(scope="module")
def ensemble_project(project) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The scratch project after a whole `dvc repro`: the ensemble's stages on top of the one-model chain."""
    work, env, _ = project
    return work, env, run(["dvc", "repro"], work, env)


# What TensorFlow 2.21 writes to stderr in every process that imports it, unless boneage filters it.
TENSORFLOW_NOTES = ("absl::InitializeLog", "oneDNN custom operations")


def _tensorflow_notes(proc: subprocess.CompletedProcess) -> list[str]:
    """The TensorFlow import notes found in a command's output (boneage._QuietImport keeps them out)."""
    return [note for note in TENSORFLOW_NOTES if note in proc.stdout + proc.stderr]


def _refusal_bound(metrics: dict, tail: float = 0.999) -> float:
    """The share of test films a working check may refuse: each of its four thresholds is the top of
    the validation films' scores, so a film like them is refused with probability about 4/(val + 1);
    the bound is that binomial's upper tail over the test films."""
    val, test = metrics["val"]["n"], metrics["test"]["n"]
    return stats.binom.ppf(tail, test, min(1.0, len(PARTS) / (val + 1))) / test


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_noop(project):
    work, env, first = project
    for stage in SINGLE_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert not any(f"Running stage '{stage}'" in first.stdout for stage in ENSEMBLE_STAGES)
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and set(metrics["test"]["by_sex"]) <= {"male", "female"}
    # The model carries its check and its interval: evaluate reports what they do on the test films.
    assert (work / "models" / "ood.npz").is_file() and metrics["test"]["ood_refused"] <= _refusal_bound(metrics)
    assert 0.5 <= metrics["test"]["interval_coverage"] <= 1.0
    assert all("interval_coverage" in band for band in metrics["test"]["by_age_band"].values())
    assert json.loads((work / "reports" / "registry.json").read_text())["alias"] == "champion"
    assert not (work / "mlruns" / "mlflow.db").exists(), "logged locally instead of to the server"
    # No secret leaks: not into the run's params or tags, not onto the console.
    run_id = json.loads((work / "models" / "run.json").read_text())["run_id"]
    password = env["MLFLOW_TRACKING_PASSWORD"]
    with psycopg2.connect(env["BONEAGE_TEST_PG_DSN"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT value FROM params WHERE run_uuid = %s UNION ALL SELECT value FROM tags WHERE run_uuid = %s", (run_id, run_id)
        )
        logged = [row[0] for row in cur.fetchall()]
    assert logged and not any(password in str(v) for v in logged)
    assert password not in first.stdout + first.stderr
    # No library log noise: TensorFlow's import notes stay out of every stage's output (boneage._QuietImport).
    assert not _tensorflow_notes(first)
    assert password not in (work / "models" / "run.json").read_text()

    second = run(["dvc", "repro", "register"], work, env)
    assert "Running stage" not in second.stdout

    shown = run(["dvc", "metrics", "show", "--json"], work, env)
    assert "test" in shown.stdout

    # Plots render offline: vega is inlined, nothing is fetched from a CDN.
    run(["dvc", "plots", "show", "--out", "rendered"], work, env)
    page = (work / "rendered" / "index.html").read_text()
    assert "vegaEmbed" in page and "<script src=" not in page and "cdn.jsdelivr" not in page
    assert "val_mae_months" in page and "age_band" in page

    # A sweep with `dvc exp run -S`: only the stages the changed param reaches run again.
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "baseline"], work, env)
    sweep = run(
        ["dvc", "exp", "run", "register", "-S", "mlflow.synthetic_registered_model=boneage-sweep", "-n", "sweep"], work, env
    )
    assert "Running stage 'register'" in sweep.stdout and "Running stage 'train'" not in sweep.stdout
    assert json.loads((work / "reports" / "registry.json").read_text())["model"] == "boneage-sweep"
    assert "sweep" in run(["dvc", "exp", "show", "--json"], work, env).stdout
    # Back to the baseline params for the tests that share this project.
    run(["git", "checkout", "--", "params.yaml"], work, env)


@pytest.mark.slow
def test_kfp_local_runs_the_pipeline_and_matches_dvc_repro(project, stack, stack_env, tmp_path):
    """The one-model pipeline (ingest, preprocess, train, evaluate, register) through kfp.local on the
    same data, params and seed as `dvc repro`: the same split, the same metrics within a tolerance,
    one MLflow run for the whole pipeline, in PostgreSQL and the bucket. (Its ParallelFor of members
    runs in the container tests, `-m containers`.)"""
    work, env, _ = project
    root = tmp_path / "kfp"
    proc = run(["boneage", "pipeline", "run-local", "--pipeline-root", str(root), "--set", "ensemble.members=[]"], work, env)
    assert "local pipeline run finished" in proc.stdout
    # Each step records its own work on its artifact; the CLI splits the wall time with it.
    own_work = proc.stdout.split("steps' own work:")[1]
    assert all(f"{step} " in own_work for step in ("ingest", "preprocess", "train", "evaluate", "register"))

    def artifact(step: str, name: str) -> Path:
        found = sorted(root.glob(f"*/{step}/{name}"))
        assert found, f"no {step}/{name} artifact under {root}"
        return found[-1]

    kfp_manifest = pd.read_csv(artifact("ingest", "dataset") / "manifest.csv", dtype={"id": str})
    dvc_manifest = pd.read_csv(work / "data" / "ingest" / "manifest.csv", dtype={"id": str})
    assert kfp_manifest[["id", "split", "boneage", "male"]].equals(dvc_manifest[["id", "split", "boneage", "male"]])
    # The KFP dataset stands alone: its images travel inside the artifact.
    assert all((artifact("ingest", "dataset") / p).is_file() for p in kfp_manifest["path"])
    assert all(p.startswith("images/") for p in kfp_manifest["path"])

    kfp_metrics = json.loads((artifact("evaluate", "evaluation") / "metrics.json").read_text())
    dvc_metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert kfp_metrics["test"]["n"] == dvc_metrics["test"]["n"]
    for split in ("val", "test"):
        assert kfp_metrics[split]["mae"] == pytest.approx(dvc_metrics[split]["mae"], abs=PARITY_MAE_MONTHS)

    decision = json.loads((artifact("register", "decision") / "registry.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    # The newest version of its name, whatever other tests registered before it.
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{decision['model']}'"))
    assert decision["alias"] in ("champion", "challenger") and decision["version"] == newest
    run_id = json.loads((artifact("train", "model") / "run.json").read_text())["run_id"]
    logged = client.get_run(run_id).data
    assert "val_mae_months" in logged.metrics and "test_mae" in logged.metrics
    assert "test_interval_coverage" in logged.metrics and "ood_threshold_orientation" in logged.metrics
    assert logged.tags["registry.alias"] == decision["alias"]
    description = logged.tags["mlflow.note.content"]
    assert description.startswith("Trained on synthetic data") and f"test MAE {kfp_metrics['test']['mae']:.2f}" in description

    # Both pipelines' runs live in PostgreSQL, their files in the bucket.
    dvc_run_id = json.loads((work / "models" / "run.json").read_text())["run_id"]
    with psycopg2.connect(stack.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid IN (%s, %s)", (dvc_run_id, run_id))
        assert cur.fetchone()[0] == 2
    names = [b.name for b in gcs.client().list_blobs(services.ARTIFACT_BUCKET)]
    for rid in (dvc_run_id, run_id):
        assert any(f"/{rid}/" in n and n.endswith("metrics.json") for n in names), f"no artifacts of {rid} in the bucket"


ARTIFACTS = REPO / "test-artifacts"
UI_TIMEOUT_S = 120
# The UI rounds metric values for display.
UI_VALUE_TOLERANCE = 0.01


@contextlib.contextmanager
def auth_proxy(target: str, auth: tuple[str, str]):
    """A proxy on 127.0.0.1 that adds basic-auth credentials to every request. Chromium cannot carry
    them itself: with user:password@ in the page URL, the UI's fetch() calls are refused ("Request
    cannot be constructed from a URL that includes credentials")."""
    hop = {
        "host",
        "authorization",
        "accept-encoding",
        "connection",
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "keep-alive",
    }

    class Forward(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            reply = requests.request(self.command, target + self.path, data=body, headers=headers, auth=auth, timeout=60)
            self.send_response(reply.status_code)
            for key, value in reply.headers.items():
                if key.lower() not in hop:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.mark.slow
def test_mlflow_ui_shows_the_run_and_its_test_mae_in_chromium(project, stack, stack_env, tmp_path):
    work, _, _ = project
    run_id = json.loads((work / "models" / "run.json").read_text())["run_id"]
    run_info = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri).get_run(run_id)
    test_mae = run_info.data.metrics["test_mae"]
    # The server requires auth (test_services proves it); the browser goes through auth_proxy.
    with auth_proxy(stack.mlflow_uri, (services.MLFLOW_ADMIN, stack.password)) as base:
        runs_page = f"{base}/#/experiments/{run_info.info.experiment_id}/runs"
        run_page = f"{base}/#/experiments/{run_info.info.experiment_id}/runs/{run_id}"
        ARTIFACTS.mkdir(exist_ok=True)
        with browser.chromium(tmp_path / "profile") as page:  # one browser for the three looks
            page.goto(runs_page)
            listing = page.wait_for_text([run_info.info.run_name], UI_TIMEOUT_S)
            assert run_info.info.run_name in listing, f"the run is not listed on the runs page:\n{listing[-2000:]}"
            page.screenshot(ARTIFACTS / "mlflow-ui-runs.png")
            # The run page lists metrics in a virtualised table: only the rows inside the window are
            # rendered, so the window is made tall enough to hold all of them.
            page.resize(1600, 8000)
            page.goto(run_page)
            detail = page.wait_for_text(["test_mae"], UI_TIMEOUT_S)
            shown = metric_values_shown(detail, "test_mae")
            assert any(abs(v - test_mae) < UI_VALUE_TOLERANCE for v in shown), (
                f"the run page does not show test_mae = {test_mae:.3f} (values next to it: {shown}):\n{detail[-3000:]}"
            )
            page.resize(1600, 1200)
            page.screenshot(ARTIFACTS / "mlflow-ui-run.png")
        for name in ("mlflow-ui-runs.png", "mlflow-ui-run.png"):
            assert (ARTIFACTS / name).stat().st_size > 10_000, f"{name} is blank"


def metric_values_shown(text: str, metric: str) -> list[float]:
    """The numbers the page shows in the metric's own row: on the line that names it, or on the
    line after it (the table renders name and value as separate cells)."""
    lines = [line.strip() for line in text.splitlines()]
    values = []
    for i, line in enumerate(lines):
        cells = line.split("\t")
        if metric in cells:
            candidates = cells[cells.index(metric) + 1 :] + lines[i + 1 : i + 2]
            for cell in candidates:
                with contextlib.suppress(ValueError):
                    values.append(float(cell))
    return values


def _image_labels(image: str) -> dict[str, str]:
    proc = subprocess.run(
        ["docker", "image", "inspect", image, "--format", "{{json .Config.Labels}}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"no image {image}: run `make test-containers` (it builds it)\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.containers
def test_dvc_repro_adds_the_ensemble_stages_on_the_one_model_chain(ensemble_project):
    """`dvc repro` over the one-model project runs the members (a foreach), the ensemble, its
    evaluation and its registration, and trains nothing the one-model chain already trained."""
    work, _, whole = ensemble_project
    for stage in ENSEMBLE_STAGES:
        assert f"Running stage '{stage}'" in whole.stdout
    assert "Running stage 'train'" not in whole.stdout and "Running stage 'preprocess'" not in whole.stdout
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    # The ensemble of the two members: evaluated and registered as one more version of the same model.
    ensemble_metrics = json.loads((work / "reports" / "ensemble" / "metrics.json").read_text())
    assert ensemble_metrics["test"]["n"] == metrics["test"]["n"] and (work / "models" / "ensemble" / "ood.npz").is_file()
    single, ensemble = (json.loads((work / "reports" / d / "registry.json").read_text()) for d in ("", "ensemble"))
    assert ensemble["model"] == single["model"] and ensemble["version"] > single["version"]
    records = [json.loads((work / "models" / "members" / m / "member.json").read_text()) for m in ("seed-1", "seed-2")]
    assert [r["status"] for r in records] == ["trained", "trained"] and records[0]["run_id"] != records[1]["run_id"]
    assert not _tensorflow_notes(whole)


@pytest.mark.containers
@pytest.mark.parametrize("path", ["single", "ensemble"])
def test_kfp_pipeline_with_every_step_in_the_image(project, stack, stack_env, tmp_path, path, request):
    """`boneage pipeline run-local --runner docker`: ingest, preprocess, train (or the ParallelFor of
    members and the ensemble), evaluate and register each in a container of the CPU image `make image`
    built, logging to the service stack. The run's tags come from inside the image (its own labels),
    the commit is the real one, the metrics agree with `dvc repro`, and the registered model loads."""
    from boneage.config import load_params

    # The ensemble is compared with `dvc repro`'s ensemble stages, which run for it.
    work, env, _ = request.getfixturevalue("ensemble_project") if path == "ensemble" else project
    image = load_params(REPO / "params.yaml").kfp.cpu_image
    labels = _image_labels(image)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"].startswith(head), labels
    lock = __import__("hashlib").sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    assert labels["io.boneage.lock-sha256"] == lock, "the image was built from another lock: make image"

    root = tmp_path / "docker"
    command = ["boneage", "pipeline", "run-local", "--runner", "docker", "--pipeline-root", str(root)]
    proc = run([*command, *(["--set", "ensemble.members=[]"] if path == "single" else [])], work, env)
    assert "local pipeline run finished" in proc.stdout

    def artifact(step: str, name: str) -> Path:
        return sorted(root.glob(f"*/{step}/{name}"))[-1]

    # The subprocess runner agrees with `dvc repro` within the same tolerance (the slow test in
    # make test): agreeing with dvc here makes the three agree.
    metrics = json.loads((artifact("evaluate", "evaluation") / "metrics.json").read_text())
    reports = work / "reports" / ("ensemble" if path == "ensemble" else "")
    dvc_metrics = json.loads((reports / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["mae"] == pytest.approx(dvc_metrics[split]["mae"], abs=PARITY_MAE_MONTHS), split
    run_id = json.loads((artifact("train" if path == "single" else "ensemble", "model") / "run.json").read_text())["run_id"]
    decision = json.loads((artifact("register", "decision") / "registry.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    if path == "ensemble":
        _members_are_children_and_named_on_the_version(root, run_id, decision, client)
    tags = client.get_run(run_id).data.tags
    # Set from the image's environment: only a step inside the image can have logged these.
    assert tags["image.lock_sha256"] == labels["io.boneage.lock-sha256"]
    assert tags["image.version"] == labels["org.opencontainers.image.version"]
    assert tags["git.commit"] == labels["org.opencontainers.image.revision"] != "unknown"
    mlflow.set_tracking_uri(stack.mlflow_uri)
    model = mlflow.pyfunc.load_model(f"models:/{decision['model']}/{decision['version']}")
    assert model.metadata.metadata["boneage_provenance"]["dataset_kind"] == "synthetic"


def _members_are_children_and_named_on_the_version(root: Path, run_id: str, decision: dict, client) -> None:
    """The ParallelFor ran both members; each has its own run, a child of the ensemble's; the
    registered version names the members in, with their runs and recipe fingerprints."""
    members = sorted(root.glob("*/for-loop-*/member/model/member.json"))
    assert sorted(json.loads(m.read_text())["name"] for m in members) == ["seed-1", "seed-2"]
    for member in members:
        member_run = client.get_run(json.loads(member.read_text())["run_id"]).data
        assert member_run.tags["mlflow.parentRunId"] == run_id and "val_mae_months" in member_run.metrics
    version = client.get_model_version(decision["model"], str(decision["version"]))
    assert version.tags["provenance.dataset_kind"] == "synthetic"
    assert version.tags["provenance.members_in"] == "seed-1,seed-2"
    for member in members:
        record = json.loads(member.read_text())
        assert version.tags[f"provenance.members.{record['name']}.run_id"] == record["run_id"]
        assert len(version.tags[f"provenance.members.{record['name']}.recipe_fingerprint"]) == 16


# What the image copies from the build context: nothing else may reach it (no .services/ password
# file, no .env, no key file that happens to lie in the checkout).
IMAGE_PROJECT_FILES = {"README.md", "pyproject.toml", "requirements.lock", "requirements.py", "requirements.txt", "src"}
SECRET_MARKERS_IN_IMAGE = ("PRIVATE KEY", "private_key_id", "MLFLOW_TRACKING_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.mark.containers
def test_the_image_runs_as_a_non_root_user_and_holds_no_secrets():
    """`boneage --help` works as uid 1000; the image's history and config name no credential, and
    the only project files in it are the ones the Dockerfile means to copy."""
    from boneage.config import load_params

    image = load_params(REPO / "params.yaml").kfp.cpu_image
    proc = subprocess.run(["docker", "run", "--rm", image, "sh", "-c", "id -u && boneage --help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "1000" and "Usage: boneage" in proc.stdout, proc.stderr
    history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True, check=True).stdout
    config = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True).stdout
    for text, where in ((history, "history"), (config, "config")):
        assert not [m for m in SECRET_MARKERS_IN_IMAGE if m in text], f"a credential in the image's {where}"
    listed = subprocess.run(
        ["docker", "run", "--rm", image, "ls", "-A", "/opt/boneage"], capture_output=True, text=True, check=True
    )
    assert set(listed.stdout.split()) == IMAGE_PROJECT_FILES
    keys = subprocess.run(
        ["docker", "run", "--rm", image, "sh", "-c",
         "grep -rlsE 'BEGIN (RSA )?PRIVATE KEY|private_key_id' /opt/boneage /home /tmp | head"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert keys.strip() == "", f"key material in the image: {keys}"


BATCH_FILMS = 24
BATCH_SHARD_FILMS = 10
# Check scores this close to 1 (the threshold) may fall on either side between two batchings.
OOD_SCORE_TIE = 0.02


def _upload_worklist(work: Path, prefix: str) -> list[Path]:
    """BATCH_FILMS of the project's synthetic films and a worklist of them under gs://prefix (paths
    relative to the worklist), plus a row whose film is missing and a row with a bad sex."""
    import fsspec

    films = sorted((work / "data" / "synthetic" / "boneage-training-dataset").glob("*.png"))[:BATCH_FILMS]
    fs = fsspec.filesystem("gs", token="anon")
    for film in films:
        fs.put_file(str(film), f"{prefix}/films/{film.name}")
    rows = [{"id": f.stem, "path": f"films/{f.name}", "sex": "F", "chronological_age": 120} for f in films]
    rows += [
        {"id": "gone", "path": "films/gone.png", "sex": "M", "chronological_age": ""},
        {"id": "odd", "path": f"films/{films[0].name}", "sex": "X", "chronological_age": ""},
    ]
    with fs.open(f"{prefix}/worklist.csv", "w") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)
    return films


@pytest.mark.slow
def test_the_batch_pipeline_scores_a_worklist_on_gcs_and_counts_every_row(project, stack, stack_env, tmp_path):
    """split -> ParallelFor(score) -> merge under kfp.local, the worklist, the films and the outputs in
    the GCS emulator, the model a registered version: every row comes back, in worklist order, with the
    months scoring here gives, and one MLflow run counts them."""
    import fsspec

    from boneage.serve.predict import Predictor, predict_files

    work, env, _ = project
    prefix = f"{services.DATA_BUCKET}/batch-{tmp_path.name}"
    films = _upload_worklist(work, prefix)
    model = "models:/boneage-synthetic@champion"
    command = ["boneage", "pipeline", "run-local", "--batch", "--worklist", f"gs://{prefix}/worklist.csv"]
    command += ["--scored-out", f"gs://{prefix}/out", "--model", model, "--pipeline-root", str(tmp_path / "kfp")]
    run([*command, "--set", f"batch.shard_films={BATCH_SHARD_FILMS}"], work, env)

    fs = fsspec.filesystem("gs", token="anon")
    summary = json.loads(fs.cat(f"{prefix}/out/summary.json"))
    rows = BATCH_FILMS + 2
    assert (summary["rows"], summary["not_scored"], summary["shards"]) == (rows, 0, -(-rows // BATCH_SHARD_FILMS))
    assert summary["scored"] + summary["rejected"] == rows and sum(summary["reasons"].values()) == summary["rejected"]
    # The two bad rows, each counted under its reason (the tiny model's check may refuse a film or two more).
    assert summary["reasons"]["no such file"] == 1 and summary["reasons"]["sex 'X' is not M or F"] == 1, summary["reasons"]
    with fs.open(f"{prefix}/out/scored.csv") as fh:
        scored = pd.read_csv(fh, dtype={"id": str}, keep_default_na=False)
    assert scored["csv_line"].tolist() == list(range(2, rows + 2))  # worklist order, every row
    local = predict_files(Predictor.load(model), films, sex="F", chronological_age=120)
    # Shards of BATCH_SHARD_FILMS batch the films otherwise than one local call, which moves float
    # sums in the last digits: a film whose check score sits at its threshold may go either way.
    clear = [abs(r.ood_score - 1.0) > OOD_SCORE_TIE for r in local]
    batch_refused = scored["rejected"].iloc[:BATCH_FILMS].astype(bool).tolist()
    assert [b for b, c in zip(batch_refused, clear, strict=True) if c] == [
        bool(r.rejected) for r, c in zip(local, clear, strict=True) if c
    ]
    batch_months = pd.to_numeric(scored["bone_age_months"].iloc[:BATCH_FILMS], errors="coerce").tolist()
    both = [(b, r.bone_age_months) for b, r in zip(batch_months, local, strict=True) if not r.rejected and b == b]
    assert len(both) >= BATCH_FILMS // 2
    assert [b for b, _ in both] == pytest.approx([m for _, m in both], abs=0.01)

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    experiment = client.get_experiment_by_name(yaml.safe_load((work / "params.yaml").read_text())["mlflow"]["experiment"])
    batch_runs = client.search_runs([experiment.experiment_id], "tags.`boneage.kind` = 'batch'")
    assert any(r.data.metrics.get("rows") == rows and r.data.params["worklist"].endswith("worklist.csv") for r in batch_runs)


@pytest.mark.slow
def test_the_kserve_manifest_of_a_registered_version_is_a_valid_inference_service(project, stack, stack_env, tmp_path):
    """`boneage serve manifest` for the champion: KServe's own SDK reads it back as a V1beta1InferenceService
    without losing a field, the storage URI holds the version's files in the bucket, and the resources,
    replicas and canary share are the config's."""
    import fsspec

    work, env, _ = project
    out = tmp_path / "isvc.yaml"
    command = ["boneage", "serve", "manifest", "--name", "boneage-synthetic", "--canary", "--out", str(out)]
    proc = run([*command, "--set", f"kserve.artifact_destination={services.ARTIFACT_DESTINATION}"], work, env)
    assert "InferenceService boneage" in proc.stdout
    manifest = yaml.safe_load(out.read_text())
    schema_check = [str(SERVE_PYTHON), str(REPO / "tests" / "serve" / "kserve_schema.py"), str(out)]
    checked = subprocess.run(schema_check, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr[-2000:]

    params = yaml.safe_load((work / "params.yaml").read_text())["kserve"]
    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": params["cpu"], "memory": params["memory"]},
        "limits": {"cpu": params["cpu_limit"], "memory": params["memory_limit"]},
    }
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (params["min_replicas"], params["max_replicas"])
    assert predictor["canaryTrafficPercent"] == params["canary_traffic_percent"]
    env_of = {e["name"]: e["value"] for e in container["env"]}
    champion = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri).get_model_version_by_alias("boneage-synthetic", "champion")
    assert env_of["BONEAGE_MODEL_NAME"] == f"boneage-synthetic/{champion.version}"
    # The storage URI is where the MLflow server keeps the version's files: the model is there.
    uri = env_of["STORAGE_URI"]
    assert uri.startswith(f"gs://{services.ARTIFACT_BUCKET}/")
    files = fsspec.filesystem("gs", token="anon").find(uri)
    assert any(f.endswith("/model.keras") for f in files) and any(f.endswith("/predictor.json") for f in files), files
