"""When PostgreSQL goes away: the user is told, /readyz says so, and nothing pretends to have worked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.bot_server import RunningBot, start_bot
from tests.harness.slack_api import FakeSlack

pytestmark = pytest.mark.postgres
ROOT, ALICE = "U0ROOT006", "U0ALICE01"


@pytest.fixture
def bot_on_postgres(pg_database_url: str) -> Iterator[tuple[RunningBot, str]]:
    """The real bot on a PostgreSQL database of its own."""
    with FakeSlack() as fake:
        bot = start_bot(fake, pg_database_url)
        yield bot, pg_database_url
        bot.stop()


def _drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_database_down_is_reported_not_hidden(bot_on_postgres: tuple[RunningBot, str]) -> None:
    """With the database gone, /audit's ack tells the user it is down and was not recorded, and /readyz
    answers 503 with the reason."""
    bot, url = bot_on_postgres
    assert bot.client.get(f"{bot.url}/readyz").status_code == 200
    _drop(url)
    resp = bot.command("/audit", "", ROOT, name="down")
    assert resp.status_code == 200
    ack_text = resp.json()["text"]
    assert "database is unavailable" in ack_text and "not recorded" in ack_text and "nothing was done" in ack_text
    ready = bot.client.get(f"{bot.url}/readyz")
    assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
    text_ = bot.command("/help", "", ALICE).json()["text"]
    assert "/status" in text_  # answers that need no database still work
