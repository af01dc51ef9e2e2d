"""Delivery of alert messages under Slack's per-channel rate limits and across a restart of the bot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.core.alerts import simulate as sim
from tests.alerting import STAGING_INCIDENT, RateLimitedSlack, post_alert, roots, start_alert_bot, thread
from tests.harness.slack_api import FakeSlack

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _send_story(bot: object, name: str, pods: int) -> None:
    alerts = [sim.alert(name, starts_at=T0, extra_labels={"pod": f"{name}-{i}"}) for i in range(pods)]
    for i in range(1, pods + 1):
        post_alert(bot, sim.notification(alerts[:i]))  # type: ignore[arg-type]
    done = [sim.alert(name, status="resolved", starts_at=T0, ends_at=T0 + timedelta(minutes=3),
                      extra_labels={"pod": f"{name}-{i}"}) for i in range(pods)]
    post_alert(bot, sim.notification(done))  # type: ignore[arg-type]


def _check_story(fake: FakeSlack, name: str, pods: int) -> None:
    [root] = [r for r in roots(fake, STAGING_INCIDENT) if name in r["text"]]
    lines = [m["text"] for m in thread(fake, STAGING_INCIDENT, root["ts"])]
    expected = [f"pod=`{name}-{i}`" for i in range(pods)]
    assert len(lines) == pods + 1, lines  # one line per newly firing alert, then the resolve
    for line, pod in zip(lines, expected, strict=False):
        assert pod in line and "1 firing" in line
    assert "resolved" in lines[-1] and "All resolved" in lines[-1]
    assert fake.message(STAGING_INCIDENT, root["ts"])["text"].startswith("RESOLVED")


def test_rate_limited_channel_loses_duplicates_and_reorders_nothing(tmp_path: Path) -> None:
    """Three groups in one channel against 3 calls/s: 429s are waited out; every thread is complete, in order."""
    fake = RateLimitedSlack(per_second=3)
    with fake:
        bot = start_alert_bot(fake, tmp_path)
        try:
            for name in ("ErrA", "ErrB", "ErrC"):
                _send_story(bot, name, 3)
            bot.settle(timeout=60)
            assert fake.limited > 0  # the limit was really met
            for name in ("ErrA", "ErrB", "ErrC"):
                _check_story(fake, name, 3)
            posts = [c for c in fake.calls_to("chat.postMessage") if c.ok]
            assert len(posts) == 3 * (1 + 4)  # roots + thread lines, each exactly once
        finally:
            bot.stop()


def test_restart_with_alert_messages_queued_delivers_once_and_keeps_the_thread(tmp_path: Path) -> None:
    """Slack down while alerts arrive, the bot restarts: everything is delivered once, the thread is continued."""
    with FakeSlack() as fake:
        fake.outage(503)
        bot = start_alert_bot(fake, tmp_path, shutdown_grace_seconds=0.5)
        _send_story(bot, "ErrA", 2)
        bot.stop()
        fake.end_outage()
        again = start_alert_bot(fake, tmp_path, shutdown_grace_seconds=0.5)
        try:
            again.settle(timeout=60)
            _check_story(fake, "ErrA", 2)
            refire = sim.alert("ErrA", starts_at=T0 + timedelta(minutes=10), extra_labels={"pod": "ErrA-0"})
            post_alert(again, sim.notification([refire]))
            again.settle(timeout=30)
            [root] = roots(fake, STAGING_INCIDENT)  # the same root: thread state survived the restart
            assert "Firing again" in thread(fake, STAGING_INCIDENT, root["ts"])[-1]["text"]
            texts = [c.params.get("text") for c in fake.calls_to("chat.postMessage") if c.ok]
            assert len(texts) == len(set(texts)) == 1 + 3 + 1
        finally:
            again.stop()
