"""Alertmanager notifications over real HTTP become a root message and its thread in the fake Slack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from bot.core.alerts import simulate as sim
from bot.persistence.models import AlertGroup, AuditRecord
from tests.alerting import (
    ALERTS,
    PROD_INCIDENT,
    STAGING_INCIDENT,
    alert_bot,
    alert_config,
    post_alert,
    roots,
    slack,
    start_alert_bot,
    thread,
)
from tests.bot_server import RunningBot
from tests.harness.slack_api import FakeSlack

__all__ = ["alert_bot", "slack"]  # fixtures used below
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _firing(name: str = "HighErrorRate", **kw: object) -> dict[str, object]:
    return sim.alert(name, starts_at=T0, **kw)  # type: ignore[arg-type]


def _audits(bot: RunningBot, action: str) -> int:
    with bot.container.db.read() as s:
        return int(s.execute(select(func.count()).where(AuditRecord.action == action)).scalar_one())


def test_firing_group_posts_root_and_thread_in_incident_channel(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """A high alert in staging: one root in staging's incident channel, with a thread line naming the alert."""
    response = post_alert(alert_bot, sim.notification([_firing(extra_labels={"pod": "bot-1"})],
                                                      runbook_url="https://runbooks.local/errors"))
    assert response.status_code == 200 and response.json()["status"] == "accepted"
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    assert "HIGH · FIRING: HighErrorRate" in root["text"] and "<!here>" not in root["text"]
    body = str(root["blocks"])
    assert "1 firing" in body and "<https://runbooks.local/errors|Runbook>" in body
    assert "Silence in Alertmanager" in body
    [line] = thread(slack, STAGING_INCIDENT, root["ts"])
    assert "1 firing" in line["text"] and "pod=`bot-1`" in line["text"]


