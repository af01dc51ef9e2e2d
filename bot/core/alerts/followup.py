"""A click's network call, made after its transaction committed, and its outcome recorded in a second one.

Button clicks have no prefetch: their handler runs inside the dispatcher's unit of work (claim + change +
audit + reply). A click that must call an outside system (Alertmanager, the cluster) claims what it is
about to do in that transaction and hands `after_commit()` the call and the recording: the call runs once
the click's transaction has committed (so on SQLite no write lock is held while the network answers, and
on PostgreSQL no row lock), in the same job thread, then `record(session, result, error)` runs in a new
short transaction. If `record` raises, that transaction rolls back and `failed(session, error)` runs in a
third one (audit the failure, tell the clicker). Nothing here retries: a process that dies in between
leaves the claim, and the feature decides how a later click recovers it (see `silences.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from bot.core.model import Actor, Reply
from bot.errors import user_message
from bot.outbox import Outbox
from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Clicker:
    """Who clicked, and where their answers go."""

    actor: Actor
    correlation_id: str
    channel_id: str | None = None
    response_url: str | None = None

    def failed(self, outbox: Outbox, action: str, environment: str | None,
               **args: Any) -> Callable[[Session, Exception], None]:
        """A `FollowUp.failed`: audit `action` with the error's outcome and tell the clicker what went wrong."""
        def record(session: Session, exc: Exception) -> None:
            text, outcome = user_message(exc)
            append(session, AuditEntry(actor_id=self.actor.user_id, actor_name=self.actor.name,
                                       channel=self.channel_id, environment=environment, action=action,
                                       outcome=outcome, correlation_id=self.correlation_id,
                                       args={**args, "error": text}))
            self.answer(outbox, session, Reply(text))
        return record

    def answer(self, outbox: Outbox, session: Session, reply: Reply) -> None:
        """Queue a reply only the clicker sees (through the click's response_url when there is one)."""
        if self.response_url:
            outbox.respond(session, self.response_url, reply, channel=self.channel_id)
        elif self.channel_id:
            outbox.ephemeral(session, self.channel_id, self.actor.user_id, reply)


@dataclass(frozen=True)
class FollowUp(Generic[T]):
    what: str
    call: Callable[[], T]
    record: Callable[[Session, T | None, Exception | None], None]
    failed: Callable[[Session, Exception], None]

    def run(self, db: Database) -> None:
        result: T | None = None
        error: Exception | None = None
        try:
            result = self.call()
        except Exception as exc:  # an outside system's failure is recorded, not raised into the commit
            error = exc
        try:
            with db.transaction() as session:
                self.record(session, result, error)
            return
        except Exception as exc:
            problem = exc
        try:
            with db.transaction() as session:
                self.failed(session, problem)
        except Exception:
            log.exception("%s: the outcome could not be recorded (the claim stays for a later click)", self.what)


def after_commit(session: Session, db: Database, follow_up: FollowUp[T]) -> None:
    """Run `follow_up` once the transaction of `session` has committed (never if it rolls back)."""
    event.listen(session, "after_commit", lambda _s: follow_up.run(db), once=True)
