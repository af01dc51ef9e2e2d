"""The database as it fails in practice: read-only files, deleted files, lost records, dropped connections.

Real SQLite files (made read-only with chmod, or `chattr +i` when the tests run as root, for whom
permission bits do not apply) and the real throwaway PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from bot import cli
from bot.errors import BackendUnavailable
from bot.persistence import audit
from bot.persistence.db import Database
from tests.bot_server import REPO, free_port

EXAMPLE_CONFIG = REPO / "chatops.example.yml"


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until /readyz answers 200 (at most 20 s), failing with the output if the process exits."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # bounded readiness poll
    raise AssertionError("serve did not become ready")


def _entry(i: int) -> audit.AuditEntry:
    return audit.AuditEntry(actor_id="U0ALICE01", actor_name="alice", action=f"test.{i}", outcome="ok",
                            correlation_id=f"c{i}", environment="staging", args={"n": i})


def _append(db: Database, n: int) -> None:
    for i in range(n):
        with db.transaction() as session:
            audit.append(session, _entry(i))


def _set_read_only(path: Path, read_only: bool) -> None:
    """Make the file read-only for this process, or writable again."""
    if os.geteuid() != 0:
        path.chmod(0o444 if read_only else 0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only for root")
    done = subprocess.run(["chattr", "+i" if read_only else "-i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr is not supported here: {done.stderr.strip()}")


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Path]:
    """A migrated SQLite database file holding three audit records (made writable again afterwards)."""
    path = tmp_path / "chatops.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    _append(db, 3)
    db.dispose()
    yield path
    if path.exists():
        _set_read_only(path, False)


def test_readiness_fails_while_the_file_is_read_only(sqlite_file: Path) -> None:
    """/readyz's check writes: a read-only database file is not ready, and says why."""
    _set_read_only(sqlite_file, True)
    db = Database(f"sqlite:///{sqlite_file}")
    try:
        ready, reason = db.readiness()
        assert not ready and "does not accept writes" in reason and "readonly" in reason
    finally:
        db.dispose()


def test_connections_opened_read_only_are_replaced_once_writable(sqlite_file: Path) -> None:
    """Connections opened while the file was read-only do not stay broken after it is writable again."""
    _set_read_only(sqlite_file, True)
    db = Database(f"sqlite:///{sqlite_file}")
    try:
        # several pooled connections, all opened read-only
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []

        def write() -> None:
            barrier.wait()
            try:
                _append(db, 1)
            except BackendUnavailable as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 3 and all("readonly" in str(e) for e in errors)
        _set_read_only(sqlite_file, False)
        _append(db, 2)
        assert db.readiness() == (True, "ok")
        with db.read() as session:
            assert audit.verify(session) == audit.VerifyResult(True, 5)
    finally:
        db.dispose()


def test_readiness_fails_when_the_file_is_deleted_under_it(sqlite_file: Path) -> None:
    """A database file deleted while the bot runs is reported, not silently written to."""
    db = Database(f"sqlite:///{sqlite_file}")
    try:
        assert db.readiness() == (True, "ok")
        sqlite_file.unlink()
        ready, reason = db.readiness()
        assert not ready and "was deleted" in reason
    finally:
        db.dispose()


def test_readiness_is_bounded_while_another_writer_holds_the_lock(sqlite_file: Path) -> None:
    """A writer holding SQLite's write lock makes readiness answer "not ready" after its timeout, not hang."""
    db = Database(f"sqlite:///{sqlite_file}")
    holder = Database(f"sqlite:///{sqlite_file}")
    try:
        with holder.engine.connect() as conn, conn.begin():  # BEGIN IMMEDIATE: the write lock
            ready, reason = db.readiness(timeout=0.2)
        assert not ready and "locked" in reason
        assert db.readiness() == (True, "ok")
    finally:
        db.dispose()
        holder.dispose()


