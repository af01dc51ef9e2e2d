"""Suite-wide fixtures: the example config, and databases on SQLite and on a real PostgreSQL.

PostgreSQL comes from $CHATOPS_TEST_DATABASE_URL or a throwaway cluster the suite starts
itself (tests/harness/postgres.py). Without either the PostgreSQL tests skip with the
reason printed — except under CI (CI=true), where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bot.config import Config, load_config
from bot.persistence.db import Database
from tests.harness.postgres import postgres_url_or_skip_reason, shared_server, stop_shared_server

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"
_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def example_config() -> Config:
    """The shipped example config (alice, bob, carol, dave, erin, root; staging and production)."""
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL server for this session (skips, or fails under CI, without one)."""
    url, reason = postgres_url_or_skip_reason()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        print(f"\nskipping PostgreSQL tests: {reason}")
        pytest.skip(reason or "PostgreSQL unavailable")
    yield url
    stop_shared_server()


def _fresh_postgres(postgres_url: str) -> str:
    server = shared_server()
    name = f"t{os.getpid()}_{next(_db_counter)}"
    if server is not None:
        return server.create_database(name)
    # an external server: make a database beside the given one
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chatops.db"
    return _fresh_postgres(request.getfixturevalue("postgres_url"))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated `Database` on SQLite and on PostgreSQL."""
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def pg_database_url(postgres_url: str) -> str:
    """An empty PostgreSQL database only (for multi-process tests)."""
    return _fresh_postgres(postgres_url)
