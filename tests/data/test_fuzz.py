"""Fuzzing the readers of untrusted input, for a bounded number of examples: whatever the bytes,
the label CSV reader and the image decoder either succeed or raise the project's own errors (which
name the file and the reason), never a traceback from deep inside a library."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boneage.config import Params
from boneage.errors import BadInputError, BoneageError
from boneage.data.imaging import read_radiograph_bytes
from boneage.data.ingest import ingest
from tests.conftest import write_kaggle_dataset

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_PIXELS = 4_000_000


def _png() -> bytes:
    img = np.zeros((64, 48), np.uint8)
    img[10:60, 12:36] = 200
    return cv2.imencode(".png", img)[1].tobytes()


GOOD_PNG = _png()


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        read_radiograph_bytes(data, MAX_PIXELS)
    except BadInputError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD_PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_pngs_decode_or_are_refused(mutations):
    data = bytearray(GOOD_PNG)
    for offset, value in mutations:
        data[offset] = value
    try:
        radiograph = read_radiograph_bytes(bytes(data), MAX_PIXELS)
    except BadInputError:
        return
    assert radiograph.pixels.ndim == 2 and radiograph.pixels.size <= MAX_PIXELS


cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(st.lists(st.tuples(cell, cell, cell), max_size=8))
def test_fuzzed_label_rows_are_quarantined_or_accepted(tmp_path_factory, rows):
    # Only the CSV is fuzzed: the fuzzed ids get no image file (a missing image is quarantined).
    root = write_kaggle_dataset(tmp_path_factory.mktemp("fuzz"), [("1", "100", "True"), *rows],
                                images={row[0]: None for row in rows if row[0] != "1"})
    # A fuzzed row may reuse the good row's id; then the duplicate rule decides its fate.
    reuses_good_id = any(row[0].strip() == "1" for row in rows)
    try:
        result = ingest(Params(), root / "out", source=str(root))
    except BoneageError as exc:
        assert reuses_good_id and "no usable rows remain" in str(exc), str(exc)
        return
    accepted, refused = result.manifest, result.quarantine
    if reuses_good_id:
        assert "1" in set(accepted["id"]) or refused.loc[refused["id"] == "1", "reason"].str.contains("duplicate").all()
    else:
        assert "1" in set(accepted["id"]), f"the good row was lost:\n{refused}"
    # Every non-blank row is accounted for, in the manifest or in the quarantine with a reason.
    lines = {int(v) for v in accepted["csv_line"]} | {int(v) for v in refused["csv_line"] if str(v) != ""}
    expected = {2} | {line for line, row in enumerate(rows, start=3) if any(c.strip() for c in row)}
    assert lines == expected
    assert refused["reason"].str.len().gt(0).all()
