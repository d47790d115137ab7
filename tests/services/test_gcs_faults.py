"""GCS faults against a real emulator of the test's own: an outage mid-ingest fails after bounded
retries with a clear error and writes no manifest; after a restart the ingest resumes and fetches
only the files it did not have verified."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid

import pytest

from boneage.config import Params
from boneage.data import gcs
from boneage.data.ingest import ingest
from boneage.errors import BoneageError
from boneage.orchestrate import services
from tests.conftest import write_kaggle_dataset

# Slow: it starts and stops a GCS emulator.
pytestmark = pytest.mark.slow

RETRY_SECONDS = 3.0


def test_an_outage_mid_ingest_fails_clearly_and_a_restart_resumes(tmp_path, monkeypatch):
    folder, port = tmp_path / "gcs", services.free_port()
    pid = services._start_gcs(folder, port)  # stored on disk: a restart keeps the bucket
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        rows = [(str(i), str(10 * i + 5), "True" if i % 2 else "False") for i in range(1, 13)]
        local = write_kaggle_dataset(tmp_path / "kaggle", rows)
        uri = f"gs://{services.DATA_BUCKET}/{uuid.uuid4().hex[:8]}"
        gcs.upload_folder(local, uri)
        params = Params.model_validate({"data": {"download_retry_seconds": RETRY_SECONDS}})
        out = tmp_path / "ingest"
        ingest(params, out, source=uri)
        cache = next((out / ".cache").glob("gs-*"))

        # A crash mid-download: three files never finished (left under their .partial names), and
        # the manifest was not written yet. Then the service goes down.
        victims = sorted(cache.rglob("*.png"))[:3]
        for victim in victims:
            victim.rename(victim.with_name(victim.name + ".partial"))
        (out / "manifest.csv").unlink()
        os.killpg(pid, signal.SIGTERM)
        assert services.wait_until_gone(pid), "the emulator did not stop"

        started = time.monotonic()
        with pytest.raises(BoneageError, match=rf"{uri}.*retrying for up to {RETRY_SECONDS:.0f} s"):
            ingest(params, out, source=uri)
        assert time.monotonic() - started < 60, "retries must be bounded"
        assert not (out / "manifest.csv").exists(), "nothing may look ingested after a failed download"
        assert not any(v.exists() for v in victims), "a half-written file must never be taken as complete"

        pid = services._start_gcs(folder, port)
        report = gcs.download_prefix(uri, cache, deadline_seconds=RETRY_SECONDS)
        assert (report.downloaded, report.skipped) == (3, len(rows) - 3 + 1), "verified files were fetched again"
        result = ingest(params, out, source=uri)
        assert len(result.manifest) == len(rows)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
