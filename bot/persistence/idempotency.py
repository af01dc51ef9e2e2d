"""Idempotency keys and pending commands.

The first delivery of a Slack request claims its key in `processed_requests`; re-deliveries find it
taken, in this process or any other. A deferred command is also written to `pending_commands`
before it is acknowledged, leased by the process that will run it, and deleted in the transaction
that runs it: a row left behind by a crash is leased again (`lease_expired`) and run elsewhere. The
claim, not the lease, is what makes a command run exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.persistence.models import PendingCommand, ProcessedRequest, affected, table_of


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def claim(session: Session, key: str, kind: str) -> bool:
    """Claim `key` in the caller's transaction; False when it was claimed before (here or by another
    process). INSERT ... ON CONFLICT DO NOTHING: no savepoint, no exception on the duplicate path."""
    table = table_of(ProcessedRequest)
    stmt = (_insert(session)(table).values(key=key[:200], kind=kind, created_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key))
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement
    return session.execute(stmt).first() is not None


def claim_many(session: Session, keys: list[tuple[str, str]]) -> list[bool]:
    """`claim` for a batch of (key, kind) in one statement; a key repeated within the batch is fresh
    only the first time."""
    if not keys:
        return []
    table = table_of(ProcessedRequest)
    now = datetime.now(UTC)
    unique = list(dict.fromkeys(k[:200] for k, _ in keys))
    kinds = {k[:200]: kind for k, kind in reversed(keys)}
    stmt = (_insert(session)(table).values([{"key": k, "kind": kinds[k], "created_at": now} for k in unique])
            .on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key))
    inserted = set(session.execute(stmt).scalars())
    out = []
    for key, _ in keys:
        out.append(key[:200] in inserted)
        inserted.discard(key[:200])
    return out


def add_pending_many(session: Session, items: list[tuple[str, str, dict[str, Any]]], *, owner: str,
                     lease_seconds: float) -> list[bool]:
    """Record deferred deliveries (key, kind, payload), leased to `owner`, in one statement; False for
    one whose delivery is already pending."""
    if not items:
        return []
    table = table_of(PendingCommand)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=lease_seconds)
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    for key, kind, payload in items:
        first.setdefault(key[:200], (kind, payload))
    stmt = (_insert(session)(table).values([
        {"key": k, "kind": kind, "payload": payload, "created_at": now, "claimed_by": owner,
         "claimed_until": until, "attempts": 1} for k, (kind, payload) in first.items()])
        .on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key))
    inserted = set(session.execute(stmt).scalars())
    out = []
    for key, _, _ in items:
        out.append(key[:200] in inserted)
        inserted.discard(key[:200])
    return out


def finish_pending(session: Session, key: str) -> None:
    """The delivery's job is done (committed with it): nobody will run it again."""
    table = table_of(PendingCommand)
    session.execute(delete(table).where(table.c.key == key[:200]))


def renew_pending(session: Session, owner: str, keys: Iterable[str], lease_seconds: float) -> None:
    table = table_of(PendingCommand)
    keys = [k[:200] for k in keys]
    if keys:
        session.execute(update(table).where(table.c.claimed_by == owner, table.c.key.in_(keys))
                        .values(claimed_until=datetime.now(UTC) + timedelta(seconds=lease_seconds)))


def lease_expired(session: Session, owner: str, lease_seconds: float, *, limit: int = 50,
                  ) -> list[tuple[str, str, dict[str, Any], int]]:
    """Take over pending deliveries whose lease ran out (their process died or gave them up), oldest
    first, each with a compare-and-set so that two processes never take the same one. Returns
    (key, kind, payload, attempts) of each row taken."""
    now = datetime.now(UTC)
    table = table_of(PendingCommand)
    free = or_(table.c.claimed_until.is_(None), table.c.claimed_until < now)
    rows = session.execute(select(table.c.key, table.c.kind, table.c.payload, table.c.attempts).where(free)
                           .order_by(table.c.created_at).limit(limit)).all()
    taken: list[tuple[str, str, dict[str, Any], int]] = []
    for key, kind, payload, tries in rows:
        attempts = int(str(tries))
        result = session.execute(
            update(table).where(table.c.key == key, free)
            .values(claimed_by=owner, claimed_until=now + timedelta(seconds=lease_seconds), attempts=attempts + 1))
        if affected(result) == 1:
            taken.append((str(key), str(kind), dict(cast(dict[str, Any], payload)), attempts + 1))
    return taken
