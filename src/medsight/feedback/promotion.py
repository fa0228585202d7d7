"""Which bundle each route of the service uses: promotion and rollback, with history, in the service database.

Why a table and not an edit of site.toml: a configuration edit is invisible history (who changed the model, when,
from what), needs a restart, and loses the way back. Here every promotion and rollback is a row (route, action,
bundle, its sha256, who, when), appended and never changed; the bundle in effect is found by replaying a route's
rows as a stack (promote pushes, rollback pops), and with no row the configured bundle is used. Nothing changes
until someone promotes; rollback restores exactly the previous bundle (down to the configured one). The worker
resolves a route's bundle through :func:`current_bundle` for every job, so a promotion takes effect at the next
study without a restart, and a bundle whose files changed after it was promoted is refused rather than run.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Engine, Float, Integer, MetaData, String, Table, Text, select

from medsight.errors import MedsightError
from medsight.serving.database import migrate, write_transaction

if TYPE_CHECKING:
    from medsight.serving.config import Route
    from medsight.training.bundle import Bundle

_meta = MetaData()
promotions_table = Table(
    "model_promotions",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("route", String(200), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("bundle", Text),  # promote: the bundle promoted; rollback: the bundle restored (NULL: the configured one)
    Column("checksum", String(64)),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    _meta.create_all(conn, tables=[promotions_table])


MIGRATIONS = (_create_v1,)
_migrated: weakref.WeakSet[Engine] = weakref.WeakSet()


def ensure_schema(engine: Engine) -> None:
    if engine not in _migrated:
        migrate(engine, "promotions", MIGRATIONS)
        _migrated.add(engine)


@dataclass(frozen=True)
class Event:
    """One row of a route's history."""

    id: int
    route: str
    action: str
    bundle: str | None
    checksum: str | None
    actor: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "route", "action", "bundle", "checksum", "actor", "at")}


def history(engine: Engine, route: str | None = None) -> list[Event]:
    """Every promotion and rollback, oldest first (of one route when given)."""
    ensure_schema(engine)
    t = promotions_table.c
    query = select(promotions_table).order_by(t.id)
    if route is not None:
        query = query.where(t.route == route)
    with engine.connect() as conn:
        return [Event(r.id, r.route, r.action, r.bundle, r.checksum, r.actor, r.at) for r in conn.execute(query)]


def _stack(events: list[Event]) -> list[Event]:
    stack: list[Event] = []
    for e in events:
        if e.action == "promote":
            stack.append(e)
        elif stack:
            stack.pop()
    return stack


def promoted(engine: Engine, route: str) -> Event | None:
    """The promotion in effect for ``route``, or None when it uses its configured bundle."""
    stack = _stack(history(engine, route))
    return stack[-1] if stack else None


def current_bundle(engine: Engine, route: Route) -> Path:
    """The bundle ``route`` uses now: the promoted one, else the configured one; a promoted bundle whose files
    changed since its promotion is an error (a job never runs a model nobody promoted)."""
    from medsight.serving.provenance import bundle_checksum

    event = promoted(engine, route.name)
    if event is None or event.bundle is None:
        return route.bundle
    path = Path(event.bundle)
    try:
        now = bundle_checksum(path)
    except (MedsightError, OSError) as exc:
        raise MedsightError(f"route {route.name}: the promoted bundle cannot be read ({exc})", path) from exc
    if now != event.checksum:
        raise MedsightError(
            f"route {route.name}: the promoted bundle changed after it was promoted (sha256 {event.checksum} then, "
            f"{now} now); promote it again or roll back",
            path,
        )
    return path


