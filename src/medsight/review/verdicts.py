"""Readers' verdicts on the AI's findings: one row each, in the service database (SQLite or PostgreSQL).

Why a table of its own, appended to and never updated: a verdict is evidence (about the model, and training data
for the next one), so a reader who changes their mind submits a new verdict and both stay; the newest per reader
and finding is the one that counts (:func:`latest_per_finding`). The row keeps everything needed later without the
service running: the reader and role, when and how long, the model (name, version, bundle checksum) and what it
said, the decision and the label the reader settled on, the edit, and where the reader's objects lie (paths
relative to the service's results folder, so the data folder can move).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from medsight.errors import MedsightError
from medsight.serving.database import migrate, write_transaction

DECISIONS = ("agree", "disagree", "edit")
#: Longest comment kept (characters); a longer one is refused rather than cut.
MAX_COMMENT = 4000

_meta = MetaData()
verdicts_table = Table(
    "review_verdicts",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("finding_id", String(300), nullable=False),
    Column("model", String(200), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("bundle_checksum", String(64), nullable=False),
    Column("label", Text, nullable=False),
    Column("probability", Float),
    Column("ai_positive", Boolean),
    Column("reader", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reader_label", Text, nullable=False),
    Column("reader_positive", Boolean),
    Column("comment", Text, nullable=False),
    Column("seconds_spent", Float),
    Column("edit", JSON),
    Column("source_sop_uids", JSON, nullable=False),
    Column("reader_sr_sop_uid", String(64)),
    Column("reader_seg_sop_uid", String(64)),
    Column("files", JSON, nullable=False),
    Column("submitted_at", Float, nullable=False),
    Index("ix_review_verdicts_study", "study_uid"),
    Index("ix_review_verdicts_model", "model", "submitted_at"),
)


def _create_v1(conn: Connection) -> None:
    _meta.create_all(conn, tables=[verdicts_table])


#: The review component's schema steps (append, never edit: :func:`medsight.serving.database.migrate`).
MIGRATIONS = (_create_v1,)

_migrated: weakref.WeakSet[Engine] = weakref.WeakSet()


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the verdict table (once per engine in this process)."""
    if engine not in _migrated:
        migrate(engine, "review", MIGRATIONS)
        _migrated.add(engine)


@dataclass(frozen=True)
class Verdict:
    """One reader's verdict on one AI finding.

    ``label``/``probability``/``ai_positive`` are what the model said; ``reader_label``/``reader_positive`` what the
    reader settled on (equal to the model's for ``agree``). ``edit`` is the edit as submitted, except that a mask's
    PNGs are replaced by the paths of the files they were saved to: ``{"label": ...}``, ``{"boxes": [{"sop_uid",
    "x0", "y0", "x1", "y1", "label"}]}`` or ``{"mask": {"<source SOP UID>": "<path of a PNG, nonzero =
    foreground>"}}``. ``files`` names the reader's objects (``"sr"``, and ``"seg"`` for a mask) and every path is
    relative to the service's results folder. ``submitted_at`` is Unix time (seconds, UTC).
    """

    verdict_id: int
    study_uid: str
    finding_id: str
    model: str
    model_version: str
    bundle_checksum: str
    label: str
    probability: float | None
    ai_positive: bool | None
    reader: str
    role: str
    decision: str
    reader_label: str
    reader_positive: bool | None
    comment: str
    seconds_spent: float | None
    edit: Mapping[str, Any] | None
    source_sop_uids: tuple[str, ...]
    reader_sr_sop_uid: str | None
    reader_seg_sop_uid: str | None
    files: Mapping[str, str] = field(default_factory=dict)
    submitted_at: float = 0.0

    @property
    def submitted_iso(self) -> str:
        """``submitted_at`` as ISO 8601 UTC."""
        return datetime.fromtimestamp(self.submitted_at, UTC).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        """The verdict as the API returns it (``submitted_at`` as ISO 8601)."""
        return {
            "verdict_id": self.verdict_id,
            "study_uid": self.study_uid,
            "finding_id": self.finding_id,
            "model": self.model,
            "model_version": self.model_version,
            "bundle_checksum": self.bundle_checksum,
            "label": self.label,
            "probability": self.probability,
            "ai_positive": self.ai_positive,
            "reader": self.reader,
            "role": self.role,
            "decision": self.decision,
            "reader_label": self.reader_label,
            "reader_positive": self.reader_positive,
            "comment": self.comment,
            "seconds_spent": self.seconds_spent,
            "edit": None if self.edit is None else dict(self.edit),
            "source_sop_uids": list(self.source_sop_uids),
            "reader_sr_sop_uid": self.reader_sr_sop_uid,
            "reader_seg_sop_uid": self.reader_seg_sop_uid,
            "files": dict(self.files),
            "submitted_at": self.submitted_iso,
        }


#: Longest time a verdict may say it took (a tab left open over a weekend is not reading time).
MAX_SECONDS_SPENT = 86400 * 7


def check_verdict(
    *,
    study_uid: str,
    finding_id: str,
    model: str,
    reader: str,
    decision: str,
    edit: Mapping[str, Any] | None,
    comment: str,
    seconds_spent: float | None,
    probability: float | None,
) -> None:
    """Refuse (MedsightError) what :func:`record_verdict` would refuse; the review API calls it before it writes the
    reader's objects, so a refused verdict leaves no SR behind in the store or the PACS."""
    if decision not in DECISIONS:
        raise MedsightError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "edit" and not edit:
        raise MedsightError("an 'edit' verdict needs the edit (a label, boxes or a mask)")
    if decision != "edit" and edit:
        raise MedsightError(f"a {decision!r} verdict carries no edit; use decision 'edit'")
    if len(comment) > MAX_COMMENT:
        raise MedsightError(f"the comment is {len(comment)} characters; at most {MAX_COMMENT} are kept")
    if seconds_spent is not None and not (0 <= seconds_spent < MAX_SECONDS_SPENT):
        raise MedsightError(f"seconds_spent must be 0 or more (and under a week), not {seconds_spent}")
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise MedsightError(f"probability must lie in [0, 1], not {probability}")
    if not study_uid or not finding_id or not model or not reader:
        raise MedsightError("a verdict needs its study, finding, model and reader")


