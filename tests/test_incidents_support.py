"""Shared harness for tests/test_incidents*.py and tests/test_checklists.py (no tests of its own).

The real bot (fast test config with an on-call list for staging: erin and the Slack user group
S0ONCALL1 = carol) on SQLite and a FakeSlack that knows that user group, and helpers that drive
incidents the way people do: slash commands in the incident's channel, clicks on the buttons of the
checklist message as the fake Slack shows it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.checklists import message_key as checklist_key
from bot.core.incidents import channel_key
from bot.core.incidents import message_key as incident_key
from bot.persistence.models import Incident, SlackMessage
from tests.harness.signing import block_actions_body
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import NAMES, Deployer, blocks_text, start_deploy_bot, wait_until, write_config

ONCALL_GROUP = "S0ONCALL1"
ALICE, CAROL, ERIN, BOB = "U0ALICE01", "U0CAROL03", "U0ERIN005", "U0BOB0002"


def incident_config(tmp_path: Path) -> Path:
    def change(data: dict[str, Any]) -> None:
        data["environments"]["staging"]["on_call"] = ["erin", f"subteam:{ONCALL_GROUP}"]
    return write_config(tmp_path, change)


def today_name(slug: str) -> str:
    return f"inc-{datetime.now(UTC):%Y%m%d}-{slug}"


@pytest.fixture
def oncall_slack() -> Iterator[FakeSlack]:
    """A fake Slack with the example people and the on-call user group."""
    with FakeSlack(users=dict(NAMES), usergroups={ONCALL_GROUP: [CAROL]}) as fake:
        yield fake


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/chatops.db"


@pytest.fixture
def responder(oncall_slack: FakeSlack, db_url: str, tmp_path: Path) -> Iterator[Responder]:
    """The real bot with the incident config, and helpers."""
    r = Responder(start_deploy_bot(oncall_slack, db_url, incident_config(tmp_path)))
    yield r
    r.stop()


class Responder:
    """Incident commands and checklist clicks against one running bot."""

    _names = itertools.count(1)

    def __init__(self, deployer: Deployer) -> None:
        self.d = deployer
        self.fake = deployer.fake
        self.container = deployer.container

    def stop(self) -> None:
        self.d.stop()

    def incident(self, text: str, user: str = ERIN, *, channel: str = "C0STAGING1") -> str:
        return self.d.command("/incident", text, user, channel=channel)

    def declare(self, title: str = "Fills rejected", user: str = ERIN, extra: str = "--env staging") -> int:
        reply = self.incident(f'declare "{title}" {extra}', user)
        assert reply.startswith("Declared INC-"), reply
        return int(reply.split("INC-")[1].split(" ")[0])

    def row(self, incident_id: int) -> Incident:
        with self.container.db.read() as session:
            found = session.get(Incident, incident_id)
            assert found is not None
            return found

    def channel(self, incident_id: int) -> str:
        """The id of the channel Slack created for the incident (waits for the outbox)."""
        def created() -> str | None:
            with self.container.db.read() as session:
                row = session.get(SlackMessage, channel_key(incident_id))
                return row.channel if row else None
        return str(wait_until(created, 10, f"the channel of INC-{incident_id}"))

    def message(self, key: str) -> dict[str, Any]:
        """A keyed message as Slack shows it now (queued updates delivered)."""
        def posted() -> SlackMessage | None:
            with self.container.db.read() as session:
                return session.get(SlackMessage, key)
        row = wait_until(posted, 10, f"message {key}")
        self.d.bot.settle()
        return self.fake.message(row.channel, row.ts)

    def checklist(self, checklist_id: str) -> dict[str, Any]:
        return self.message(checklist_key(checklist_id))

    def intro(self, incident_id: int) -> dict[str, Any]:
        return self.message(incident_key(incident_id))

    def click_item(self, checklist_id: str, label: str, user: str) -> str:
        """Click the button labelled `label` (e.g. "Tick 2") on the checklist's message as `user`."""
        msg = self.checklist(checklist_id)
        button = next((b for b in item_buttons(msg) if b["text"]["text"] == label), None)
        assert button is not None, f"no button {label!r} in {[b['text']['text'] for b in item_buttons(msg)]}"
        name = f"k{next(self._names)}"
        with self.container.db.read() as session:
            row = session.get(SlackMessage, checklist_key(checklist_id))
            assert row is not None
            channel, ts = row.channel, row.ts
        body = block_actions_body(button["action_id"], button["value"], user, channel, ts,
                                  self.fake.response_url(name), block_id=f"cl:{checklist_id}",
                                  user_name=NAMES.get(user, "someone"))
        resp = self.d.bot.post(body)
        assert resp.status_code == 200, resp.text
        return self.d.reply(name)

    def incidents(self) -> list[Incident]:
        with self.container.db.read() as session:
            return list(session.execute(select(Incident).order_by(Incident.id)).scalars())


def item_buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The Tick / Untick buttons beside a checklist's items."""
    return [b["accessory"] for b in message.get("blocks") or []
            if isinstance(b.get("accessory"), dict) and b["accessory"].get("type") == "button"]


def text_of(message: dict[str, Any]) -> str:
    return blocks_text(message)
