"""`boneage predict`'s work, behind its one call: check the request, load the model, score the
films or the worklist, write the reports and the scored worklist; the CLI prints the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from boneage.config import Params
from boneage.contracts import INTENDED_USE_NOTICE, parse_optional_age, parse_sex, write_csv_atomic
from boneage.errors import BadInputError, BoneageError
from boneage.serve.predict import (
    Prediction,
    Predictor,
    WorklistRow,
    predict_files,
    predict_worklist,
    read_worklist,
    worklist_table,
)


@dataclass
class PredictRequest:
    """What `boneage predict` was asked: images sharing one sex and age, or a worklist."""

    images: list[Path] = field(default_factory=list)
    table: Path | None = None
    sex: str | None = None
    chronological_age: float | None = None
    model: str = "models:/boneage@champion"
    out: Path | None = None
    report: Path | None = None

    def check(self) -> None:
        """A bad option is the caller's mistake for every image: refused before anything loads."""
        if bool(self.images) == (self.table is not None):
            raise BoneageError("give either images or --table WORKLIST.csv (not both)")
        if self.table is not None and (self.sex is not None or self.chronological_age is not None):
            raise BoneageError("with --table, sex and chronological age come from the worklist's columns")
        if self.out is not None and self.table is None:
            raise BoneageError("--out writes a scored worklist: use it with --table")
        try:
            if self.sex is not None:
                parse_sex(self.sex)
            parse_optional_age(self.chronological_age, "chronological age")
        except BadInputError as exc:
            raise BoneageError(exc.reason) from None
        missing = [str(p) for p in self.images if not p.exists()]
        if missing:
            raise BoneageError(f"not found: {', '.join(missing)}")


@dataclass
class PredictOutcome:
    results: list[Prediction]
    worklist: list[WorklistRow] | None
    reports: list[Path]
    scored_worklist: Path | None

    @property
    def rejected(self) -> int:
        return sum(1 for r in self.results if r.rejected)

    def records(self) -> list[dict]:
        """The JSON form: each prediction (with the worklist row's id and line), and the notice."""
        records = [{**r.as_dict(), "notice": INTENDED_USE_NOTICE} for r in self.results]
        for record, row in zip(records, self.worklist or [], strict=False):
            record.update(id=row.id, csv_line=row.csv_line)
        return records

    def lines(self) -> list[str]:
        """The text form: a line per film (and its warning), then the notice."""
        return [prediction_line(r) for r in self.results] + [f"NOTE: {INTENDED_USE_NOTICE}"]


def prediction_line(r: Prediction) -> str:
    if r.rejected:
        return f"{r.source}: REJECTED: {r.rejected}"
    lo, hi = r.interval_months
    line = f"{r.source}: {r.bone_age_months:.1f} months ({r.bone_age}), {r.interval_level:.0%} interval {lo:.1f}-{hi:.1f}"
    if r.assessment:
        a = r.assessment
        sds = f", SDS {a['sds']:+.2f}" if a["sds"] is not None else ""
        line += f"; CA {a['chronological_age_months']:.1f}, BA-CA {a['difference_months']:+.1f}{sds}: {a['call']}"
    if r.orientation:
        line += f" [arrived {r.orientation}: put upright]"
    if r.warning:
        line = f"{line}\n  WARNING: {r.warning}"
    return line


def run_predict(request: PredictRequest, params: Params) -> PredictOutcome:
    """Check the request, load the model (an MLflow URI: the server is checked first), score, and
    write the reports and the scored worklist that were asked for."""
    request.check()
    worklist = read_worklist(request.table) if request.table is not None else None
    if request.model.startswith(("models:/", "runs:/")):
        from boneage import tracking

        tracking.connect(params)
    predictor = Predictor.load(request.model)
    if worklist is not None:
        results = predict_worklist(predictor, worklist)
    else:
        results = predict_files(predictor, request.images, request.sex, request.chronological_age)
    reports = []
    if request.report is not None:
        from boneage.serve.clinical_report import write_report

        reports = [write_report(predictor, r, request.report) for r in results if not r.rejected]
    if request.out is not None:
        request.out.parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(worklist_table(worklist, results), request.out)
    return PredictOutcome(results, worklist, reports, request.out)
