"""Socket Mode: the same listeners, reached over a websocket instead of HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bot.container import build
from bot.http import create_app
from tests.bot_server import bot_settings, free_port
from tests.harness.slack_api import FakeSlack
from tests.harness.socket_mode import FakeSocketMode

ROOT, ALICE = "U0ROOT006", "U0ALICE01"


@pytest.fixture
def socket_bot(tmp_path: Path) -> Iterator[tuple[FakeSlack, FakeSocketMode]]:
    """The bot connected over Socket Mode to a fake Slack (HTTP API + websocket)."""
    with FakeSlack() as fake, FakeSocketMode(fake) as sm:
        settings = bot_settings(fake, f"sqlite:///{tmp_path}/sm.db", slack_app_token=sm.app_token)
        container = build(settings)
        container.db.upgrade()
        server = uvicorn.Server(uvicorn.Config(create_app(container, socket_mode=True), host="127.0.0.1",
                                               port=free_port(), log_level="warning", lifespan="on"))
        import threading

        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        sm.wait_connected()
        yield fake, sm
        server.should_exit = True
        thread.join(15)


def _command(fake: FakeSlack, command: str, text: str, user: str, name: str) -> dict[str, str]:
    return {"command": command, "text": text, "user_id": user, "user_name": "x", "channel_id": "C0STAGING1",
            "team_id": "T0TEST", "trigger_id": str(uuid.uuid4()), "response_url": fake.response_url(name)}


def test_socket_mode_help_is_acked_with_the_answer(socket_bot: tuple[FakeSlack, FakeSocketMode]) -> None:
    """/help over Socket Mode is acknowledged with the command list in the ack payload."""
    fake, sm = socket_bot
    ack = sm.send("slash_commands", _command(fake, "/help", "", ALICE, "h"))
    assert "/status" in ack["payload"]["text"]


def test_socket_mode_deferred_reply_and_app_token_used(socket_bot: tuple[FakeSlack, FakeSocketMode]) -> None:
    """/audit over Socket Mode acks empty and answers on the response_url; the app token opened the link."""
    fake, sm = socket_bot
    sm.send("slash_commands", _command(fake, "/help", "", ALICE, "first"))
    body: dict[str, str] = {}
    for attempt in range(50):  # the /help audit record is written in the background
        ack = sm.send("slash_commands", _command(fake, "/audit", "", ROOT, f"sm-audit-{attempt}"))
        assert not ack.get("payload")
        body = fake.wait_for_response(f"sm-audit-{attempt}", timeout=10)[0].body
        if "command.help" in body["text"]:
            break
        time.sleep(0.1)
    assert "command.help" in body["text"]
    opened = fake.calls_to("apps.connections.open")
    assert opened and opened[0].header("Authorization") == f"Bearer {sm.app_token}"


def test_socket_mode_duplicate_envelope_acts_once(socket_bot: tuple[FakeSlack, FakeSocketMode]) -> None:
    """A re-sent slash command payload (same trigger_id) is answered once."""
    fake, sm = socket_bot
    payload = _command(fake, "/audit", "", ROOT, "sm-dup")
    sm.send("slash_commands", payload)
    sm.send("slash_commands", payload, retry_attempt=1)
    fake.wait_for_response("sm-dup", timeout=10)
    time.sleep(0.5)
    assert len([r for r in fake.responses if r.name == "sm-dup"]) == 1