def record_verdict(
    engine: Engine,
    *,
    study_uid: str,
    finding_id: str,
    model: str,
    model_version: str,
    bundle_checksum: str,
    label: str,
    probability: float | None,
    ai_positive: bool | None,
    reader: str,
    role: str,
    decision: str,
    reader_label: str,
    reader_positive: bool | None,
    comment: str = "",
    seconds_spent: float | None = None,
    edit: Mapping[str, Any] | None = None,
    source_sop_uids: Sequence[str] = (),
    reader_sr_sop_uid: str | None = None,
    reader_seg_sop_uid: str | None = None,
    files: Mapping[str, str] | None = None,
    submitted_at: float | None = None,
) -> Verdict:
    """Store one verdict (committed before returning) and return it with its id; bad values are a MedsightError."""
    check_verdict(
        study_uid=study_uid,
        finding_id=finding_id,
        model=model,
        reader=reader,
        decision=decision,
        edit=edit,
        comment=comment,
        seconds_spent=seconds_spent,
        probability=probability,
    )
    ensure_schema(engine)
    values: dict[str, Any] = {
        "study_uid": study_uid,
        "finding_id": finding_id,
        "model": model,
        "model_version": model_version,
        "bundle_checksum": bundle_checksum,
        "label": label,
        "probability": probability,
        "ai_positive": ai_positive,
        "reader": reader,
        "role": role,
        "decision": decision,
        "reader_label": reader_label,
        "reader_positive": reader_positive,
        "comment": comment,
        "seconds_spent": seconds_spent,
        "edit": None if edit is None else dict(edit),
        "source_sop_uids": list(source_sop_uids),
        "reader_sr_sop_uid": reader_sr_sop_uid,
        "reader_seg_sop_uid": reader_seg_sop_uid,
        "files": dict(files or {}),
        "submitted_at": time.time() if submitted_at is None else float(submitted_at),
    }
    with write_transaction(engine) as conn:
        new_id = conn.execute(verdicts_table.insert().values(**values).returning(verdicts_table.c.id)).scalar_one()
        row = conn.execute(select(verdicts_table).where(verdicts_table.c.id == new_id)).one()
    return _verdict(row)


def list_verdicts(
    engine: Engine,
    *,
    model: str | None = None,
    study_uid: str | None = None,
    finding_id: str | None = None,
) -> list[Verdict]:
    """Verdicts, oldest first, optionally of one model, study and/or finding."""
    ensure_schema(engine)
    v = verdicts_table.c
    query = select(verdicts_table).order_by(v.submitted_at, v.id)
    if model is not None:
        query = query.where(v.model == model)
    if study_uid is not None:
        query = query.where(v.study_uid == study_uid)
    if finding_id is not None:
        query = query.where(v.finding_id == finding_id)
    with engine.connect() as conn:
        return [_verdict(r) for r in conn.execute(query)]


def judged_findings(engine: Engine) -> dict[str, set[str]]:
    """The findings with at least one verdict, per study (the worklist's ``reviewed`` flag compares them with the
    study's current findings: a re-run's new result has none yet)."""
    ensure_schema(engine)
    v = verdicts_table.c
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for study_uid, finding_id in conn.execute(select(v.study_uid, v.finding_id).distinct()):
            out.setdefault(study_uid, set()).add(finding_id)
    return out


def reviewed_studies(engine: Engine) -> set[str]:
    """Studies with at least one verdict (the worklist's ``reviewed`` flag)."""
    ensure_schema(engine)
    with engine.connect() as conn:
        return set(conn.execute(select(verdicts_table.c.study_uid).distinct()).scalars())


def latest_per_finding(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The newest verdict of each reader on each finding (a reader who changed their mind counts once)."""
    newest: dict[tuple[str, str], Verdict] = {}
    for v in verdicts:
        key = (v.finding_id, v.reader)
        if key not in newest or (v.submitted_at, v.verdict_id) >= (newest[key].submitted_at, newest[key].verdict_id):
            newest[key] = v
    return sorted(newest.values(), key=lambda v: (v.submitted_at, v.verdict_id))


def _verdict(row: Any) -> Verdict:
    return Verdict(
        verdict_id=int(row.id),
        study_uid=row.study_uid,
        finding_id=row.finding_id,
        model=row.model,
        model_version=row.model_version,
        bundle_checksum=row.bundle_checksum,
        label=row.label,
        probability=None if row.probability is None else float(row.probability),
        ai_positive=None if row.ai_positive is None else bool(row.ai_positive),
        reader=row.reader,
        role=row.role,
        decision=row.decision,
        reader_label=row.reader_label,
        reader_positive=None if row.reader_positive is None else bool(row.reader_positive),
        comment=row.comment,
        seconds_spent=None if row.seconds_spent is None else float(row.seconds_spent),
        edit=None if row.edit is None else dict(row.edit),
        source_sop_uids=tuple(row.source_sop_uids or ()),
        reader_sr_sop_uid=row.reader_sr_sop_uid,
        reader_seg_sop_uid=row.reader_seg_sop_uid,
        files=dict(row.files or {}),
        submitted_at=float(row.submitted_at),
    )
