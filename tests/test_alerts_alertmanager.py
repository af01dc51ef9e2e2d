"""A real Alertmanager drives the bot: alerts posted to its API become a root and thread; resolving updates it."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from bot.persistence.models import AlertGroup
from tests.alerting import STAGING_INCIDENT, alert_bot, alertmanager, roots, slack, thread, wait_until
from tests.bot_server import RunningBot
from tests.harness.alertmanager import AlertmanagerServer
from tests.harness.slack_api import FakeSlack

__all__ = ["alert_bot", "alertmanager", "slack"]
LABELS = {"alertname": "HighErrorRate", "env": "staging", "severity": "high", "pod": "bot-1"}


def test_real_alertmanager_fires_and_resolves_a_thread(alert_bot: RunningBot, slack: FakeSlack,
                                                       alertmanager: Callable[..., AlertmanagerServer]) -> None:
    """Fire through Alertmanager's API v2: root + thread line; resolve: the root says resolved."""
    am = alertmanager(alert_bot.url)
    am.fire(LABELS, {"summary": "5xx above 5%", "runbook_url": "https://runbooks.local/5xx"})
    wait_until(lambda: len(roots(slack, STAGING_INCIDENT)) == 1 and
               len(thread(slack, STAGING_INCIDENT, roots(slack, STAGING_INCIDENT)[0]["ts"])) == 1,
               timeout=20, what="root and first thread line")
    [root] = roots(slack, STAGING_INCIDENT)
    assert "HIGH · FIRING: HighErrorRate" in root["text"]
    assert am.url in str(root["blocks"])  # the silence link points at this Alertmanager
    am.resolve(LABELS, {"summary": "5xx above 5%", "runbook_url": "https://runbooks.local/5xx"})
    # the root's update is sent before the thread line (one channel, in order): wait for both
    wait_until(lambda: slack.message(STAGING_INCIDENT, root["ts"])["text"].startswith("RESOLVED")
               and "All resolved" in thread(slack, STAGING_INCIDENT, root["ts"])[-1]["text"], timeout=20,
               what="root and thread resolved")
    lines = thread(slack, STAGING_INCIDENT, root["ts"])
    assert "All resolved" in lines[-1]["text"] and len(roots(slack, STAGING_INCIDENT)) == 1
    with alert_bot.container.db.read() as s:
        group = s.execute(select(AlertGroup)).scalar_one()
    assert group.group_key.endswith('{alertname="HighErrorRate", env="staging"}') and group.status == "resolved"
