"""UTC time helpers shared by persistence users (SQLite hands back naive datetimes that were stored as UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """`moment` as an aware UTC datetime (naive values from SQLite were stored as UTC)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment
