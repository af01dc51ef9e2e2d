"""Engine, transactions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite transactions start with BEGIN IMMEDIATE so that two writers (threads or processes)
serialise instead of failing half-way; PostgreSQL relies on row locks (see `audit.py`).
A SQLite error that means "this connection cannot write" (read-only file, I/O error) is treated
as a disconnect, so the pool replaces its connections instead of reusing broken ones; PostgreSQL
disconnects are detected by SQLAlchemy itself and by pre-ping.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.errors import BackendUnavailable

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: the newest migration; tests/test_persistence.py checks it against Alembic's own view of the scripts.
#: Knowing it without importing Alembic keeps start-up and /readyz cheap when nothing needs migrating.
SCHEMA_HEAD = "0009"
#: execution option of the read-only sessions' connections
READ_ONLY = "chatops_read_only"
#: how long /readyz may wait for the database (connect, lock, write) before it says "not ready"
READINESS_TIMEOUT_S = 2.0
#: SQLite messages meaning the connection itself is unusable for writing until it is reopened
_SQLITE_BROKEN = ("readonly database", "disk i/o error", "unable to open database file",
                  "database disk image is malformed")


def _sqlite_setup(engine: Engine, on_connect: Any) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        on_connect()
        # hand transaction control to us (pysqlite's own BEGIN is deferred and racy)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=15000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock at BEGIN, so that two writers never deadlock upgrading their
        # locks; a reader (Database.read) begins deferred: in WAL mode it reads a snapshot and never
        # blocks a writer, nor waits for one.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def _recycle_broken_connections(engine: Engine, dialect: str) -> None:
    """Errors that condemn the connection, not the statement, count as disconnects: SQLAlchemy then
    invalidates that connection and every older pooled one, and the next checkout opens afresh.

    SQLite: a connection opened while the file was read-only stays read-only for its whole life, and
    one that hit an I/O error may not recover. PostgreSQL: "read-only transaction" (SQLSTATE 25006)
    on a connection to a server that was demoted or switched to read-only; SQLAlchemy already treats
    a closed or terminated connection as a disconnect, and pre-ping catches the idle ones."""
    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        exc = ctx.original_exception
        if dialect == "sqlite":
            broken = any(marker in str(exc).lower() for marker in _SQLITE_BROKEN)
        else:
            broken = getattr(exc, "sqlstate", None) == "25006"
        if broken:
            ctx.is_disconnect = True


class Database:
    """Owns the engine; `transaction()` is the only way product code writes."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "postgresql" and parsed.drivername == "postgresql":
            url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
        #: the SQLite file, None for PostgreSQL and in-memory databases
        self.sqlite_file: Path | None = None
        self._file_identity: tuple[int, int] | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"[:100]
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
            db_path = parsed.database
            if db_path and db_path != ":memory:" and not db_path.startswith("file:"):
                self.sqlite_file = Path(db_path).expanduser().absolute()
                self.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=10)
            if "connect_timeout" not in parsed.query:
                kwargs["connect_args"] = {"connect_timeout": 10}
        self.engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, self._remember_file)
        _recycle_broken_connections(self.engine, self.dialect)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    def _remember_file(self) -> None:
        """Note which file the first connection opened, so /readyz notices it deleted or replaced."""
        if self.sqlite_file is not None and self._file_identity is None:
            with contextlib.suppress(OSError):
                st = self.sqlite_file.stat()
                self._file_identity = (st.st_dev, st.st_ino)

    def _file_problem(self) -> str | None:
        if self.sqlite_file is None or self._file_identity is None:
            return None
        try:
            st = self.sqlite_file.stat()
        except FileNotFoundError:
            return (f"the database file {self.sqlite_file} was deleted while the bot runs (writes go to the "
                    "deleted file); restore it from a backup and restart")
        except OSError as exc:
            return f"the database file {self.sqlite_file} cannot be checked: {exc.strerror}"
        if (st.st_dev, st.st_ino) != self._file_identity:
            return f"the database file {self.sqlite_file} was replaced while the bot runs; restart to use it"
        return None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            if _is_connection_error(exc):
                raise BackendUnavailable("database", _short(exc)) from exc
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only (never committed; on SQLite it does not take the write lock)."""
        with self._readers() as session:
            yield session

    # --- migrations ---------------------------------------------------------------------------
    def alembic_config(self) -> Any:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        if revision == "head" and self.current_revision() == SCHEMA_HEAD:
            return  # already there: skip loading Alembic at all
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    def head_revision(self) -> str | None:
        return SCHEMA_HEAD

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return _current_revision(conn)

    def readiness(self, timeout: float = READINESS_TIMEOUT_S) -> tuple[bool, str]:
        """(ready, reason): the database answers, its schema is at the head revision, and it accepts a
        write (the heartbeat row is upserted and committed), all within about `timeout` seconds."""
        problem = self._file_problem()
        if problem:
            return False, problem
        try:
            with self.engine.connect() as conn:
                current = _current_revision(conn)
        except SQLAlchemyError as exc:
            return False, f"database unreachable: {_short(exc)}"
        if current != SCHEMA_HEAD:
            return False, f"migrations not at head (current {current}, head {SCHEMA_HEAD}); run `chatops db upgrade`"
        try:
            self._write_heartbeat(timeout)
        except SQLAlchemyError as exc:
            return False, f"database does not accept writes: {_short(exc)}"
        return True, "ok"

    def _write_heartbeat(self, timeout: float) -> None:
        from bot.persistence.models import DbHeartbeat, table_of

        table = table_of(DbHeartbeat)
        values = {"id": 1, "checked_at": datetime.now(UTC), "checked_by": self.instance}
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert

                # bound the wait for the write lock (BEGIN IMMEDIATE) by the readiness timeout, not 15 s;
                # set on the raw connection because any statement through `conn` would begin first
                raw = conn.connection.dbapi_connection
                assert raw is not None
                raw.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
            try:
                with conn.begin():
                    if self.dialect == "postgresql":
                        ms = int(timeout * 1000)
                        conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                        conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))
                    stmt = dialect_insert(table).values(**values)
                    conn.execute(stmt.on_conflict_do_update(
                        index_elements=[table.c.id],
                        set_={"checked_at": stmt.excluded.checked_at, "checked_by": stmt.excluded.checked_by}))
            finally:
                if self.dialect == "sqlite" and not conn.invalidated:
                    with contextlib.suppress(Exception):
                        raw = conn.connection.dbapi_connection
                        if raw is not None:
                            raw.execute("PRAGMA busy_timeout=15000")

    def dispose(self) -> None:
        self.engine.dispose()


def _current_revision(conn: Any) -> str | None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    return None if revision is None else str(revision)


def _is_connection_error(exc: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, DisconnectionError | InterfaceError) or getattr(exc, "connection_invalidated", False):
        return True  # including the errors `_recycle_broken_connections` counts as disconnects
    return isinstance(exc, OperationalError) and "locked" not in str(exc)


def _short(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text_[0][:200] if text_ else type(exc).__name__
