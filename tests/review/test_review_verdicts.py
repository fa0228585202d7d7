"""Verdicts in the service database: recorded, listed back typed, filtered, checked, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from medsight.errors import MedsightError
from medsight.review.verdicts import Verdict, latest_per_finding, list_verdicts, record_verdict, reviewed_studies
from medsight.serving.database import open_database, schema_versions


def _record(engine: Engine, **overrides: object) -> Verdict:
    values: dict[str, object] = {
        "study_uid": "1.2.3",
        "finding_id": "cr-1/0",
        "model": "cr",
        "model_version": "0.1.0",
        "bundle_checksum": "ab" * 32,
        "label": "pneumonia",
        "probability": 0.83,
        "ai_positive": True,
        "reader": "alice",
        "role": "radiologist",
        "decision": "agree",
        "reader_label": "pneumonia",
        "reader_positive": True,
        "comment": "",
        "seconds_spent": 12.5,
        "source_sop_uids": ["1.2.3.4"],
        "reader_sr_sop_uid": "1.2.3.9",
        "files": {"sr": "1.2.3/review-1/reader_sr.dcm"},
    }
    values.update(overrides)
    return record_verdict(engine, **values)  # type: ignore[arg-type]


def _roundtrip(engine: Engine) -> None:
    first = _record(engine, submitted_at=1000.0)
    edited = _record(
        engine,
        decision="edit",
        edit={"mask": {"1.2.3.4": "1.2.3/review-2/mask_1.2.3.4.png"}},
        reader_label="pneumonia",
        reader_seg_sop_uid="1.2.3.10",
        files={"sr": "a.dcm", "seg": "b.dcm"},
        submitted_at=2000.0,
    )
    other = _record(
        engine,
        model="ct",
        study_uid="5.6",
        finding_id="ct-3/0",
        decision="disagree",
        reader_label="normal",
        reader_positive=False,
        comment="artefact",
        submitted_at=1500.0,
    )
    assert first.verdict_id != edited.verdict_id
    assert schema_versions(engine)["review"] == 1
    everything = list_verdicts(engine)
    assert [v.verdict_id for v in everything] == [first.verdict_id, other.verdict_id, edited.verdict_id]
    cr = list_verdicts(engine, model="cr")
    assert [v.decision for v in cr] == ["agree", "edit"]
    back = cr[1]
    assert back == edited and isinstance(back, Verdict)
    assert back.edit == {"mask": {"1.2.3.4": "1.2.3/review-2/mask_1.2.3.4.png"}}
    assert back.files == {"sr": "a.dcm", "seg": "b.dcm"} and back.source_sop_uids == ("1.2.3.4",)
    assert back.probability == pytest.approx(0.83) and back.ai_positive is True and back.seconds_spent == 12.5
    assert back.submitted_iso == "1970-01-01T00:33:20+00:00"
    with pytest.raises(AttributeError):
        back.decision = "agree"  # type: ignore[misc]
    assert list_verdicts(engine, study_uid="5.6")[0].comment == "artefact"
    assert reviewed_studies(engine) == {"1.2.3", "5.6"}
    # The same reader's newer verdict on a finding replaces the older one for counting.
    assert [v.verdict_id for v in latest_per_finding(everything)] == [other.verdict_id, edited.verdict_id]


def test_verdicts_on_sqlite(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path)
    _roundtrip(engine)
    # A second engine on the same file sees the same rows and does not migrate again.
    again = open_database(None, tmp_path)
    assert len(list_verdicts(again)) == 3


def test_verdicts_on_postgresql(postgres_url: str) -> None:
    _roundtrip(open_database(postgres_url, Path("/nonexistent")))


def test_bad_verdicts_are_refused_with_a_reason(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path)
    cases = {
        "decision must be one of": {"decision": "maybe"},
        "needs the edit": {"decision": "edit"},
        "carries no edit": {"edit": {"label": "normal"}},
        "at most 4000": {"comment": "x" * 4001},
        "seconds_spent must be": {"seconds_spent": -1.0},
        "probability must lie": {"probability": 1.5},
    }
    for message, overrides in cases.items():
        with pytest.raises(MedsightError, match=message):
            _record(engine, **overrides)
    assert list_verdicts(engine) == []
