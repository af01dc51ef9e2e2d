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
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _escape
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from bot.core.redact import redact
from bot.persistence.models import AuditHead, AuditRecord, table_of

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


_SORTED_FIELDS = tuple(sorted(HASHED_FIELDS))
# one encoder, and the fields inserted in sorted order: the same bytes as
# json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False), without building an
# encoder and sorting keys per record (verify hashes a million records)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
VERIFY_BATCH = 5000


def record_hash(values: dict[str, Any]) -> str:
    content = {name: values[name] for name in _SORTED_FIELDS}
    return hashlib.sha256(_ENCODER.encode(content).encode("utf-8")).hexdigest()


# verify's hash of a row in _SORTED_FIELDS order: the canonical JSON assembled from the C string escaper
# (what the encoder itself calls for each string), about twice as fast; tests check it is byte-identical
_ROW_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in _SORTED_FIELDS) + "}"
_SEQ_AT = _SORTED_FIELDS.index("seq")


def _row_hash(row: Any) -> str:
    parts = []
    for i, value in enumerate(row[:len(_SORTED_FIELDS)]):
        if value is None:
            parts.append("null")
        elif type(value) is str:
            parts.append(_escape(value))
        elif i == _SEQ_AT and type(value) is int:
            parts.append(str(value))
        else:  # anything unexpected: the reference encoder decides
            return record_hash(dict(zip(_SORTED_FIELDS, row, strict=False)))
    return hashlib.sha256((_ROW_TEMPLATE % tuple(parts)).encode("utf-8")).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def append(session: Session, entry: AuditEntry) -> dict[str, Any]:
    """Append `entry` to the chain inside the caller's transaction; returns the stored values.

    Plain statements, not ORM objects: this runs for every command, and the head row lock is what
    serialises appenders, so the less time spent holding it the better."""
    head_table, table = table_of(AuditHead), table_of(AuditRecord)
    seq, prev_hash = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
    ).one()
    values: dict[str, Any] = {
        "seq": int(str(seq)) + 1,
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
    head_table, table = table_of(AuditHead), table_of(AuditRecord)
    seq, prev_hash = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
    ).one()
    rows = []
    seq = int(str(seq))
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
    """Walk the chain in order; name the first altered, removed or reordered record.

    Streams plain column tuples (a server-side cursor on PostgreSQL) in batches of VERIFY_BATCH, so a
    million records take seconds and a bounded amount of memory."""
    # the head first: it commits with its record, so every record up to it is visible even while other
    # processes keep appending (a READ COMMITTED reader would otherwise see a head ahead of its rows)
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one_or_none()
    if head is None:
        return VerifyResult(False, 0, None, "the audit head row is missing")
    head_seq, head_hash = head
    table = table_of(AuditRecord)
    columns = [table.c[name] for name in _SORTED_FIELDS] + [table.c.hash]
    seq_at = _SORTED_FIELDS.index("seq")
    prev_at = _SORTED_FIELDS.index("prev_hash")
    prev_hash = GENESIS
    expected = 1
    result = session.execute(select(*columns).where(table.c.seq <= head_seq).order_by(table.c.seq)
                             .execution_options(stream_results=True, yield_per=VERIFY_BATCH))
    for batch in result.partitions():
        for row in batch:
            seq = row[seq_at]
            if seq != expected:
                return VerifyResult(False, expected - 1, expected,
                                    f"record {expected} is missing (the next record is {seq})")
            if row[prev_at] != prev_hash:
                return VerifyResult(False, expected - 1, seq,
                                    f"record {seq} does not follow record {seq - 1} "
                                    "(a record was removed, inserted or reordered)")
            stored = row[11]
            if _row_hash(row) != stored:
                return VerifyResult(False, expected - 1, seq, f"record {seq} was altered (content hash mismatch)")
            prev_hash = stored
            expected += 1
    result.close()
    checked = expected - 1
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


# --- continuity: a database that lost its records must not look like a fresh one ----------------
@dataclass(frozen=True)
class ChainMark:
    """How long the chain was, and its hash there: the audit head, or the marker file kept beside it."""

    seq: int
    hash: str
    written_at: str | None = None


