"""The local service stack, on 127.0.0.1 only: PostgreSQL (a private cluster in a project folder),
a GCS emulator, and an MLflow tracking server on both, with basic auth.

`make services` / `boneage services up` starts it; `boneage services env` prints the variables that
point `boneage`, DVC and MLflow's client at it; `make services-down` stops it. Tests start their own
stacks on free ports through the same :func:`start`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from boneage.errors import BoneageError

DEFAULT_ROOT = Path(".services")
HOST = "127.0.0.1"
DEFAULT_PORTS = {"postgres": 55432, "gcs": 9023, "mlflow": 5001}
PG_USER = "boneage"
PG_DATABASE = "mlflow"
MLFLOW_ADMIN = "admin"
ARTIFACT_BUCKET = "mlflow-artifacts"
# Where the MLflow server keeps the files it proxies as mlflow-artifacts:/ (kserve.artifact_destination
# for a manifest written against this stack).
ARTIFACT_DESTINATION = f"gs://{ARTIFACT_BUCKET}/mlflow"
DATA_BUCKET = "boneage-data"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
STATE_FILE = "services.json"
START_TIMEOUT_S = 60.0
# How long the MLflow server trusts a checked password (MLflow's auth_cache_ttl_seconds; off by
# default). Without it every request re-derives the scrypt hash: 0.25-0.45 s a request on 2 cores
# (benchmarks/bench_tracking.py), and a training run makes hundreds. One worker, so a password
# changed through the API is dropped from the cache at once; one changed in the database directly
# waits this long.
AUTH_CACHE_SECONDS = 60


@dataclass
class Stack:
    root: str
    postgres_port: int
    gcs_port: int
    mlflow_port: int
    password: str
    pids: dict

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def gcs_endpoint(self) -> str:
        return f"http://{HOST}:{self.gcs_port}"

    @property
    def postgres_uri(self) -> str:
        # SQLAlchemy's default PostgreSQL driver is psycopg 3; the services extra installs psycopg2.
        return self.postgres_dsn.replace("postgresql://", "postgresql+psycopg2://", 1)

    @property
    def postgres_dsn(self) -> str:
        """For psycopg2 and psql (no SQLAlchemy driver suffix)."""
        return f"postgresql://{PG_USER}:{self.password}@{HOST}:{self.postgres_port}/{PG_DATABASE}"

    def client_env(self) -> dict[str, str]:
        """What a client needs: the MLflow server and its credentials, and the GCS emulator."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            PASSWORD_ENV: self.password,
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            # gcsfs (DVC's GCS remote) hangs against the emulator without this.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _wait(what: str, ready, log: Path, pid: int | None = None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not _alive(pid):
            break  # it died: no point waiting out the timeout
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no log)"
    raise BoneageError(f"{what} did not start; the end of {log}:\n{tail}")


def _pg_bindir() -> Path:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise BoneageError(
            "PostgreSQL is not installed: `make services` installs it (sudo apt-get install postgresql), or put pg_ctl on PATH"
        )
    return found[-1].parent