def test_critical_mentions_here_and_medium_goes_to_alerts_channel(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """Runbook 7.4: critical → incident channel with @here; medium → the alerts channel, no mention."""
    post_alert(alert_bot, sim.notification([_firing("DatabaseDown", severity="critical", env="production")]))
    post_alert(alert_bot, sim.notification([_firing("CacheMissRate", severity="warning")]))
    alert_bot.settle()
    [critical] = roots(slack, PROD_INCIDENT)
    assert critical["text"].startswith("<!here> CRITICAL")
    [medium] = roots(slack, ALERTS)
    assert "MEDIUM" in medium["text"] and "<!" not in medium["text"]


def test_unknown_environment_goes_to_default_alerts_channel(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """An alert whose env label names no environment is posted to the default alerts channel, not dropped."""
    post_alert(alert_bot, sim.notification([_firing(env="qa-17", severity="critical")]))
    alert_bot.settle()
    [root] = roots(slack, ALERTS)
    assert "no known environment" in str(root["blocks"])


def test_new_alert_in_group_is_one_thread_line_and_repeat_is_ignored(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """A notification repeating a known alert plus a new one: the thread names only the new one."""
    a = _firing(extra_labels={"pod": "bot-1"})
    b = _firing(extra_labels={"pod": "bot-2"})
    post_alert(alert_bot, sim.notification([a]))
    post_alert(alert_bot, sim.notification([a, b]))
    post_alert(alert_bot, sim.notification([a, b]))  # nothing new
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    lines = thread(slack, STAGING_INCIDENT, root["ts"])
    assert len(lines) == 2 and "bot-2" in lines[1]["text"] and "bot-1" not in lines[1]["text"]
    assert "2 firing" in str(slack.message(STAGING_INCIDENT, root["ts"])["blocks"])


def test_duplicate_delivery_changes_nothing(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """The same notification twice (an HA pair, a retry): the second is answered `duplicate`, nothing is sent."""
    payload = sim.notification([_firing()])
    assert post_alert(alert_bot, payload).json()["status"] == "accepted"
    alert_bot.settle()
    calls, audits = len(slack.calls), _audits(alert_bot, "alert.notification")
    assert post_alert(alert_bot, payload).json()["status"] == "duplicate"
    alert_bot.settle()
    assert len(slack.calls) == calls and _audits(alert_bot, "alert.notification") == audits == 1


def test_resolving_updates_root_with_duration(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """When every alert resolves, the root says resolved and for how long it fired; the thread says so too."""
    post_alert(alert_bot, sim.notification([_firing()]))
    resolved = sim.alert("HighErrorRate", status="resolved", starts_at=T0, ends_at=T0 + timedelta(minutes=12))
    post_alert(alert_bot, sim.notification([resolved]))
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    latest = slack.message(STAGING_INCIDENT, root["ts"])
    assert latest["text"].startswith("RESOLVED") and "Resolved* after 12m" in str(latest["blocks"])
    lines = thread(slack, STAGING_INCIDENT, root["ts"])
    assert "All resolved* after 12m" in lines[-1]["text"]
    with alert_bot.container.db.read() as s:
        assert s.execute(select(AlertGroup.status)).scalar_one() == "resolved"


def test_late_retry_of_firing_does_not_reopen(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """A firing notification delivered after its alert's resolve (a retry) does not flip the group back."""
    firing = sim.notification([_firing()])
    post_alert(alert_bot, firing)
    post_alert(alert_bot, sim.notification([sim.alert("HighErrorRate", status="resolved", starts_at=T0)]))
    post_alert(alert_bot, {**firing, "receiver": "chatops-ha-peer"})  # same alerts, other receiver name
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    assert slack.message(STAGING_INCIDENT, root["ts"])["text"].startswith("RESOLVED")


def test_refiring_within_window_reopens_thread(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """A group firing again (later startsAt) within the reopen window reuses its root and thread."""
    post_alert(alert_bot, sim.notification([_firing()]))
    post_alert(alert_bot, sim.notification([sim.alert("HighErrorRate", status="resolved", starts_at=T0,
                                                      ends_at=T0 + timedelta(minutes=3))]))
    post_alert(alert_bot, sim.notification([sim.alert("HighErrorRate", starts_at=T0 + timedelta(minutes=50))]))
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    assert "FIRING" in slack.message(STAGING_INCIDENT, root["ts"])["text"]
    assert "Firing again* 47m after it resolved" in thread(slack, STAGING_INCIDENT, root["ts"])[-1]["text"]


def test_refiring_after_window_starts_new_root(slack: FakeSlack, tmp_path: Path) -> None:
    """With a reopen window of 0 minutes, a group firing again a minute after it resolved gets a new root."""
    bot = start_alert_bot(slack, tmp_path, config=alert_config(tmp_path, reopen_minutes=0))
    try:
        post_alert(bot, sim.notification([_firing()]))
        post_alert(bot, sim.notification([sim.alert("HighErrorRate", status="resolved", starts_at=T0,
                                                    ends_at=T0 + timedelta(minutes=3))]))
        post_alert(bot, sim.notification([sim.alert("HighErrorRate", starts_at=T0 + timedelta(minutes=4))]))
        bot.settle()
        first, second = roots(slack, STAGING_INCIDENT)
        assert slack.message(STAGING_INCIDENT, first["ts"])["text"].startswith("RESOLVED")
        assert "FIRING" in second["text"]
    finally:
        bot.stop()


def test_label_text_is_escaped(alert_bot: RunningBot, slack: FakeSlack) -> None:
    """A label or annotation cannot make the bot mention everyone or hide a link."""
    evil = _firing(summary="<!channel> pay <https://evil.example|here>", extra_labels={"pod": "<!here>"})
    post_alert(alert_bot, sim.notification([evil], runbook_url="javascript:alert(1)"))
    alert_bot.settle()
    [root] = roots(slack, STAGING_INCIDENT)
    shown = str(root["blocks"]) + root["text"] + thread(slack, STAGING_INCIDENT, root["ts"])[0]["text"]
    assert "<!channel>" not in shown and "<!here>" not in shown and "<https://evil" not in shown
    assert "&lt;!channel&gt;" in shown and "javascript:" not in shown
