"""Google Cloud Storage: download a dataset prefix, verified, resumable, in parallel.

The same code talks to real GCS (Application Default Credentials) and to an emulator
(``STORAGE_EMULATOR_HOST``, anonymous). Each object is written to a ``.partial`` file, checked
against the object's CRC32C (or MD5) and only then renamed into place, so an interrupted download
never leaves a file that looks complete, and a rerun skips every file already present and verified.
"""

from __future__ import annotations

import base64
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from boneage.contracts import atomic_path
from boneage.errors import BoneageError

CHUNK_BYTES = 1 << 20
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "boneage-local"


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or len(uri) <= len("gs://"):
        raise BoneageError(f"{uri}: expected gs://bucket/prefix")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


def client():
    """A storage client: anonymous against an emulator, Application Default Credentials otherwise."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if os.environ.get(EMULATOR_ENV):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            credentials=AnonymousCredentials(), project=os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
        )
    try:
        return storage.Client()
    except DefaultCredentialsError as exc:
        raise BoneageError(
            "no Google Cloud credentials: run `gcloud auth application-default login`, or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key file ({exc})"
        ) from None


def fsspec_options(url: str) -> dict:
    """What fsspec needs to open ``url``: anonymous access for gs:// against an emulator (gcsfs would
    otherwise probe for credentials, and wait on a metadata server that is not there); nothing else."""
    if url.startswith("gs://") and os.environ.get(EMULATOR_ENV):
        return {"token": "anon"}
    return {}


def retry_policy(deadline_seconds: float):
    """Exponential backoff on 429, 5xx, connection errors and timeouts, up to ``deadline_seconds``."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline_seconds)


def _crc32c_b64(path: Path) -> str:
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode()


def _md5_b64(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def verified(path: Path, blob) -> bool:
    """The local file has the object's size and checksum (CRC32C, else MD5)."""
    if not path.is_file() or path.stat().st_size != (blob.size or 0):
        return False
    if blob.crc32c:
        return _crc32c_b64(path) == blob.crc32c
    if blob.md5_hash:
        return _md5_b64(path) == blob.md5_hash
    return False  # nothing to verify against: download again


def _local_path(dest: Path, prefix: str, name: str) -> Path:
    rel = PurePosixPath(name[len(prefix) :].lstrip("/")) if prefix else PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise BoneageError(f"object {name!r} would land outside {dest}; refusing it")
    return dest.joinpath(*rel.parts)


@dataclass
class DownloadReport:
    root: Path
    downloaded: int
    skipped: int
    bytes_downloaded: int


def download_prefix(
    uri: str, dest: Path, workers: int = 8, deadline_seconds: float = 120.0, timeout_seconds: float = 60.0
) -> DownloadReport:
    """Mirror ``gs://bucket/prefix`` into ``dest``."""
    from google.api_core import exceptions as gexc
    from google.resumable_media.common import DataCorruption

    bucket_name, prefix = parse_uri(uri)
    retry = retry_policy(deadline_seconds)
    gcs = client()
    dest = Path(dest)
    try:
        blobs = [
            b
            for b in gcs.list_blobs(bucket_name, prefix=prefix or None, retry=retry, timeout=timeout_seconds)
            if not b.name.endswith("/")
        ]
    except gexc.NotFound:
        raise BoneageError(f"{uri}: bucket {bucket_name!r} not found") from None
    except gexc.Forbidden as exc:
        raise BoneageError(f"{uri}: access denied ({exc.message}); check the credentials' storage.objects.list") from None
    except (gexc.GoogleAPIError, OSError) as exc:
        raise BoneageError(f"{uri}: listing failed after retrying for up to {deadline_seconds:.0f} s: {exc}") from None
    if not blobs:
        raise BoneageError(f"{uri}: no objects under this prefix")

    todo = [(b, _local_path(dest, prefix, b.name)) for b in blobs]
    pending = [(b, p) for b, p in todo if not verified(p, b)]
    skipped = len(todo) - len(pending)
    total = sum(b.size or 0 for b, _ in pending)

    def fetch(blob, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            # checksum="crc32c" makes the library verify the bytes as they arrive.
            blob.download_to_filename(
                str(partial), checksum="crc32c" if blob.crc32c else "md5", retry=retry, timeout=timeout_seconds
            )
            if not verified(partial, blob):
                raise DataCorruption(None, f"{blob.name}: checksum mismatch after download")
        return blob.size or 0

    done_bytes = 0
    failures: list[str] = []
    with (
        tqdm(total=total, unit="B", unit_scale=True, desc=f"download {uri}") as bar,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        futures = {pool.submit(fetch, b, p): b.name for b, p in pending}
        for future in as_completed(futures):
            try:
                size = future.result()
            except (gexc.GoogleAPIError, DataCorruption, OSError, ValueError) as exc:
                failures.append(f"{futures[future]}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
                continue
            done_bytes += size
            bar.update(size)
    if failures:
        shown = "\n  ".join(failures[:5])
        raise BoneageError(
            f"{uri}: {len(failures)} of {len(pending)} downloads failed after retrying for up to "
            f"{deadline_seconds:.0f} s each; the {len(pending) - len(failures) + skipped} verified files are kept "
            f"and a rerun resumes from them:\n  {shown}"
        )
    return DownloadReport(dest, len(pending), skipped, done_bytes)


def upload_folder(folder: Path, uri: str, deadline_seconds: float = 120.0) -> int:
    """Upload every file below ``folder`` to ``gs://bucket/prefix`` (for seeding buckets and tests)."""
    bucket_name, prefix = parse_uri(uri)
    bucket = client().bucket(bucket_name)
    count = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = "/".join(filter(None, [prefix, path.relative_to(folder).as_posix()]))
        bucket.blob(name).upload_from_filename(str(path), retry=retry_policy(deadline_seconds))
        count += 1
    return count