def chain_head(session: Session) -> ChainMark | None:
    row = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one_or_none()
    return ChainMark(row[0], row[1]) if row is not None else None


def read_marker(path: Path) -> ChainMark | None:
    """The marker at `path`, None when there is none; ValueError when it cannot be understood."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the audit marker {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        data = {}
    seq, hash_ = data.get("seq"), data.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(hash_, str):
        raise ValueError(f"the audit marker {path} is malformed (expected {{\"seq\": N, \"hash\": \"...\"}})")
    written = data.get("written_at")
    return ChainMark(seq, hash_, written if isinstance(written, str) else None)


def write_marker(path: Path, mark: ChainMark) -> None:
    """Replace the marker atomically (write beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"seq": mark.seq, "hash": mark.hash, "written_at": now_iso(),
                               "note": "written by swarm-chatops: the audit chain had at least this many "
                                       "records; `chatops serve` refuses a database with fewer"}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def continuity_problem(session: Session, marker: ChainMark | None, marker_path: Path | None = None) -> str | None:
    """Why this database is not the one whose audit chain we knew, or None when it is.

    Cheap (a few primary-key look-ups), unlike `verify`: the head must have its last record, and the
    marker's record must be in the chain with the marker's hash."""
    head = chain_head(session)
    if head is None:
        return "the audit head row is missing: this is not a chatops database, or it was damaged"
    if head.seq and session.execute(select(AuditRecord.seq).where(AuditRecord.seq == head.seq)).first() is None:
        last = session.execute(select(func.max(AuditRecord.seq))).scalar_one_or_none()
        held = "no audit records" if last is None else f"records only up to #{last}"
        return (f"the audit head says the chain has {head.seq} records, but the database holds {held}: "
                "audit records were deleted")
    if marker is None or marker.seq == 0:
        return None
    where = f"the audit marker {marker_path}" if marker_path else "the audit marker"
    when = f" on {marker.written_at[:19].replace('T', ' ')}Z" if marker.written_at else ""
    if head.seq < marker.seq:
        held = "no audit records" if head.seq == 0 else f"only {head.seq}"
        return (f"{where} says the audit chain had {marker.seq} records{when}, but this database holds {held}: "
                "the database was deleted, recreated or restored from an older backup")
    stored = session.execute(select(AuditRecord.hash).where(AuditRecord.seq == marker.seq)).scalar_one_or_none()
    if stored != marker.hash:
        return (f"record #{marker.seq} of this database does not match {where}{when}: "
                "this is a different audit chain (another database, or records were rewritten)")
    return None


@dataclass(frozen=True)
class AuditFilter:
    since: str | None = None  # ISO-8601, inclusive
    until: str | None = None  # ISO-8601, exclusive
    actor_ids: tuple[str, ...] = ()
    environment: str | None = None
    action_prefix: str | None = None


def _filtered(flt: AuditFilter, *columns: Any) -> Any:
    stmt = select(*columns) if columns else select(AuditRecord)
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
    """Newest first, `limit` records older than `before_seq`.

    The page's seqs are found first, from the indexes alone where they cover the filter ((column, seq)
    and (ts, seq), migration 0003), and only those rows are read: a week in the middle of a million
    records is ~20,000 index entries to pick 11 from, not 20,000 rows."""
    seqs = _filtered(flt, AuditRecord.seq)
    if before_seq is not None:
        seqs = seqs.where(AuditRecord.seq < before_seq)
    # A time window (`until`) is taken from the (ts, seq) index and its matches sorted: walking seq
    # backwards instead (what the planners pick, expecting matches spread evenly) passes every newer
    # record first, and ts grows with seq. `seq + 0` keeps the seq index out of the ORDER BY.
    order = (AuditRecord.seq + 0).desc() if flt.until else AuditRecord.seq.desc()
    seqs = seqs.order_by(order).limit(limit)
    stmt = select(AuditRecord).where(AuditRecord.seq.in_(seqs.scalar_subquery())).order_by(AuditRecord.seq.desc())
    return list(session.execute(stmt).scalars())


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
