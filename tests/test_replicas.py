"""Two bot replicas sharing one PostgreSQL: a delivery that reaches both is acted on once."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from bot.persistence import audit
from bot.persistence.models import AuditRecord
from tests.bot_server import SECRET, start_bot
from tests.harness.signing import signed_headers, slash_command_body
from tests.harness.slack_api import FakeSlack

pytestmark = pytest.mark.postgres
ROOT = "U0ROOT006"


def test_same_delivery_to_two_replicas_acts_once(pg_database_url: str) -> None:
    """Slack's retry landing on the other replica while the first still runs: one audit record, one reply."""
    with FakeSlack() as fake:
        first, second = start_bot(fake, pg_database_url), start_bot(fake, pg_database_url)
        try:
            for n in range(5):
                body = slash_command_body("/audit", "", ROOT, "root", "C0STAGING1", fake.response_url(f"r{n}"),
                                          trigger_id=f"shared-{n}")
                threads = [threading.Thread(target=bot.post, args=(body, signed_headers(body, SECRET)))
                           for bot in (first, second)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            first.settle()
            second.settle()
            time.sleep(0.3)
            answered = sorted(r.name for r in fake.responses)
            assert answered == [f"r{n}" for n in range(5)], [(r.name, r.body) for r in fake.responses]
            with first.container.db.read() as session:
                actions = session.execute(select(AuditRecord.action)).scalars().all()
                assert actions == ["command.audit"] * 5
                assert audit.verify(session).ok
        finally:
            first.stop()
            second.stop()