def check_compatible(route: Route, bundle: Path) -> str:
    """The bundle's checksum, when it can take the route's place: same task, task type, dimensions, channels, labels,
    positive class and modality as the configured bundle (routing and outputs were checked for those); else an error
    naming the mismatch."""
    from medsight.serving.provenance import bundle_checksum
    from medsight.training.bundle import load_bundle

    b = load_bundle(bundle)
    wanted = {
        "task": route.task,
        "spatial_dims": route.spatial_dims,
        "n_channels": route.n_channels,
        "labels": list(route.label_names),
    }
    has = {
        "task": b.task,
        "spatial_dims": b.input["spatial_dims"],
        "n_channels": b.input["n_channels"],
        "labels": b.label_names,
    }
    diffs = [f"{k} {has[k]!r} (route {route.name}: {wanted[k]!r})" for k in wanted if has[k] != wanted[k]]
    diffs += _differs_from_configured(route, b)
    if diffs:
        raise MedsightError("cannot serve route " + route.name + ": " + "; ".join(diffs), bundle)
    from medsight import runtime

    # the model must load now, not at the route's next job: a damaged model.onnx, model.onnx.data or weights file
    # is refused here with its file named (runtime.load opens the ONNX session, network() reads the weights)
    runtime.load(b)
    b.network()
    return bundle_checksum(bundle)


def _positive(b: Bundle) -> str | None:
    """The finding a binary bundle reports as positive (its ``positive_class``, else the label its operating point's
    threshold applies to); None for other bundles."""
    if b.meta.get("task_type") != "binary":
        return None
    if b.meta.get("positive_class"):
        return str(b.meta["positive_class"])
    k = int((b.meta.get("operating_point") or {}).get("positive_index", 1))
    return b.label_names[k] if 0 <= k < len(b.label_names) else None


def _differs_from_configured(route: Route, b: Bundle) -> list[str]:
    """What the route's configuration holds only through its configured bundle: the kind of output (binary,
    multi-class, multi-label...), which label is the positive finding (the worklist, the SR and the verdicts say
    "positive" by it) and the modality the route's studies come in."""
    from medsight.io.modality import trained_on
    from medsight.training.bundle import load_bundle

    configured = load_bundle(route.bundle)
    diffs = []
    if route.task_type and str(b.meta.get("task_type", "")) != route.task_type:
        diffs.append(f"task_type {b.meta.get('task_type')!r} (route {route.name}: {route.task_type!r})")
    if _positive(b) != _positive(configured):
        diffs.append(f"positive class {_positive(b)!r} (route {route.name}: {_positive(configured)!r})")
    mine, theirs = (trained_on(x.meta) for x in (b, configured))
    if None not in (_codes(mine), _codes(theirs)) and _codes(mine) != _codes(theirs):
        diffs.append(f"modality {mine!r} (route {route.name}: {theirs!r})")
    return diffs


def _codes(modality: str) -> frozenset[str] | None:
    """The DICOM Modality codes a training modality (a word such as "xray", or a code such as "CR") stands for;
    None when that cannot be told (unknown, a user's own word): such a bundle is not refused for its modality."""
    from medsight.io.modality import WORDS, accepted

    return accepted(modality) or accepted(WORDS.get(modality.strip().upper(), ""))


def _insert(engine: Engine, route: str, action: str, bundle: str | None, checksum: str | None, actor: str) -> Event:
    with write_transaction(engine) as conn:
        values = {"route": route, "action": action, "bundle": bundle, "checksum": checksum, "actor": actor,
                  "at": time.time()}  # fmt: skip
        new_id = conn.execute(promotions_table.insert().values(**values).returning(promotions_table.c.id)).scalar_one()
    return Event(int(new_id), route, action, bundle, checksum, actor, float(values["at"]))  # type: ignore[arg-type]


def promote(engine: Engine, route: Route, bundle: Path, actor: str) -> Event:
    """Make ``bundle`` the route's model from the next job on."""
    ensure_schema(engine)
    checksum = check_compatible(route, bundle)
    return _insert(engine, route.name, "promote", str(Path(bundle).resolve()), checksum, actor)


def rollback(engine: Engine, route: Route, actor: str) -> Event:
    """Undo the route's promotion in effect: the bundle before it (the configured one at the bottom) is used again."""
    ensure_schema(engine)
    stack = _stack(history(engine, route.name))
    if not stack:
        raise MedsightError(f"route {route.name} uses its configured bundle: nothing to roll back")
    below = stack[-2] if len(stack) > 1 else None
    return _insert(
        engine, route.name, "rollback", below.bundle if below else None, below.checksum if below else None, actor
    )
