"""``medsight models list|promote|rollback``: which bundle each route of the service uses, and changing it."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list, promote or roll back the bundle each service route uses",
        description="The service keeps a history of which bundle each route uses (a table in its database). "
        "Nothing changes until a bundle is promoted; rollback restores the previous one, down to the configured "
        "one. Takes effect at the next job, without a restart. See docs/feedback.md.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="each route's bundle in use and its history")
    pr = actions.add_parser("promote", help="make BUNDLE the model of ROUTE")
    pr.add_argument("route")
    pr.add_argument("bundle", type=Path)
    rb = actions.add_parser("rollback", help="restore ROUTE's previous bundle")
    rb.add_argument("route")
    for a in (ls, pr, rb):
        a.add_argument("--config", type=Path, help="the service's site configuration (default: the built-in one)")
        a.set_defaults(func=run)


def _open(config_path: Path | None) -> tuple[Any, Any]:
    from medsight.serving.config import load_config
    from medsight.serving.database import open_database

    config = load_config(config_path)
    return config, open_database(config.database.sqlalchemy_url(), Path(config.service.data_dir))


def _route(config: Any, name: str) -> Any:
    from medsight.errors import MedsightError

    try:
        return config.route(name)
    except KeyError:
        known = ", ".join(r.name for r in config.routes)
        raise MedsightError(f"no route {name!r} in the configuration (routes: {known})") from None


def run(args: argparse.Namespace) -> int:
    from medsight.feedback import promotion
    from medsight.serving.audit import AuditLog

    config, engine = _open(args.config)
    try:
        actor = getpass.getuser()
        audit = AuditLog(Path(config.service.data_dir) / "audit.log")
        if args.action == "promote":
            route = _route(config, args.route)
            e = promotion.promote(engine, route, args.bundle, actor)
            audit.append(actor=actor, action="model.promote", target={"route": route.name, "bundle_sha256": e.checksum})
            print(f"route {route.name}: now {e.bundle} (sha256 {e.checksum}); takes effect at the next job")
        elif args.action == "rollback":
            route = _route(config, args.route)
            e = promotion.rollback(engine, route, actor)
            audit.append(
                actor=actor, action="model.rollback", target={"route": route.name, "bundle_sha256": e.checksum}
            )
            print(f"route {route.name}: back to {e.bundle or f'the configured bundle {route.bundle}'}")
        else:
            for route in config.routes:
                now = promotion.promoted(engine, route.name)
                print(f"{route.name}: {now.bundle if now else route.bundle}" + ("" if now else " (configured)"))
                for e in promotion.history(engine, route.name):
                    print(f"  #{e.id} {e.action} {e.bundle or '(configured)'} by {e.actor} at {e.at:.0f}")
    finally:
        engine.dispose()
    return 0
