"""Engine, transactions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite transactions start with BEGIN IMMEDIATE so that two writers (threads or processes)
serialise instead of failing half-way; PostgreSQL relies on row locks (see `audit.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
SCHEMA_HEAD = "0003"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Owns the engine; `transaction()` is the only way product code writes."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "postgresql" and parsed.drivername == "postgresql":
            url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
            db_path = parsed.database
            if db_path and db_path != ":memory:":
                Path(db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=10)
        self.engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

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
        with self._sessions() as session:
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

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the database answers and its schema is at the head revision."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                current = _current_revision(conn)
        except SQLAlchemyError as exc:
            return False, f"database unreachable: {_short(exc)}"
        if current != SCHEMA_HEAD:
            return False, f"migrations not at head (current {current}, head {SCHEMA_HEAD}); run `chatops db upgrade`"
        return True, "ok"

    def dispose(self) -> None:
        self.engine.dispose()


def _current_revision(conn: Any) -> str | None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _is_connection_error(exc: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, DisconnectionError | InterfaceError):
        return True
    return isinstance(exc, OperationalError) and "locked" not in str(exc)


def _short(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text_[0][:200] if text_ else type(exc).__name__
