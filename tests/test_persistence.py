"""Persistence on SQLite and PostgreSQL: migrations, the audit chain, idempotency keys."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bot.persistence import audit
from bot.persistence.db import Database
from bot.persistence.models import ProcessedRequest


def _entry(i: int, **kw: object) -> audit.AuditEntry:
    return audit.AuditEntry(actor_id="U0ALICE01", actor_name="alice", action=f"test.{i}", outcome="ok",
                            correlation_id=f"c{i}", environment=str(kw.get("env", "staging")),
                            args=dict(kw.get("args", {"n": i})))  # type: ignore[arg-type]


def _fill(db: Database, n: int) -> None:
    for i in range(n):
        with db.transaction() as session:
            audit.append(session, _entry(i))


def _verify(db: Database) -> audit.VerifyResult:
    with db.read() as session:
        return audit.verify(session)


def test_migrations_reach_head(database: Database) -> None:
    """`upgrade()` leaves the schema at the head revision and /readyz's check passes."""
    assert database.current_revision() == database.head_revision()
    assert database.readiness() == (True, "ok")


def test_readiness_reports_unmigrated_schema(database_url: str) -> None:
    """An unmigrated database is reported not ready, with the command to fix it."""
    db = Database(database_url)
    ready, reason = db.readiness()
    assert not ready and "chatops db upgrade" in reason
    db.dispose()


def test_chain_verifies(database: Database) -> None:
    """A chain written normally verifies, counting every record."""
    _fill(database, 5)
    assert _verify(database) == audit.VerifyResult(True, 5)


def test_verify_names_edited_record(database: Database) -> None:
    """Editing one field of record 3 is caught and record 3 is named."""
    _fill(database, 5)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3"))
    result = _verify(database)
    assert not result.ok and result.first_bad_seq == 3 and "altered" in (result.problem or "")


def test_verify_names_edited_args(database: Database) -> None:
    """Editing the stored (redacted) arguments is caught."""
    _fill(database, 3)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET args = :a WHERE seq = 2"), {"a": '{"n":99}'})
    assert _verify(database).first_bad_seq == 2


def test_verify_names_removed_record(database: Database) -> None:
    """Deleting a middle record is caught and the missing seq is named."""
    _fill(database, 5)
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    result = _verify(database)
    assert not result.ok and result.first_bad_seq == 2 and "missing" in (result.problem or "")


def test_verify_catches_truncated_tail(database: Database) -> None:
    """Deleting the newest records is caught through the chain head."""
    _fill(database, 5)
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq >= 4"))
    result = _verify(database)
    assert not result.ok and result.first_bad_seq == 4


def test_verify_catches_reordered_records(database: Database) -> None:
    """Swapping the contents (and hashes) of two records is caught as a broken link."""
    _fill(database, 4)
    with database.engine.begin() as conn:
        rows = {r.seq: r for r in conn.execute(text("SELECT * FROM audit_log WHERE seq IN (2, 3)"))}
        for seq, other in ((2, 3), (3, 2)):
            src = rows[other]
            conn.execute(text("UPDATE audit_log SET ts=:ts, action=:action, args=:args, correlation_id=:cid, "
                              "prev_hash=:prev, hash=:hash WHERE seq=:seq"),
                         {"ts": src.ts, "action": src.action, "args": src.args, "cid": src.correlation_id,
                          "prev": src.prev_hash, "hash": src.hash, "seq": seq})
    result = _verify(database)
    assert not result.ok and result.first_bad_seq == 2


def test_secrets_are_redacted_before_hashing(database: Database) -> None:
    """Arguments are stored with secrets redacted, and the chain still verifies."""
    with database.transaction() as session:
        audit.append(session, _entry(1, args={"api_key": "abc", "note": "token xoxb-1234567890-abc"}))
    with database.read() as session:
        stored = session.execute(text("SELECT args FROM audit_log")).scalar_one()
    assert "xoxb-1234567890" not in stored and '"api_key":"***"' in stored
    assert _verify(database).ok


def test_rolled_back_transaction_leaves_no_record(database: Database) -> None:
    """An audit record shares its transaction: a failure after it leaves no trace and no gap."""
    _fill(database, 1)
    with pytest.raises(RuntimeError):
        with database.transaction() as session:
            audit.append(session, _entry(2))
            raise RuntimeError("the change failed")
    _fill(database, 1)
    assert _verify(database) == audit.VerifyResult(True, 2)


