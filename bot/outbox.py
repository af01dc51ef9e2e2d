"""The one outbound Slack path: a durable outbox and the worker that drains it.

Product code never calls Slack directly. It enqueues (`Outbox.post/update/ephemeral/respond`)
in the same transaction as the change it reports; `OutboxWorker` delivers in order per
channel, waits out 429 `Retry-After`, backs off on 5xx and connection errors, coalesces
queued updates of one message, and marks a call dead (logged and audited) only after
`max_attempts` or a permanent error. Rows are claimed with compare-and-set, so several bot
processes can share one database; pending rows survive restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bot.core.model import Reply
from bot.metrics import Metrics
from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage, SlackMessage
from bot.timeutil import aware, utcnow

log = logging.getLogger(__name__)
CLAIM_SECONDS = 60


# --- the transport port ----------------------------------------------------------------------
class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


class TransientError(Exception):
    """Worth retrying: 5xx, connection reset, timeout."""


class PermanentError(Exception):
    """Retrying cannot help: channel_not_found, invalid_auth, a refused response_url, ..."""


@dataclass(frozen=True)
class Delivered:
    channel: str | None = None
    ts: str | None = None


class Transport(Protocol):
    """Makes one Slack call for an outbox row (Slack Web API, or the console's renderer)."""

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered: ...


# --- enqueueing -----------------------------------------------------------------------------
class Outbox:
    """Enqueue Slack calls inside the caller's transaction."""

    def __init__(self) -> None:
        self._wakeups: list[threading.Event] = []

    def subscribe(self, event: threading.Event) -> None:
        self._wakeups.append(event)

    def _add(self, session: Session, kind: str, channel: str | None, key: str | None,
             payload: dict[str, Any]) -> None:
        now = utcnow()
        session.add(OutboxMessage(created_at=now, kind=kind, channel=channel, message_key=key, payload=payload,
                                  status="pending", attempts=0, not_before=now))
        # wake the local worker once the transaction commits (other processes poll)
        from sqlalchemy import event as sa_event

        wakeups = list(self._wakeups)

        def _after_commit(_session: Session) -> None:
            for ev in wakeups:
                ev.set()

        if not session.info.get("outbox_hooked"):
            session.info["outbox_hooked"] = True
            sa_event.listen(session, "after_commit", _after_commit, once=True)

    def post(self, session: Session, channel: str, reply: Reply, *, key: str | None = None,
             thread_key: str | None = None) -> None:
        """Post a message; `key` names it for later updates, `thread_key` replies in that thread."""
        payload = reply.as_payload()
        if thread_key:
            payload["thread_key"] = thread_key
        self._add(session, "post", channel, key, payload)

    def update(self, session: Session, key: str, reply: Reply) -> None:
        channel = _channel_of(session, key)
        self._add(session, "update", channel, key, reply.as_payload())

    def ephemeral(self, session: Session, channel: str, user_id: str, reply: Reply) -> None:
        payload = reply.as_payload()
        payload["user"] = user_id
        self._add(session, "ephemeral", channel, None, payload)

    def home(self, session: Session, user_id: str, view: dict[str, Any]) -> None:
        """Publish a user's App Home tab (views.publish)."""
        self._add(session, "home", f"home:{user_id}", None, {"user": user_id, "view": view})

    def respond(self, session: Session, response_url: str, reply: Reply, *, channel: str | None = None) -> None:
        payload = reply.as_payload()
        payload.update(response_url=response_url, response_type="ephemeral" if reply.ephemeral else "in_channel",
                       replace_original=reply.replace_original)
        self._add(session, "respond", channel, None, payload)


def _channel_of(session: Session, key: str) -> str | None:
    row = session.get(SlackMessage, key)
    if row is not None:
        return row.channel
    return session.execute(
        select(OutboxMessage.channel).where(OutboxMessage.message_key == key, OutboxMessage.kind == "post")
    ).scalar_one_or_none()


# --- delivering -----------------------------------------------------------------------------
class OutboxWorker:
    def __init__(self, db: Database, transport: Transport, metrics: Metrics, *, max_attempts: int,
                 worker_id: str | None = None) -> None:
        self.db = db
        self.transport = transport
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()

    # life cycle
    def start(self, poll_seconds: float = 1.0) -> None:
        self._thread = threading.Thread(target=self._loop, args=(poll_seconds,), name="chatops-outbox",
                                        daemon=True)
        self._thread.start()

    def stop(self, flush_seconds: float = 5.0) -> None:
        deadline = utcnow() + timedelta(seconds=flush_seconds)
        while utcnow() < deadline and self.pending_due() > 0:
            self.wakeup.set()
            self._idle.wait(0.05)
        self._stop.set()
        self.wakeup.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self, poll_seconds: float) -> None:
        failing_since: float | None = None
        next_prune = time.monotonic() + 60
        while not self._stop.is_set():
            self.wakeup.clear()
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    self.prune()
                worked = self.drain_once()
                wait = 0.0 if worked else self._next_wait(poll_seconds)
                if failing_since is not None:
                    log.warning("outbox worker recovered after %.0fs", time.monotonic() - failing_since)
                    failing_since = None
            except Exception:
                # database down or similar: rows stay pending; say it once, then keep trying quietly
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.exception("outbox worker cannot reach the database; retrying every %.0fs", poll_seconds)
                worked, wait = 0, poll_seconds
            if not worked:
                self._idle.set()
                self.wakeup.wait(wait)
                self._idle.clear()

    def prune(self, older_than: timedelta = timedelta(days=7)) -> int:
        """Forget delivered outbox rows and idempotency keys older than `older_than` (Slack stops
        retrying a delivery within minutes; a week keeps plenty of margin)."""
        from sqlalchemy import delete

        from bot.persistence.models import ProcessedRequest

        cutoff = utcnow() - older_than
        with self.db.transaction() as session:
            sent = session.execute(delete(OutboxMessage).where(OutboxMessage.status == "sent",
                                                               OutboxMessage.sent_at < cutoff)).rowcount
            keys = session.execute(delete(ProcessedRequest).where(ProcessedRequest.created_at < cutoff)).rowcount
        return int(sent or 0) + int(keys or 0)

    def _next_wait(self, poll_seconds: float) -> float:
        with self.db.read() as session:
            soonest = session.execute(
                select(OutboxMessage.not_before).where(OutboxMessage.status == "pending")
                .order_by(OutboxMessage.not_before).limit(1)
            ).scalar_one_or_none()
        if soonest is None:
            return poll_seconds
        delta = (aware(soonest) - utcnow()).total_seconds()  # type: ignore[operator]
        return max(0.01, min(poll_seconds, delta))

    def pending_due(self) -> int:
        with self.db.read() as session:
            return len(session.execute(
                select(OutboxMessage.id).where(OutboxMessage.status == "pending")
            ).all())

    def drain_once(self) -> int:
        """Deliver every due row, in id order per channel. Returns how many calls were attempted."""
        now = utcnow()
        with self.db.read() as session:
            rows = list(session.execute(
                select(OutboxMessage).where(OutboxMessage.status == "pending")
                .order_by(OutboxMessage.id).limit(500)
            ).scalars())
        blocked: set[str] = set()
        attempted = 0
        for row in rows:
            lane = row.channel or f"row:{row.id}"
            claimed_until = aware(row.claimed_until)
            if lane in blocked:
                continue
            if aware(row.not_before) > now or (claimed_until is not None and claimed_until > now  # type: ignore[operator]
                                                 and row.claimed_by != self.worker_id):
                blocked.add(lane)  # keep the order: nothing overtakes a waiting row of its channel
                continue
            if not self._claim(row.id, now):
                blocked.add(lane)
                continue
            attempted += 1
            if not self._deliver(row):
                blocked.add(lane)
        return attempted

    def _claim(self, row_id: int, now: datetime) -> bool:
        with self.db.transaction() as session:
            result = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, OutboxMessage.status == "pending",
                       or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now,
                           OutboxMessage.claimed_by == self.worker_id))
                .values(claimed_by=self.worker_id, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def _deliver(self, row: OutboxMessage) -> bool:
        """Make the call; True when the row is finished (sent, superseded or dead)."""
        payload = dict(row.payload)
        try:
            if row.kind == "update" and self._superseded(row):
                self._finish(row.id, "sent", error="superseded by a newer update")
                return True
            payload = self._resolve_refs(row, payload)
            delivered = self.transport.deliver(row.kind, row.channel, payload)
        except RateLimited as exc:
            self.metrics.outbox_retries.labels("rate_limited").inc()
            self._retry(row, exc.retry_after, f"429 rate limited (Retry-After {exc.retry_after}s)", count=False)
            return False
        except TransientError as exc:
            self.metrics.outbox_retries.labels("transient").inc()
            if row.attempts + 1 >= self.max_attempts:
                self._dead(row, f"gave up after {row.attempts + 1} attempts: {exc}")
                return True
            self._retry(row, min(60.0, 0.5 * 2 ** row.attempts), str(exc), count=True)
            return False
        except PermanentError as exc:
            self._dead(row, str(exc))
            return True
        with self.db.transaction() as session:
            if row.kind == "post" and row.message_key and delivered.ts:
                session.merge(SlackMessage(key=row.message_key, channel=delivered.channel or row.channel or "",
                                           ts=delivered.ts, thread_ts=payload.get("thread_ts"), created_at=utcnow()))
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id)
                            .values(status="sent", sent_at=utcnow(), attempts=row.attempts + 1,
                                    claimed_until=None))
        self.metrics.outbox_sent.labels(row.kind).inc()
        return True

    def _superseded(self, row: OutboxMessage) -> bool:
        with self.db.read() as session:
            newer = session.execute(
                select(OutboxMessage.id).where(OutboxMessage.kind == "update",
                                               OutboxMessage.message_key == row.message_key,
                                               OutboxMessage.status == "pending", OutboxMessage.id > row.id)
                .limit(1)
            ).scalar_one_or_none()
        return newer is not None

    def _resolve_refs(self, row: OutboxMessage, payload: dict[str, Any]) -> dict[str, Any]:
        """Turn our message keys into Slack timestamps (the post was delivered before, in order)."""
        with self.db.read() as session:
            if row.kind == "update":
                msg = session.get(SlackMessage, row.message_key)
                if msg is None:
                    raise PermanentError(f"message {row.message_key!r} was never posted")
                payload["ts"] = msg.ts
                payload["channel"] = msg.channel
            thread_key = payload.pop("thread_key", None)
            if thread_key:
                parent = session.get(SlackMessage, thread_key)
                if parent is None:
                    raise TransientError(f"thread parent {thread_key!r} not posted yet")
                payload["thread_ts"] = parent.ts
        return payload

    def _retry(self, row: OutboxMessage, delay: float, error: str, *, count: bool) -> None:
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(
                not_before=utcnow() + timedelta(seconds=delay), last_error=error[:1000],
                attempts=row.attempts + (1 if count else 0), claimed_until=None))
        log.warning("outbox row %s (%s to %s) will be retried in %.1fs: %s", row.id, row.kind, row.channel,
                    delay, error)

    def _finish(self, row_id: int, status: str, *, error: str | None = None) -> None:
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row_id).values(
                status=status, sent_at=utcnow(), last_error=error, claimed_until=None))

    def _dead(self, row: OutboxMessage, error: str) -> None:
        self.metrics.outbox_dead.inc()
        log.error("outbox row %s (%s to %s) could not be delivered: %s", row.id, row.kind, row.channel, error)
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(
                status="dead", last_error=error[:1000], attempts=row.attempts + 1, claimed_until=None))
            append(session, AuditEntry(actor_id="bot", actor_name="swarm-chatops", channel=row.channel,
                                       action="slack.delivery_failed", outcome="dead",
                                       correlation_id=f"outbox-{row.id}",
                                       args={"kind": row.kind, "error": error,
                                             "text": row.payload.get("text", "")[:300]}))
