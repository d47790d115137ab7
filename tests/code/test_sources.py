"""Archive sources: safe extraction (no zip slip, no links) and clear errors."""

from __future__ import annotations

import stat
import zipfile

import pytest

from boneage.data.sources import extract_zip, materialise
from boneage.errors import BoneageError


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("boneage-training-dataset.csv", "id,boneage,male\n")
        zf.writestr("../../escaped.txt", "gotcha")
    with pytest.raises(BoneageError, match="escape the extraction folder"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out").exists()


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("boneage-training-dataset.csv")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BoneageError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_not_a_zip(tmp_path):
    bad = tmp_path / "data.zip"
    bad.write_text("nope")
    with pytest.raises(BoneageError, match="not a readable zip"):
        materialise(str(bad), tmp_path / "cache")


def test_unknown_scheme(tmp_path):
    with pytest.raises(BoneageError, match="unsupported source scheme"):
        materialise("ftp://host/data", tmp_path)