@pytest.mark.postgres
def test_postgres_readiness_fails_when_the_database_refuses_writes(pg_database_url: str) -> None:
    """PostgreSQL switched to read-only is not ready; once writable again the same pool recovers."""
    db = Database(pg_database_url)
    admin = create_engine(pg_database_url, isolation_level="AUTOCOMMIT")
    name = pg_database_url.rsplit("/", 1)[1]
    try:
        db.upgrade()
        assert db.readiness() == (True, "ok")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
        ready, reason = db.readiness()
        assert not ready and "read-only" in reason
        with pytest.raises(BackendUnavailable):
            _append(db, 1)
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off'))
        _append(db, 1)  # the read-only connections were replaced, not reused
        assert db.readiness() == (True, "ok")
    finally:
        db.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_postgres_pool_recovers_after_connections_are_killed(pg_database_url: str) -> None:
    """Every server connection terminated (failover, restart): the next transaction reconnects."""
    db = Database(pg_database_url)
    admin = create_engine(pg_database_url, isolation_level="AUTOCOMMIT")
    name = pg_database_url.rsplit("/", 1)[1]
    try:
        db.upgrade()
        _append(db, 2)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
        _append(db, 1)
        assert db.readiness() == (True, "ok")
    finally:
        db.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_postgres_readiness_is_bounded_by_a_lock(pg_database_url: str) -> None:
    """A transaction holding the heartbeat row makes readiness give up at its timeout with the reason."""
    db = Database(pg_database_url)
    other = create_engine(pg_database_url)
    try:
        db.upgrade()
        assert db.readiness() == (True, "ok")
        with other.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM db_heartbeat WHERE id = 1 FOR UPDATE"))
            ready, reason = db.readiness(timeout=0.2)
        assert not ready and "timeout" in reason
    finally:
        db.dispose()
        other.dispose()


