"""Two `chatops serve` replicas on one database; the one holding a channel's outbox claim mid-send is killed
with SIGKILL. The survivor takes the channel over once the claim lapses (CHATOPS_OUTBOX_CLAIM_SECONDS,
10 s by default, not a minute), and delivers everything queued there in order; only the one message that
was in flight may appear twice."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.core.model import Reply
from bot.outbox import Outbox
from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage
from tests.bot_server import free_port
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import wait_until
from tests.test_serve import serve_env, start_serve

CHANNEL = "C0STAGING1"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


def test_survivor_takes_over_the_channel_of_a_killed_replica(shared_url: str, fake: FakeSlack) -> None:
    """SIGKILL the replica whose post Slack has accepted but not yet answered: the survivor re-sends that
    one message after the claim lapses and then the other nine, in order; nothing else repeats."""
    replicas: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(2):
            proc = start_serve(serve_env(fake, shared_url), free_port())
            replicas[proc.pid] = proc
        fake.delay_next("chat.postMessage", 30.0)  # the first post takes effect; its answer never comes in time
        db = Database(shared_url)
        outbox = Outbox()
        with db.transaction() as session:
            for n in range(10):
                outbox.post(session, CHANNEL, Reply(f"m{n}", ephemeral=False))
        fake.wait_for("chat.postMessage", timeout=15)

        def holder() -> int | None:
            with db.read() as session:
                first = session.execute(select(OutboxMessage).order_by(OutboxMessage.id).limit(1)).scalar_one()
            return int(first.claimed_by.split(":")[1]) if first.claimed_by else None

        victim = wait_until(holder, 10, "the first row's claim")
        assert victim in replicas
        os.kill(victim, signal.SIGKILL)
        replicas.pop(victim).wait(10)

        def all_delivered() -> list[str] | None:
            texts = [str(m.get("text")) for m in fake.messages_in(CHANNEL)]
            return texts if {f"m{n}" for n in range(10)} <= set(texts) else None

        texts = wait_until(all_delivered, 30, "the survivor to deliver the channel")
        assert texts in (["m0"] + [f"m{n}" for n in range(10)], [f"m{n}" for n in range(10)]), texts
        with db.read() as session:
            statuses = session.execute(select(OutboxMessage.status)).scalars().all()
        assert statuses == ["sent"] * 10
        db.dispose()
    finally:
        for proc in replicas.values():
            proc.send_signal(signal.SIGTERM)
        for proc in replicas.values():
            proc.wait(30)
