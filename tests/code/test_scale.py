"""The pieces of serving at scale that need no model: the batch pipeline's shards and merge, the
monitor's statistics and its records, and the InferenceService's model URI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage.config import MonitorConfig
from boneage.errors import BoneageError
from boneage.model.ood import PARTS
from boneage.orchestrate.kserve_manifest import storage_uri
from boneage.serve import batch
from boneage.serve.monitor import compare
from boneage.serve.monitoring import read_records
from boneage.serve.predict import read_worklist


def _worklist(tmp_path, rows: int):
    table = tmp_path / "worklist.csv"
    pd.DataFrame({"path": [f"films/{i}.png" for i in range(rows)], "sex": "F"}).to_csv(table, index=False)
    return table


def test_shards_cover_every_row_once_and_never_exceed_the_limit(tmp_path):
    table = _worklist(tmp_path, 23)
    names = batch.split_worklist(str(table), tmp_path / "shards", shard_films=5, max_shards=3)
    # 23 rows, at most 3 shards: 8 a shard, not 5.
    assert len(names) == 3
    lines = [r.csv_line for n in names for r in batch.read_shard(tmp_path / "shards" / n)]
    assert lines == list(range(2, 25))
    paths = [r.path for r in batch.read_shard(tmp_path / "shards" / names[0])]
    assert paths[0] == str(tmp_path / "films" / "0.png")  # resolved against the worklist's folder


def test_a_worklist_on_a_bucket_resolves_relative_paths_against_its_folder(monkeypatch):
    from boneage.serve import predict

    monkeypatch.setattr(predict, "_worklist_text", lambda table: "path,sex\nfilms/a.png,F\ngs://other/b.png,M\n")
    rows = read_worklist("gs://bucket/study/worklist.csv")
    assert [r.path for r in rows] == ["gs://bucket/study/films/a.png", "gs://other/b.png"]


def _scored_shard(path, lines: list[int]) -> None:
    pd.DataFrame(
        {"csv_line": lines, "id": [str(x) for x in lines], "path": "x.png", "bone_age_months": 100.0, "rejected": ""}
    ).to_csv(path, index=False)


def test_a_row_no_shard_returned_is_written_as_not_scored_and_counted(tmp_path):
    table = _worklist(tmp_path, 6)
    _scored_shard(tmp_path / "a.csv", [2, 3, 4])
    _scored_shard(tmp_path / "b.csv", [6, 7])  # line 5 lost
    merged, missing = batch.merge_scored(str(table), [tmp_path / "a.csv", tmp_path / "b.csv"])
    assert missing == [5] and merged["csv_line"].tolist() == [2, 3, 4, 5, 6, 7]
    summary = batch.summarise(merged, str(table), "m", 2, missing)
    assert (summary.rows, summary.scored, summary.rejected, summary.not_scored) == (6, 5, 0, 1)


def test_rejection_reasons_are_counted_without_each_films_details():
    assert batch.reason_kind("gs://b/x.png: no such file", "gs://b/x.png") == "no such file"
    ood = "out of distribution: the image does not look like ... (texture: 2.1x the threshold)"
    assert batch.reason_kind(ood, "x.png") == "out of distribution"


def _records(n: int, rng, shift: float = 0.0, refused: int = 0, turned: int = 0) -> pd.DataFrame:
    frame = pd.DataFrame({part: rng.gamma(4.0, 0.1, n) + shift for part in PARTS})
    frame["ood_score"] = frame[list(PARTS)].max(axis=1)
    frame["bone_age_months"] = rng.normal(120, 40, n)
    frame["refused"] = [i < refused for i in range(n)]
    frame["view"] = ["turned 90° clockwise" if i < turned else "upright" for i in range(n)]
    return frame


@pytest.mark.parametrize("seed", range(20))
def test_windows_from_the_reference_distribution_raise_no_alert(seed):
    rng = np.random.default_rng(seed)
    result = compare(_records(200, rng, refused=1), _records(300, rng, refused=1), MonitorConfig(), 0.005)
    assert result.judged and result.alerts == []


def test_a_shifted_score_a_refusal_surge_and_turned_films_each_raise_their_alert():
    rng = np.random.default_rng(0)
    reference = _records(300, rng)
    assert any(
        "features score moved" in a for a in compare(_records(200, rng, shift=0.2), reference, MonitorConfig(), 0.005).alerts
    )
    assert any("refused" in a for a in compare(_records(200, rng, refused=12), reference, MonitorConfig(), 0.005).alerts)
    assert any("not upright" in a for a in compare(_records(200, rng, turned=30), reference, MonitorConfig(), 0.005).alerts)


def test_a_window_too_small_is_not_judged():
    rng = np.random.default_rng(0)
    result = compare(_records(20, rng, shift=5.0), _records(300, rng), MonitorConfig(), 0.005)
    assert not result.judged and result.alerts == []


def test_records_are_read_back_within_the_window_and_a_bad_file_is_named(tmp_path):
    fields = {
        f: None for f in ("model", "film", "sex", "refused", "reason", "bone_age_months", "view", "ood_score", "latency_ms")
    }
    lines = [{**fields, **{p: 0.5 for p in PARTS}, "time": t} for t in ("2026-12-01T08:00:00+00:00", "2026-12-01T10:00:00+00:00")]
    (tmp_path / "records-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert len(read_records(str(tmp_path), since="2026-12-01T09:00")) == 1
    assert len(read_records(str(tmp_path), until="2026-12-01T09:00")) == 1
    (tmp_path / "records-2.jsonl").write_text("{not json\n")
    with pytest.raises(BoneageError, match="records-2.jsonl: not a records file"):
        read_records(str(tmp_path))


def test_the_model_uri_a_cluster_reads():
    proxied = "mlflow-artifacts:/1/models/m-abc/artifacts"
    assert storage_uri(proxied, "gs://bucket/mlflow/") == "gs://bucket/mlflow/1/models/m-abc/artifacts"
    assert storage_uri("gs://b/x", "gs://unused") == "gs://b/x"
    with pytest.raises(BoneageError, match="cannot read"):
        storage_uri("file:///home/me/mlruns/1/x", "gs://bucket")
