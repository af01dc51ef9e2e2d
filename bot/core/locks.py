"""One holder per environment (a run or a freeze), with an expiry so a dead process cannot hold it forever."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.errors import Conflict
from bot.persistence.models import EnvLock
from bot.timeutil import aware, utcnow


@dataclass(frozen=True)
class LockInfo:
    environment: str
    kind: str
    run_id: str | None
    held_by: str
    held_by_name: str | None
    reason: str | None
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        who = self.held_by_name or f"<@{self.held_by}>"
        since = self.acquired_at.strftime("%Y-%m-%d %H:%M UTC")
        until = self.expires_at.strftime("%H:%M UTC")
        what = f"run `{self.run_id}`" if self.kind == "run" else "a freeze"
        text = f"`{self.environment}` is locked by {who} for {what} since {since} (expires {until})"
        return text + (f" — reason: {self.reason}" if self.reason else "")


def _info(row: EnvLock) -> LockInfo:
    return LockInfo(row.environment, row.kind, row.run_id, row.held_by, row.held_by_name, row.reason,
                    aware(row.acquired_at), aware(row.expires_at))  # type: ignore[arg-type]


def current(session: Session, environment: str) -> LockInfo | None:
    row = session.get(EnvLock, environment)
    if row is None or aware(row.expires_at) <= utcnow():  # type: ignore[operator]
        return None
    return _info(row)


def all_locks(session: Session) -> list[LockInfo]:
    now = utcnow()
    return [_info(r) for r in session.execute(select(EnvLock)).scalars() if aware(r.expires_at) > now]  # type: ignore[operator]


def acquire(session: Session, environment: str, *, kind: str, run_id: str | None, held_by: str,
            held_by_name: str | None, reason: str | None, ttl: timedelta) -> LockInfo:
    """Take the lock or raise Conflict naming the holder. Expired locks are taken over."""
    now = utcnow()
    session.execute(delete(EnvLock).where(EnvLock.environment == environment, EnvLock.expires_at <= now))
    try:
        with session.begin_nested():
            session.add(EnvLock(environment=environment, kind=kind, run_id=run_id, held_by=held_by,
                                held_by_name=held_by_name, reason=reason, acquired_at=now, expires_at=now + ttl))
            session.flush()
    except IntegrityError:
        holder = current(session, environment)
        raise Conflict(holder.describe() if holder else f"`{environment}` is locked",
                       hint="Wait for it, or ask whoever holds it; an admin can break it with "
                            f"`/unlock {environment} --force`"
                            + (" (or deploy through a freeze with --force)." if holder and holder.kind == "freeze"
                               else ".")) from None
    return current(session, environment)  # type: ignore[return-value]


def release(session: Session, environment: str, *, run_id: str | None = None) -> bool:
    stmt = delete(EnvLock).where(EnvLock.environment == environment)
    if run_id is not None:
        stmt = stmt.where(EnvLock.run_id == run_id)
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def force_release(session: Session, environment: str) -> LockInfo | None:
    holder = current(session, environment)
    session.execute(delete(EnvLock).where(EnvLock.environment == environment))
    return holder


def extend(session: Session, environment: str, run_id: str, ttl: timedelta) -> bool:
    result = session.execute(update(EnvLock).where(EnvLock.environment == environment, EnvLock.run_id == run_id)
                             .values(expires_at=utcnow() + ttl))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def hold(session: Session, environment: str, run_id: str, ttl: timedelta, *, reason: str) -> None:
    """Keep the run's lock (long `ttl`, new reason) after the run ended: it left the environment in a state
    a person must look at. Re-takes the lock if it had expired meanwhile and nobody else holds it."""
    result = session.execute(update(EnvLock).where(EnvLock.environment == environment, EnvLock.run_id == run_id)
                             .values(expires_at=utcnow() + ttl, reason=reason))
    if result.rowcount:  # type: ignore[attr-defined]
        return
    holder = current(session, environment)
    if holder is None:
        session.execute(delete(EnvLock).where(EnvLock.environment == environment))
        now = utcnow()
        session.add(EnvLock(environment=environment, kind="run", run_id=run_id, held_by="bot",
                            held_by_name="swarm-chatops", reason=reason, acquired_at=now, expires_at=now + ttl))
