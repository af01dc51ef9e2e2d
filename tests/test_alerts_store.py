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
from bot.persistence.models import AlertGroup, AuditRecord, OutboxMessage


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


def _named(name: str, status: str = "firing") -> bytes:
    started = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return json.dumps(sim.notification([sim.alert(name, status=status, env="production",
                                                  starts_at=started)])).encode()


def test_a_batch_keeps_each_delivery_apart(database: Database, example_config: Config) -> None:
    """The webhook's group commit: one delivery that fails (here a hook refusing it) rolls back alone, with its
    claim, so Alertmanager's retry is taken later; the others of the batch are stored, a duplicate within the
    batch is recognised as one."""
    intake = AlertIntake(example_config, database, Outbox())

    def refuse(_work: object, event: object) -> None:
        if getattr(getattr(event, "group", None), "title", "") == "Broken":
            raise RuntimeError("refused by a hook")

    intake.hooks.on("opened", refuse)
    good, bad, other = (parse_notification(_named(n)) for n in ("DiskFull", "Broken", "CpuHot"))
    outcomes = intake.accept_many([good, bad, other, good])
    assert isinstance(outcomes[1], RuntimeError)
    first, _, third, again = outcomes
    assert not isinstance(first, Exception) and first.opened and not isinstance(third, Exception) and third.opened
    assert not isinstance(again, Exception) and again.duplicate
    with database.read() as s:
        titles = sorted(g.title for g in s.execute(select(AlertGroup)).scalars())
        audited = [r.args for r in s.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()]
    assert titles == ["CpuHot", "DiskFull"] and len(audited) == 2  # nothing of the refused one is left
    intake.hooks = type(intake.hooks)()  # the hook is gone: Alertmanager's retry of the refused one is taken
    retried = intake.accept(parse_notification(_named("Broken")))
    assert retried.opened and not retried.duplicate