def test_concurrent_appends_form_one_chain(database: Database) -> None:
    """Eight threads appending at once produce one gap-free, verifiable chain."""
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            _fill(database, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _verify(database) == audit.VerifyResult(True, 80)


def _append_in_process(url: str, n: int) -> None:
    db = Database(url)
    _fill(db, n)
    db.dispose()


def test_appends_from_several_processes_form_one_chain(database: Database) -> None:
    """Three processes sharing the database still produce one verifiable chain."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_in_process, args=(database.url, 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert _verify(database) == audit.VerifyResult(True, 45)


def test_idempotency_key_is_unique(database: Database) -> None:
    """The same delivery key cannot be claimed twice, even in separate transactions."""
    from datetime import UTC, datetime

    with database.transaction() as session:
        session.add(ProcessedRequest(key="cmd:T:1", kind="command", created_at=datetime.now(UTC)))
    with pytest.raises(IntegrityError):
        with database.transaction() as session:
            session.add(ProcessedRequest(key="cmd:T:1", kind="command", created_at=datetime.now(UTC)))


def test_export_filters_and_formats(database: Database) -> None:
    """Export yields JSON lines and CSV, filtered by environment."""
    import io
    import json

    with database.transaction() as session:
        audit.append(session, _entry(1, env="staging"))
        audit.append(session, _entry(2, env="production"))
    out = io.StringIO()
    with database.read() as session:
        n = audit.export(audit.iter_records(session, audit.AuditFilter(environment="production")), "jsonl", out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == 1 and lines[0]["environment"] == "production" and lines[0]["args"] == {"n": 2}
    out = io.StringIO()
    with database.read() as session:
        audit.export(audit.iter_records(session, audit.AuditFilter()), "csv", out)
    assert out.getvalue().splitlines()[0].startswith("seq,ts,actor_id")
    assert len(out.getvalue().splitlines()) == 3


def test_prune_forgets_old_deliveries_and_keys_only(database: Database) -> None:
    """Pruning removes sent outbox rows and idempotency keys older than the cut-off, nothing newer or pending."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select

    from bot.metrics import Metrics
    from bot.outbox import OutboxWorker
    from bot.persistence.models import OutboxMessage

    old, new = datetime.now(UTC) - timedelta(days=8), datetime.now(UTC)
    with database.transaction() as session:
        for when, status in ((old, "sent"), (new, "sent"), (old, "pending"), (old, "dead")):
            session.add(OutboxMessage(created_at=when, kind="post", channel="C1", payload={"text": "x"},
                                      status=status, attempts=1, not_before=when, sent_at=when))
        session.add(ProcessedRequest(key="old", kind="command", created_at=old))
        session.add(ProcessedRequest(key="new", kind="command", created_at=new))
    worker = OutboxWorker(database, transport=None, metrics=Metrics(), max_attempts=3)  # type: ignore[arg-type]
    assert worker.prune() == 2
    with database.read() as session:
        statuses = sorted(session.execute(select(OutboxMessage.status)).scalars())
        keys = session.execute(select(func.count()).select_from(ProcessedRequest)).scalar_one()
    assert statuses == ["dead", "pending", "sent"] and keys == 1


def test_verify_catches_a_record_appended_behind_the_heads_back(database: Database) -> None:
    """A record inserted after the last one without going through the chain head is reported."""
    _fill(database, 2)
    with database.engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM audit_log WHERE seq = 2")).mappings().one()
        conn.execute(text("INSERT INTO audit_log (seq, ts, actor_id, actor_name, channel, environment, action, "
                          "args, outcome, correlation_id, prev_hash, hash) VALUES (3, :ts, 'U0EVIL', NULL, NULL, "
                          "NULL, 'forged', '{}', 'ok', 'x', :prev, :hash)"),
                     {"ts": row["ts"], "prev": row["hash"], "hash": "f" * 64})
    result = _verify(database)
    assert not result.ok and result.first_bad_seq == 3


def test_schema_head_constant_matches_the_migration_scripts() -> None:
    """bot.persistence.db.SCHEMA_HEAD names the newest Alembic migration (update it with each new one)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from bot.persistence.db import MIGRATIONS_DIR, SCHEMA_HEAD

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD
