"""Split determinism and stability through the real ingest step."""

from __future__ import annotations

from boneage.config import Params
from boneage.data.ingest import ingest
from tests.conftest import write_kaggle_dataset


def test_ingest_split_is_deterministic_and_stable_when_rows_are_added(tmp_path):
    rows = [(str(i), str(6 + (i * 7) % 220), "True" if i % 2 else "False") for i in range(1, 61)]
    first = ingest(Params(), tmp_path / "a", source=str(write_kaggle_dataset(tmp_path / "s1", rows[:40])))
    again = ingest(Params(), tmp_path / "b", source=str(write_kaggle_dataset(tmp_path / "s2", rows[:40])))
    grown = ingest(Params(), tmp_path / "c", source=str(write_kaggle_dataset(tmp_path / "s3", rows)))
    split_of = lambda r: dict(zip(r.manifest["id"], r.manifest["split"], strict=True))  # noqa: E731
    assert split_of(first) == split_of(again)
    assert {k: split_of(grown)[k] for k in split_of(first)} == split_of(first)
