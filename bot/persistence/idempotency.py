"""Idempotency keys: the first delivery of a Slack request claims its key; re-deliveries find it taken."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.persistence.models import ProcessedRequest


def claim(session: Session, key: str, kind: str) -> bool:
    """Claim `key` in the caller's transaction; False when it was claimed before (here or by another
    process). INSERT ... ON CONFLICT DO NOTHING: no savepoint, no exception on the duplicate path."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    table = ProcessedRequest.__table__
    stmt = (module.insert(table).values(key=key[:200], kind=kind, created_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key))
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement
    return session.execute(stmt).first() is not None
