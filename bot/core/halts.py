"""Trading halts: `/stop-trading` records one per environment; only `/resume-trading` lifts it.

While a halt stands, no workflow turns trading back on by itself (a deploy's resume step is skipped
and says why), so a person's stop is never undone behind their back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from bot.persistence.models import TradingHalt
from bot.timeutil import aware, utcnow


@dataclass(frozen=True)
class Halt:
    environment: str
    run_id: str
    halted_by: str
    halted_by_name: str | None
    reason: str | None
    mode: str
    halted_at: datetime

    def describe(self) -> str:
        who = f"<@{self.halted_by}>"
        text = (f"halted ({self.mode}) by {who} at {self.halted_at.strftime('%Y-%m-%d %H:%M UTC')} "
                f"(run `{self.run_id}`)")
        return text + (f" — {self.reason}" if self.reason else "")


def current(session: Session, environment: str) -> Halt | None:
    row = session.get(TradingHalt, environment)
    if row is None:
        return None
    return Halt(row.environment, row.run_id, row.halted_by, row.halted_by_name, row.reason, row.mode,
                aware(row.halted_at) or utcnow())


def record(session: Session, environment: str, *, run_id: str, halted_by: str, halted_by_name: str | None,
           reason: str | None, mode: str) -> None:
    row = session.get(TradingHalt, environment)
    if row is None:
        session.add(TradingHalt(environment=environment, run_id=run_id, halted_by=halted_by,
                                halted_by_name=halted_by_name, reason=reason, mode=mode, halted_at=utcnow()))
    else:
        row.run_id, row.halted_by, row.halted_by_name = run_id, halted_by, halted_by_name
        row.reason, row.mode, row.halted_at = reason, mode, utcnow()


def lift(session: Session, environment: str) -> bool:
    return bool(session.execute(delete(TradingHalt).where(TradingHalt.environment == environment))
                .rowcount)  # type: ignore[attr-defined]
