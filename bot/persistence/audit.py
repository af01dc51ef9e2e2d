"""The hash-chained audit log: append in the caller's transaction, verify, query, export.

Each record stores `prev_hash` (its predecessor's hash) and `hash` = SHA-256 of its own
canonical content including `prev_hash`. `audit_head` holds the last seq and hash: appenders
lock that row (PostgreSQL `FOR UPDATE`; SQLite transactions are BEGIN IMMEDIATE), so records
from several processes form one gap-free chain, and `verify` notices records cut off the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from bot.core.redact import redact
from bot.persistence.models import AuditHead, AuditRecord

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq", "ts", "actor_id", "actor_name", "channel", "environment",
    "action", "args", "outcome", "correlation_id", "prev_hash",
)


@dataclass(frozen=True)
class AuditEntry:
    """What happened: written by `append` in the same transaction as the change itself."""

    actor_id: str
    action: str
    outcome: str
    correlation_id: str
    actor_name: str | None = None
    channel: str | None = None
    environment: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


def canonical_args(args: dict[str, Any]) -> str:
    return json.dumps(redact(args), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(values: dict[str, Any]) -> str:
    content = {name: values[name] for name in HASHED_FIELDS}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def append(session: Session, entry: AuditEntry) -> dict[str, Any]:
    """Append `entry` to the chain inside the caller's transaction; returns the stored values.

    Plain statements, not ORM objects: this runs for every command, and the head row lock is what
    serialises appenders, so the less time spent holding it the better."""
    head_table, table = AuditHead.__table__, AuditRecord.__table__
    seq, prev_hash = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
    ).one()
    values: dict[str, Any] = {
        "seq": seq + 1,
        "ts": now_iso(),
        "actor_id": entry.actor_id,
        "actor_name": entry.actor_name,
        "channel": entry.channel,
        "environment": entry.environment,
        "action": entry.action,
        "args": canonical_args(entry.args),
        "outcome": entry.outcome,
        "correlation_id": entry.correlation_id,
        "prev_hash": prev_hash,
    }
    values["hash"] = record_hash(values)
    session.execute(insert(table).values(**values))
    session.execute(update(head_table).where(head_table.c.id == 1).values(seq=values["seq"], hash=values["hash"]))
    return values


def append_many(session: Session, entries: list[AuditEntry]) -> None:
    """`append` for a batch (the ack path's group commit): one head-row lock, one multi-row insert and
    one head update for all of them, chained in order."""
    if not entries:
        return
    head_table, table = AuditHead.__table__, AuditRecord.__table__
    seq, prev_hash = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
    ).one()
    rows = []
    for entry in entries:
        seq += 1
        values: dict[str, Any] = {
            "seq": seq, "ts": now_iso(), "actor_id": entry.actor_id, "actor_name": entry.actor_name,
            "channel": entry.channel, "environment": entry.environment, "action": entry.action,
            "args": canonical_args(entry.args), "outcome": entry.outcome,
            "correlation_id": entry.correlation_id, "prev_hash": prev_hash,
        }
        values["hash"] = prev_hash = record_hash(values)
        rows.append(values)
    session.execute(insert(table), rows)
    session.execute(update(head_table).where(head_table.c.id == 1).values(seq=seq, hash=prev_hash))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify(session: Session) -> VerifyResult:
    """Walk the chain in order; name the first altered, removed or reordered record."""
    # the head first: it commits with its record, so every record up to it is visible even while other
    # processes keep appending (a READ COMMITTED reader would otherwise see a head ahead of its rows)
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        return VerifyResult(False, 0, None, "the audit head row is missing")
    head_seq, head_hash = head.seq, head.hash
    prev_hash = GENESIS
    expected = 1
    checked = 0
    rows = session.execute(select(AuditRecord).where(AuditRecord.seq <= head_seq)
                           .order_by(AuditRecord.seq)).scalars()
    for row in rows.yield_per(1000) if hasattr(rows, "yield_per") else rows:
        values = {name: getattr(row, name) for name in HASHED_FIELDS}
        if row.seq != expected:
            return VerifyResult(False, checked, expected,
                                f"record {expected} is missing (the next record is {row.seq})")
        if row.prev_hash != prev_hash:
            return VerifyResult(False, checked, row.seq,
                                f"record {row.seq} does not follow record {row.seq - 1} "
                                "(a record was removed, inserted or reordered)")
        if record_hash(values) != row.hash:
            return VerifyResult(False, checked, row.seq, f"record {row.seq} was altered (content hash mismatch)")
        prev_hash = row.hash
        expected += 1
        checked += 1
    if head_seq != checked or head_hash != prev_hash:
        if head_seq > checked:
            return VerifyResult(False, checked, checked + 1,
                                f"records {checked + 1}..{head_seq} were removed from the end")
        return VerifyResult(False, checked, head_seq, "the audit head does not match the last record")
    extra = session.execute(select(AuditRecord.seq).where(AuditRecord.seq > head_seq)
                            .order_by(AuditRecord.seq).limit(1)).scalar_one_or_none()
    if extra is not None and session.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar_one() < extra:
        return VerifyResult(False, checked, extra, f"record {extra} lies beyond the chain head (inserted?)")
    return VerifyResult(True, checked)


@dataclass(frozen=True)
class AuditFilter:
    since: str | None = None  # ISO-8601, inclusive
    until: str | None = None  # ISO-8601, exclusive
    actor_ids: tuple[str, ...] = ()
    environment: str | None = None
    action_prefix: str | None = None


def _filtered(flt: AuditFilter) -> Any:
    stmt = select(AuditRecord)
    if flt.since:
        stmt = stmt.where(AuditRecord.ts >= flt.since)
    if flt.until:
        stmt = stmt.where(AuditRecord.ts < flt.until)
    if flt.actor_ids:
        stmt = stmt.where(AuditRecord.actor_id.in_(flt.actor_ids))
    if flt.environment:
        stmt = stmt.where(AuditRecord.environment == flt.environment)
    if flt.action_prefix:
        stmt = stmt.where(AuditRecord.action.startswith(flt.action_prefix, autoescape=True))
    return stmt


def page(session: Session, flt: AuditFilter, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
    """Newest first, `limit` records older than `before_seq`."""
    stmt = _filtered(flt)
    if before_seq is not None:
        stmt = stmt.where(AuditRecord.seq < before_seq)
    return list(session.execute(stmt.order_by(AuditRecord.seq.desc()).limit(limit)).scalars())


def iter_records(session: Session, flt: AuditFilter) -> Iterator[AuditRecord]:
    yield from session.execute(_filtered(flt).order_by(AuditRecord.seq)).scalars()


EXPORT_COLUMNS = ("seq", "ts", "actor_id", "actor_name", "channel", "environment", "action",
                  "args", "outcome", "correlation_id", "prev_hash", "hash")


def as_dict(record: AuditRecord) -> dict[str, Any]:
    out = {name: getattr(record, name) for name in EXPORT_COLUMNS}
    out["args"] = json.loads(record.args)
    return out


def export(records: Iterator[AuditRecord], fmt: str, out: io.TextIOBase | Any) -> int:
    count = 0
    if fmt == "jsonl":
        for rec in records:
            out.write(json.dumps(as_dict(rec), sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        for rec in records:
            writer.writerow([getattr(rec, name) if getattr(rec, name) is not None else ""
                             for name in EXPORT_COLUMNS])
            count += 1
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return count
