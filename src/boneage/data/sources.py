"""Where an RSNA-format dataset comes from: a local folder, a .zip of one, or a GCS prefix.

Each source is turned into a local folder before ingest reads it, so that ingest has one code path.
Remote schemes plug in through ``SOURCE_FETCHERS``.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from boneage.config import Params
from boneage.contracts import SYNTHETIC_SOURCE
from boneage.data.synth import ensure_synthetic_dataset
from boneage.errors import BoneageError

# Members of an archive beyond this total are refused as a zip bomb (the full RSNA set is ~10 GB).
MAX_ARCHIVE_BYTES = 64 * 1024**3


def _safe_member_path(name: str, target: Path) -> Path:
    """Refuse absolute paths, '..' and anything that would land outside ``target`` (zip slip)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise BoneageError(f"archive member {name!r} would escape the extraction folder; refusing the archive")
    dest = (target / posix).resolve()
    if not dest.is_relative_to(target.resolve()):
        raise BoneageError(f"archive member {name!r} would escape the extraction folder; refusing the archive")
    return dest


def extract_zip(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` safely: no zip slip, no links, bounded size."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BoneageError(f"{archive}: not a readable zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        total = 0
        for info in members:
            _safe_member_path(info.filename, target)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise BoneageError(f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive")
            total += info.file_size
        if total > MAX_ARCHIVE_BYTES:
            raise BoneageError(f"{archive}: expands to {total:,} bytes, over the {MAX_ARCHIVE_BYTES:,} limit")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for info in tqdm(members, desc=f"extract {archive.name}", unit="file", leave=False):
            dest = _safe_member_path(info.filename, partial)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        # Rename last, so an interrupted extraction never looks complete.
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _archive_cache_dir(archive: Path, cache_root: Path) -> Path:
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root / f"{archive.stem}-{key}"


def _fetch_gcs(uri: str, cache_root: Path, workers: int, retry_seconds: float) -> Path:
    """Mirror the bucket prefix into the cache (verified and resumable; see boneage.data.gcs)."""
    from boneage.data.gcs import download_prefix

    target = cache_root / f"gs-{hashlib.sha256(uri.rstrip('/').encode()).hexdigest()[:16]}"
    download_prefix(uri, target, workers=workers, deadline_seconds=retry_seconds)
    return target


SOURCE_FETCHERS: dict[str, Callable[[str, Path, int, float], Path]] = {"gs": _fetch_gcs}


def materialise(source: str, cache_root: Path, download_workers: int = 8, download_retry_seconds: float = 120.0) -> Path:
    """Return a local folder holding the dataset named by ``source``."""
    scheme = source.split("://", 1)[0] if "://" in source else ""
    if scheme:
        fetch = SOURCE_FETCHERS.get(scheme)
        if fetch is None:
            raise BoneageError(f"{source}: unsupported source scheme {scheme!r} (use a folder, a .zip or gs://)")
        return fetch(source, cache_root, download_workers, download_retry_seconds)
    path = Path(source)
    if not path.exists():
        raise BoneageError(f"{source}: source does not exist")
    if path.is_file() and path.suffix.lower() == ".zip":
        target = _archive_cache_dir(path, cache_root)
        if not target.is_dir():
            extract_zip(path, target)
        return target
    if not path.is_dir():
        raise BoneageError(f"{source}: expected a folder in the Kaggle layout or a .zip of one")
    return path


def resolve_source(params: Params, source: str | None = None) -> str:
    """The source to ingest: the embedded synthetic dataset (generated on first use) when the
    source names it and it is not on disk yet; anything else as given."""
    source = source or params.data.source
    if source == SYNTHETIC_SOURCE or (source == params.data.synthetic_dir and not Path(source).exists()):
        return str(ensure_synthetic_dataset(params))
    return source
