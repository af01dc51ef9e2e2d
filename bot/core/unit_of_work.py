"""The unit of work of every front door: claim a key, make the change, audit it, enqueue what it says.

Slash commands, button clicks and Alertmanager webhooks (and, next, scheduled jobs) all need the
same four things in one transaction: the delivery's idempotency key claimed (a re-delivery finds it
taken and changes nothing), the change itself, its audit record, and the outbox rows that report it.
`unit_of_work()` opens that transaction; the dispatcher is one user of it, the webhook route another.
Actors that are not people (Alertmanager, the scheduler) are `SYSTEM_ACTORS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from bot.core.model import Actor
from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database
from bot.persistence.idempotency import claim, finish_pending

#: the actor of work that arrives from Alertmanager's webhook
ALERTMANAGER = Actor("alertmanager", "Alertmanager")
SYSTEM_ACTORS = {ALERTMANAGER.user_id: ALERTMANAGER}


@dataclass
class Work:
    """One claimed delivery inside its transaction: `session` for the change, `audit()` for its record."""

    session: Session
    key: str
    actor: Actor
    correlation_id: str
    channel: str | None = None

    def audit(self, action: str, outcome: str, *, environment: str | None = None, channel: str | None = None,
              args: dict[str, Any] | None = None) -> None:
        """Append an audit record in this transaction (it commits or rolls back with the change)."""
        append(self.session, AuditEntry(actor_id=self.actor.user_id, actor_name=self.actor.name,
                                        channel=channel if channel is not None else self.channel,
                                        environment=environment, action=action, outcome=outcome,
                                        correlation_id=self.correlation_id, args=args or {}))


@contextlib.contextmanager
def unit_of_work(db: Database, key: str, kind: str, *, actor: Actor, correlation_id: str,
                 channel: str | None = None, pending: bool = False) -> Iterator[Work | None]:
    """Open one transaction and claim `key` in it; yields the `Work`, or None when the key was
    claimed before (by this or any process: a duplicate delivery, nothing to do). With `pending`,
    the delivery's `pending_commands` row is deleted in the same transaction, so work that committed
    is never run again. An exception rolls everything back, the claim included."""
    with db.transaction() as session:
        if pending:
            finish_pending(session, key)
        if not claim(session, key, kind):
            yield None
            return
        yield Work(session, key, actor, correlation_id, channel)
