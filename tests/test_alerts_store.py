"""The intake's unit of work on SQLite and on a real PostgreSQL: one group, dedup, resolve."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select

from bot.config import Config
from bot.core.alerts import AlertIntake, parse_notification
from bot.core.alerts import simulate as sim
from bot.outbox import Outbox
from bot.persistence.db import Database
from bot.persistence.models import AlertGroup, OutboxMessage


def _notification(status: str = "firing") -> bytes:
    started = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return json.dumps(sim.notification([sim.alert("DiskFull", status=status, env="production",
                                                  starts_at=started)])).encode()


def test_accept_stores_one_group_and_ignores_duplicates(database: Database, example_config: Config) -> None:
    """Fire twice (a duplicate) and resolve: one group, resolved, with one root post, two lines and an update."""
    intake = AlertIntake(example_config, database, Outbox())
    first = intake.accept(parse_notification(_notification()))
    again = intake.accept(parse_notification(_notification()))
    done = intake.accept(parse_notification(_notification("resolved")))
    assert first.opened and first.firing == 1 and again.duplicate and done.resolved == 1
    with database.read() as s:
        group = s.execute(select(AlertGroup)).scalar_one()
        kinds = [(r.kind, bool(r.payload.get("thread_key"))) for r in s.execute(
            select(OutboxMessage).order_by(OutboxMessage.id)).scalars()]
    assert group.status == "resolved" and group.environment == "production" and group.channel == "C0PRODINC1"
    assert kinds == [("post", False), ("post", True), ("update", False), ("post", True)]