# --- serve refuses a database that lost its audit records ----------------------------------------
@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("CHATOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATOPS_SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("CHATOPS_SLACK_SIGNING_SECRET", "s")
    return tmp_path


def _serve(db_url: str, *extra: str) -> int:
    # every call here is refused before uvicorn starts
    return cli.main(["--config", str(EXAMPLE_CONFIG), "--database-url", db_url, "serve", *extra])


def _marker(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".audit-head")


def test_verify_writes_marker_beside_sqlite_file(clean_env: Path, sqlite_file: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`audit verify` records the chain's length and head hash in a small file beside the database."""
    url = f"sqlite:///{sqlite_file}"
    assert cli.main(["--database-url", url, "audit", "verify"]) == 0
    data = json.loads(_marker(sqlite_file).read_text())
    db = Database(url)
    with db.read() as session:
        head = audit.chain_head(session)
    db.dispose()
    assert head is not None and (data["seq"], data["hash"]) == (3, head.hash)


def test_serve_refuses_when_sqlite_file_was_deleted(clean_env: Path, sqlite_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The database file deleted, the marker beside it says 3 records: exit 3, the file is not recreated."""
    url = f"sqlite:///{sqlite_file}"
    assert cli.main(["--database-url", url, "audit", "verify"]) == 0
    sqlite_file.unlink()
    assert _serve(url) == cli.EXIT_AUDIT
    err = capsys.readouterr().err
    assert "refusing to start" in err and "does not exist" in err and "3 records" in err
    assert cli.ACCEPT_AUDIT_LOSS in err and "Traceback" not in err
    assert not sqlite_file.exists()


def test_serve_refuses_a_recreated_empty_database(clean_env: Path, sqlite_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Deleted and recreated empty (e.g. by `db upgrade`): the marker catches it, exit 3."""
    url = f"sqlite:///{sqlite_file}"
    assert cli.main(["--database-url", url, "audit", "verify"]) == 0
    sqlite_file.unlink()
    assert cli.main(["--database-url", url, "db", "upgrade"]) == 0
    capsys.readouterr()
    assert _serve(url) == cli.EXIT_AUDIT
    err = capsys.readouterr().err
    assert "says the audit chain had 3 records" in err and "holds no audit records" in err


def test_audit_verify_reports_lost_records_against_marker(clean_env: Path, sqlite_file: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`audit verify` on a recreated database says BROKEN (the marker), not "OK: 0 records"."""
    url = f"sqlite:///{sqlite_file}"
    assert cli.main(["--database-url", url, "audit", "verify"]) == 0
    sqlite_file.unlink()
    assert cli.main(["--database-url", url, "db", "upgrade"]) == 0
    capsys.readouterr()
    assert cli.main(["--database-url", url, "audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "3 records" in out and "chain OK" not in out


def test_serve_refuses_when_audit_head_outlives_records(clean_env: Path, sqlite_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No marker, but the audit head says 3 records and the table is empty: exit 3."""
    db = Database(f"sqlite:///{sqlite_file}")
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))
    db.dispose()
    assert _serve(f"sqlite:///{sqlite_file}") == cli.EXIT_AUDIT
    err = capsys.readouterr().err
    assert "the audit head says the chain has 3 records" in err and "no audit records" in err


def test_serve_refuses_a_different_chain(clean_env: Path, sqlite_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Another database with as many records in place of ours: record #3's hash differs, exit 3."""
    url = f"sqlite:///{sqlite_file}"
    assert cli.main(["--database-url", url, "audit", "verify"]) == 0
    other = tmp_path / "other.db"
    db = Database(f"sqlite:///{other}")
    db.upgrade()
    for i in range(4):
        with db.transaction() as session:
            audit.append(session, audit.AuditEntry(actor_id="U0BOB0002", action=f"other.{i}", outcome="ok",
                                                   correlation_id=f"o{i}"))
    db.dispose()
    sqlite_file.unlink()
    other.rename(sqlite_file)
    assert _serve(url) == cli.EXIT_AUDIT
    assert "different audit chain" in capsys.readouterr().err


def test_marker_path_from_settings_for_postgres(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """CHATOPS_AUDIT_MARKER names the marker (PostgreSQL has none by default; `off` disables it)."""
    pg = Database("postgresql://u@127.0.0.1:1/x")
    try:
        settings = cli.load_settings(cli.parser().parse_args(["audit", "verify"]))
        assert cli.marker_path(settings, pg) is None
        monkeypatch.setenv("CHATOPS_AUDIT_MARKER", str(tmp_path / "m.json"))
        settings = cli.load_settings(cli.parser().parse_args(["audit", "verify"]))
        assert cli.marker_path(settings, pg) == tmp_path / "m.json"
        monkeypatch.setenv("CHATOPS_AUDIT_MARKER", "off")
        sq = Database(f"sqlite:///{tmp_path}/a.db")
        settings = cli.load_settings(cli.parser().parse_args(["audit", "verify"]))
        assert cli.marker_path(settings, sq) is None
        sq.dispose()
    finally:
        pg.dispose()


@pytest.mark.postgres
def test_postgres_continuity_against_configured_marker(pg_database_url: str, tmp_path: Path) -> None:
    """On PostgreSQL a configured marker catches a database emptied behind the bot's back."""
    db = Database(pg_database_url)
    try:
        db.upgrade()
        _append(db, 4)
        marker = tmp_path / "audit-head.json"
        cli.update_marker(db, marker)
        assert cli.audit_continuity(db, marker) is None
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log"))
            conn.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": audit.GENESIS})
        problem = cli.audit_continuity(db, marker)
        assert problem is not None and "had 4 records" in problem and "no audit records" in problem
    finally:
        db.dispose()


def test_fast_row_hash_matches_reference_encoding() -> None:
    """verify's hash of a row is byte-for-byte the reference `record_hash`, for awkward content too."""
    samples = ["plain", "", "quote \" and \\ backslash", "tab\tnewline\n\x00\x1f", "é ü 中文 🚀", "\u2028\u2029",
               "</script>", None]
    for i, value in enumerate(samples):
        values = {"seq": i + 1, "ts": "2026-01-01T00:00:00.000000Z", "actor_id": "U0ALICE01",
                  "actor_name": value, "channel": value, "environment": value, "action": "x",
                  "args": json.dumps({"v": value}), "outcome": "ok", "correlation_id": str(value),
                  "prev_hash": audit.GENESIS}
        row = tuple(values[name] for name in sorted(audit.HASHED_FIELDS))
        assert audit._row_hash(row) == audit.record_hash(values)


def test_serve_with_accept_audit_loss_starts_and_audits_the_loss(sqlite_file: Path) -> None:
    """`--accept-audit-loss` starts on the recreated database, audits the loss and rewrites the marker."""
    from tests.harness.slack_api import FakeSlack
    from tests.test_serve import serve_env

    url = f"sqlite:///{sqlite_file}"
    db = Database(url)
    cli.update_marker(db, _marker(sqlite_file))
    db.dispose()
    sqlite_file.unlink()
    with FakeSlack() as fake:
        env = serve_env(fake, url)
        refused = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", "0"], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == cli.EXIT_AUDIT and "refusing to start" in refused.stderr
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port), cli.ACCEPT_AUDIT_LOSS],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    db = Database(url)
    try:
        with db.read() as session:
            records = list(audit.iter_records(session, audit.AuditFilter()))
        assert [r.action for r in records] == ["audit.history_lost"]
        assert "says the audit chain had 3 records" in json.loads(records[0].args)["problem"]
        assert json.loads(_marker(sqlite_file).read_text())["seq"] == 1
    finally:
        db.dispose()
