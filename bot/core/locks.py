"""One holder per environment (a run or a freeze), with an expiry so a dead process cannot hold it forever."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.blocks import user_text
from bot.core.model import person
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

    def describe(self, *, markup: bool = True) -> str:
        """One line for people. `markup`: for a Slack message (the holder's name and the reason, which
        people typed, escaped and redacted); without it, plain text for an audit record."""
        shown: Callable[[str], str] = user_text if markup else (lambda s: s)
        who = person(self.held_by, shown(self.held_by_name) if self.held_by_name else None, markup=markup)
        since = self.acquired_at.strftime("%Y-%m-%d %H:%M UTC")
        until = self.expires_at.strftime("%H:%M UTC")
        what = f"run `{self.run_id}`" if self.kind == "run" else "a freeze"
        text = f"`{self.environment}` is locked by {who} for {what} since {since} (expires {until})"
        return text + (f" — reason: {shown(self.reason)}" if self.reason else "")

    def next_step(self, user_id: str) -> str:
        """What `user_id`, who just ran into this lock, can do about it."""
        env = self.environment
        if self.kind == "run":
            if self.held_by == user_id:
                return (f"Your run `{self.run_id}` holds `{env}`: abort `{self.run_id}` first (the Abort button "
                        "on its message), or wait for it to end.")
            return (f"Wait for run `{self.run_id}` to end, or ask its requester or an approver to abort it; an "
                    f"admin can break the lock with `/unlock {env} --force` (that aborts the run).")
        if self.held_by == user_id:
            return (f"You froze `{env}` yourself: `/unlock {env}` lifts the freeze (then `/lock {env}` again "
                    "to change its reason or length).")
        who = person(self.held_by, user_text(self.held_by_name) if self.held_by_name else None)
        return (f"Ask {who}, who froze it, to `/unlock {env}`; an admin can lift it with "
                f"`/unlock {env} --force`, or deploy through it with `/deploy … --force`.")


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
        if holder is None:
            raise Conflict(f"`{environment}` is locked", hint="Try again in a moment.") from None
        raise Conflict(holder.describe(), hint=holder.next_step(held_by)) from None
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
