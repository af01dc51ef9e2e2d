"""Incidents declared by critical alerts where `alerts.auto_incident` says so, on the real bot: the webhook,
FakeSlack creating the incident's channel, the root linking it; once per group episode."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.core.alerts import simulate as sim
from bot.persistence.models import AlertGroup, Incident
from bot.timeutil import aware
from tests.alerting import PROD_INCIDENT, alertmanager_api, pagerduty, post_alert, roots, thread
from tests.bot_server import RunningBot
from tests.harness.alertmanager import AlertmanagerServer
from tests.harness.pagerduty import FakePagerDuty
from tests.harness.slack_api import FakeSlack
from tests.test_alert_actions import ERIN, audits, bot, make_bot, slack

__all__ = ["alertmanager_api", "bot", "pagerduty", "slack"]


@pytest.fixture
def auto_bot(slack: FakeSlack, tmp_path: Path, alertmanager_api: AlertmanagerServer, pagerduty: FakePagerDuty,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBot]:
    """Both environments declare an incident for a critical alert."""
    running = make_bot(slack, tmp_path, alertmanager_api.url, pagerduty, monkeypatch, auto_incident="critical")
    yield running
    running.stop()


def send(bot: RunningBot, name: str, *, severity: str = "critical", status: str = "firing",
         starts_at: datetime | None = None) -> None:
    alert = sim.alert(name, env="production", severity=severity, status=status, starts_at=starts_at)
    assert post_alert(bot, sim.notification([alert])).status_code == 200
    bot.settle()


def incidents(bot: RunningBot) -> list[Incident]:
    with bot.container.db.read() as session:
        return list(session.execute(select(Incident).order_by(Incident.id)).scalars())


def test_a_critical_alert_declares_one_incident_per_episode(auto_bot: RunningBot) -> None:
    """A critical production alert: INC-1 (SEV1) begins at the alert's startsAt, names the group, its channel is
    created and the on-call people (not Alertmanager) invited; the root and thread link it. Resolving and firing
    again within the reopen window reopens the thread and declares nothing more."""
    bot = auto_bot
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=7)
    send(bot, "TradingBotDown", starts_at=started)
    [incident] = incidents(bot)
    with bot.container.db.read() as session:
        grp = session.execute(select(AlertGroup).where(AlertGroup.title == "TradingBotDown")).scalar_one()
    assert (incident.severity, incident.environment, incident.alert_group_id) == (1, "production", str(grp.id))
    assert aware(incident.started_at) == started and incident.declared_by == "alertmanager"
    [created] = [c for c in bot.fake.calls_to("conversations.create") if not c.faulted]
    assert str(created.params["name"]).startswith(f"inc-{datetime.now(UTC):%Y%m%d}-tradingbotdown")
    invited = ",".join(str(c.params.get("users", "")) for c in bot.fake.calls_to("conversations.invite"))
    assert ERIN in invited and "alertmanager" not in invited
    [message] = [r for r in roots(bot.fake, PROD_INCIDENT) if "FIRING: TradingBotDown" in r["text"]]
    assert "INC-1 (SEV1, open)" in str(message["blocks"])
    assert any("INC-1 (SEV1) declared for this alert" in m["text"]
               for m in thread(bot.fake, PROD_INCIDENT, message["ts"]))
    send(bot, "TradingBotDown", status="resolved", starts_at=started)
    send(bot, "TradingBotDown", starts_at=datetime.now(UTC))  # fires again: the same episode, reopened
    assert len(incidents(bot)) == 1
    assert len([r for r in roots(bot.fake, PROD_INCIDENT) if "FIRING: TradingBotDown" in r["text"]]) == 1
    assert [a["args"]["incident"] for a in audits(bot, "alert.incident")] == [incident.id]


def test_high_alerts_declare_nothing_where_only_critical_does(auto_bot: RunningBot) -> None:
    send(auto_bot, "LatencyHigh", severity="high")
    assert incidents(auto_bot) == []


def test_off_by_default(bot: RunningBot) -> None:
    """Without `alerts.auto_incident` a critical alert pages and threads, and declares no incident."""
    send(bot, "TradingBotDown")
    assert incidents(bot) == [] and bot.fake.calls_to("conversations.create") == []