def _as_db_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: under root, run it as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _chown_for_db(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _start_postgres(root: Path, port: int, password: str) -> None:
    bindir = _pg_bindir()
    pg = root / "postgres"
    data, sockets, log = pg / "data", pg / "sockets", pg / "postgres.log"
    for folder in (pg, sockets):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        _chown_for_db(folder)
    if not (data / "PG_VERSION").is_file():
        pwfile = pg / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        _chown_for_db(pwfile)
        try:
            subprocess.run(
                _as_db_owner(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        PG_USER,
                        "-A",
                        "scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                    ]
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as exc:
            raise BoneageError(f"initdb failed: {exc.stderr.strip()[-1000:]}") from None
        finally:
            pwfile.unlink(missing_ok=True)
    log.touch()
    _chown_for_db(log)
    opts = f"-p {port} -c listen_addresses={HOST} -k {sockets}"
    proc = subprocess.run(
        _as_db_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start"]),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BoneageError(f"PostgreSQL did not start: {proc.stderr.strip()[-500:]}; see {log}")
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=port, user=PG_USER, password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {PG_DATABASE}")
    conn.close()


def _spawn(cmd: list[str], log: Path, cwd: Path, env: dict | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def _start_gcs(root: Path, port: int) -> int:
    folder = root / "gcs"
    folder.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("gcp-storage-emulator") or str(Path(sys.executable).parent / "gcp-storage-emulator")
    pid = _spawn(
        [exe, "start", "--host", HOST, "--port", str(port), "--default-bucket", ARTIFACT_BUCKET],
        folder / "emulator.log",
        cwd=folder,
    )
    _wait("the GCS emulator", lambda: _port_open(port), folder / "emulator.log", pid)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(
        credentials=AnonymousCredentials(), project="boneage-local", client_options={"api_endpoint": f"http://{HOST}:{port}"}
    )
    for bucket in (ARTIFACT_BUCKET, DATA_BUCKET):
        if gcs.lookup_bucket(bucket) is None:
            gcs.create_bucket(bucket)
    return pid


def _start_mlflow(root: Path, stack: Stack, auth_cache_seconds: int) -> int:
    folder = root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    auth_ini = folder / "basic_auth.ini"
    # MLflow's basic-auth app reads its admin account from this file; it lives in the private
    # services folder (0600) and is rewritten from the environment's password at each start.
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{(folder / 'basic_auth.db').resolve()}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        f"admin_password = {stack.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {auth_cache_seconds}\n"
    )
    auth_ini.chmod(0o600)
    # The auth app's CSRF key: random per stack, kept with it so restarts keep sessions valid.
    secret_key = folder / "flask_secret"
    if not secret_key.is_file():
        secret_key.write_text(secrets.token_hex(32))
        secret_key.chmod(0o600)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini.resolve()),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key.read_text().strip(),
        "STORAGE_EMULATOR_HOST": stack.gcs_endpoint,
        "GOOGLE_CLOUD_PROJECT": "boneage-local",
        # MLflow 3 starts a job runner and seven huey consumers for its GenAI jobs, which boneage
        # never submits: 8 processes; with them the stack's MLflow processes held 1,153 MiB, without
        # them 514 MiB (measured at start, 2026-12-02).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", PASSWORD_ENV):
        env.pop(key, None)
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    pid = _spawn(
        [
            exe,
            "server",
            "--host",
            HOST,
            "--port",
            str(stack.mlflow_port),
            "--backend-store-uri",
            stack.postgres_uri,
            "--artifacts-destination",
            ARTIFACT_DESTINATION,
            "--serve-artifacts",
            "--app-name",
            "basic-auth",
            "--workers",
            "1",
        ],
        folder / "server.log",
        cwd=folder,
        env=env,
    )

    def healthy() -> bool:
        import requests

        try:
            return requests.get(f"{stack.mlflow_uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    _wait("the MLflow server", healthy, folder / "server.log", pid, timeout=START_TIMEOUT_S * 2)
    return pid


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child and has exited
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_until_gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait for a process to exit (reaping it if it is our child); False if it is still there."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def load(root: Path = DEFAULT_ROOT) -> Stack | None:
    state = Path(root) / STATE_FILE
    if not state.is_file():
        return None
    stack = Stack(**json.loads(state.read_text()))
    return stack if all(_alive(pid) for pid in stack.pids.values()) and _port_open(stack.postgres_port) else None


def start(
    root: Path = DEFAULT_ROOT,
    ports: dict[str, int] | None = None,
    password: str | None = None,
    auth_cache_seconds: int = AUTH_CACHE_SECONDS,
) -> Stack:
    """Start (or find running) the three services under ``root``. The MLflow admin password comes
    from MLFLOW_TRACKING_PASSWORD; without it one is generated and kept in ``root`` (0600).
    ``auth_cache_seconds`` 0 makes the server check the password's hash on every request."""
    root = Path(root).resolve()
    running = load(root)
    if running:
        return running
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the postgres user must reach its folder below
    ports = {**DEFAULT_PORTS, **(ports or {})}
    for name, port in ports.items():
        if _port_open(port):
            raise BoneageError(f"port {port} for {name} is taken on {HOST}; stop what holds it or pick another port")
    secret_file = root / "password"
    password = password or os.environ.get(PASSWORD_ENV) or (secret_file.read_text().strip() if secret_file.is_file() else "")
    if not password:
        password = secrets.token_urlsafe(24)
        print(f"{PASSWORD_ENV} not set: generated one, kept in {secret_file} (boneage services env prints it)", file=sys.stderr)
    secret_file.write_text(password)
    secret_file.chmod(0o600)
    stack = Stack(str(root), ports["postgres"], ports["gcs"], ports["mlflow"], password, {})
    try:
        _start_postgres(root, stack.postgres_port, password)
        stack.pids["postgres"] = int((root / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        stack.pids["gcs"] = _start_gcs(root, stack.gcs_port)
        stack.pids["mlflow"] = _start_mlflow(root, stack, auth_cache_seconds)
    except BaseException:
        _write_state(root, stack)
        stop(root)
        raise
    _write_state(root, stack)
    return stack


def _write_state(root: Path, stack: Stack) -> None:
    state = root / STATE_FILE
    state.write_text(json.dumps(asdict(stack), indent=2))
    state.chmod(0o600)


def stop(root: Path = DEFAULT_ROOT) -> bool:
    """Stop whatever ``start`` left running under ``root``; True if anything was running."""
    root = Path(root).resolve()
    state = root / STATE_FILE
    if not state.is_file():
        return False
    stack = Stack(**json.loads(state.read_text()))
    for name in ("mlflow", "gcs"):
        pid = stack.pids.get(name)
        if pid and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    data = root / "postgres" / "data"
    if (data / "postmaster.pid").is_file():
        subprocess.run(
            _as_db_owner([str(_pg_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in stack.pids.values()):
        time.sleep(0.2)
    for pid in stack.pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    state.unlink()
    return True


def env_lines(stack: Stack) -> str:
    return "".join(f"export {k}={v}\n" for k, v in stack.client_env().items())
