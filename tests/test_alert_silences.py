"""Silencing from an alert root, on the real bot with FakeSlack clicks and a real Alertmanager: the *Silence
for…* menu's durations, a forged duration, a double click, a claim left by a dead process, a failing
Alertmanager, and the Alertmanager call made outside the click's transaction."""

from __future__ import annotations

import http.server
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.core.alerts.silences import marker, pending_id
from bot.ids import decode_value, encode_value
from bot.persistence.models import AlertGroup
from bot.timeutil import utcnow
from integrations.alertmanager import AlertmanagerClient, Matcher, Silence
from tests.alerting import PROD_INCIDENT, alertmanager_api, pagerduty, wait_until
from tests.bot_server import RunningBot
from tests.harness.alertmanager import AlertmanagerServer, free_port
from tests.harness.pagerduty import FakePagerDuty
from tests.harness.slack_api import FakeSlack
from tests.test_alert_actions import (
    ERIN,
    audits,
    bot,
    buttons,
    choose,
    click,
    fire,
    make_bot,
    menu,
    root,
    slack,
)

__all__ = ["alertmanager_api", "bot", "pagerduty", "slack"]


def active(url: str, alertname: str) -> list[Silence]:
    with AlertmanagerClient(url) as am:
        return [s for s in am.list_silences(matchers=[Matcher("alertname", alertname)]) if s.state != "expired"]


def group_row(bot: RunningBot, title: str) -> AlertGroup:
    with bot.container.db.read() as session:
        return session.execute(select(AlertGroup).where(AlertGroup.title == title)).scalar_one()


def test_the_menu_silences_for_exactly_the_chosen_time(bot: RunningBot, alertmanager_api: AlertmanagerServer) -> None:
    """*Silence for… 2 days*: Alertmanager holds a silence of two days on the group's labels; the root and the
    thread say so."""
    message = fire(bot, "FeedLagging")
    claimed, done = choose(bot, message, "2 days", ERIN)
    assert claimed.startswith(":hourglass: Asking Alertmanager to silence *FeedLagging* for 2 days")
    assert done.startswith("Silenced *FeedLagging* until")
    [silence] = active(alertmanager_api.url, "FeedLagging")
    assert timedelta(days=2) - timedelta(seconds=30) < silence.ends_at - silence.starts_at <= timedelta(days=2)
    assert group_row(bot, "FeedLagging").silence_id == silence.id
    assert "Unsilence" in buttons(root(bot, message["ts"]))
    [ok] = [a for a in audits(bot, "alertmanager.silence") if a["outcome"] == "ok"]
    assert ok["args"]["minutes"] == 2880 and ok["args"]["silence_id"] == silence.id


@pytest.mark.parametrize("forged", [{"m": 45}, {"m": 10 ** 7}, {"m": True}, {"h": 3}, {}])
def test_a_forged_duration_is_refused_and_audited(bot: RunningBot, alertmanager_api: AlertmanagerServer,
                                                  forged: dict[str, Any]) -> None:
    """A menu value naming a duration the menu does not offer is refused (usage error, audited with the value);
    nothing reaches Alertmanager."""
    message = fire(bot, "QuoteGap")
    value = decode_value(menu(message)["options"][0]["value"])
    value.pop("m")
    [reply] = choose(bot, message, "15 min", ERIN, value=encode_value({**value, **forged}), answers=1)
    assert reply.startswith(":warning:") and "duration" in reply
    [refused] = [a for a in audits(bot, "action.alert.silence_for")]
    assert refused["outcome"] == "usage_error" and refused["args"]["value"] == encode_value({**value, **forged})
    assert active(alertmanager_api.url, "QuoteGap") == []
    assert group_row(bot, "QuoteGap").silence_id is None


def test_a_double_click_creates_one_silence(bot: RunningBot, alertmanager_api: AlertmanagerServer) -> None:
    """Two Silence clicks at once: one silence in Alertmanager; the other click is told it is under way or done."""
    message = fire(bot, "OrderRejects")
    [button] = [buttons(message)["Silence 1 h"]]
    results: list[str] = []

    def one() -> None:
        results.append(click(bot, message, "Silence 1 h", ERIN))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    bot.fake.wait_for_response(None, count=3, timeout=15)
    bot.settle()
    assert len(active(alertmanager_api.url, "OrderRejects")) == 1
    texts = [str(r.body.get("text", "")) for r in bot.fake.responses]
    assert any("right now" in t or "already silenced" in t for t in texts), texts
    assert [a["outcome"] for a in audits(bot, "alertmanager.silence")].count("ok") == 1
    assert button["action_id"] == "alert.silence"


def test_a_claim_left_by_a_dead_process_finds_its_silence_again(bot: RunningBot,
                                                                alertmanager_api: AlertmanagerServer) -> None:
    """A process died after Alertmanager created the silence but before recording it: the stale claim's next
    click finds the silence by its matchers and the claim's marker and records it instead of creating another."""
    message = fire(bot, "VenueDown")
    token = "0badc0ffee00"
    with AlertmanagerClient(alertmanager_api.url) as am:  # what the dead process had done
        orphan = am.silence_for(timedelta(hours=1), {"alertname": "VenueDown", "env": "production"},
                                created_by=f"erin (Slack {ERIN})", comment=f"from the alert thread {marker(token)}")
    with bot.container.db.transaction() as session:  # and the claim it left behind, minutes ago
        grp = session.execute(select(AlertGroup).where(AlertGroup.title == "VenueDown")).scalar_one()
        grp.silence_id, grp.silenced_by = pending_id(token, 60), ERIN
        grp.silenced_until = utcnow() + timedelta(minutes=55)
    assert click(bot, message, "Silence 1 h", ERIN, answers=2).startswith("Silenced *VenueDown*")
    assert [s.id for s in active(alertmanager_api.url, "VenueDown")] == [orphan]
    assert group_row(bot, "VenueDown").silence_id == orphan
    [ok] = [a for a in audits(bot, "alertmanager.silence") if a["outcome"] == "ok"]
    assert ok["args"]["adopted"] is True and ok["args"]["silence_id"] == orphan


def test_a_fresh_claim_refuses_a_second_click(bot: RunningBot, alertmanager_api: AlertmanagerServer) -> None:
    """While a claim is fresh (its process may still be asking Alertmanager), another click creates nothing."""
    message = fire(bot, "MarginCallSpike")
    with bot.container.db.transaction() as session:
        grp = session.execute(select(AlertGroup).where(AlertGroup.title == "MarginCallSpike")).scalar_one()
        grp.silence_id, grp.silenced_by = pending_id("feedfacefeed", 60), ERIN
        grp.silenced_until = utcnow() + timedelta(minutes=60)
    assert "silencing this alert right now" in click(bot, message, "Silence 1 h", ERIN)
    assert active(alertmanager_api.url, "MarginCallSpike") == []


@pytest.fixture
def dead_alertmanager_bot(slack: FakeSlack, tmp_path: Path, pagerduty: FakePagerDuty,
                          monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBot]:
    running = make_bot(slack, tmp_path, f"http://127.0.0.1:{free_port()}", pagerduty, monkeypatch)
    yield running
    running.stop()


def test_a_failing_alertmanager_is_recorded_and_shown(dead_alertmanager_bot: RunningBot) -> None:
    """Alertmanager unreachable: the clicker is told, the failure is audited, the claim is released (the root
    offers Silence again)."""
    bot = dead_alertmanager_bot
    message = fire(bot, "GatewayDown")
    reply = click(bot, message, "Silence 1 h", ERIN, answers=2)
    assert reply.startswith(":warning:") and "Nothing was silenced" in reply
    assert group_row(bot, "GatewayDown").silence_id is None
    outcomes = [a["outcome"] for a in audits(bot, "alertmanager.silence")]
    assert outcomes == ["claimed", "backend_unavailable"]
    updated = root(bot, message["ts"])
    assert "Silence 1 h" in buttons(updated) and "Silencing" not in str(updated["blocks"])


def test_a_failing_unsilence_keeps_the_silence(dead_alertmanager_bot: RunningBot) -> None:
    """Alertmanager unreachable when expiring a silence: the group stays silenced (the root offers Unsilence
    again), the failure is audited and the clicker told."""
    bot = dead_alertmanager_bot
    message = fire(bot, "BookSkew")
    silence_id = "11111111-2222-4333-8444-555555555555"
    with bot.container.db.transaction() as session:  # a silence recorded while Alertmanager was up
        grp = session.execute(select(AlertGroup).where(AlertGroup.title == "BookSkew")).scalar_one()
        grp.silence_id, grp.silenced_by, grp.silenced_until = silence_id, ERIN, utcnow() + timedelta(hours=1)
        bot.container.core.alerts.refresh_root(session, grp)
    updated = root(bot, message["ts"])
    reply = click(bot, updated, "Unsilence", ERIN, answers=2)
    assert reply.startswith(":warning:") and "still in place" in reply
    assert group_row(bot, "BookSkew").silence_id == silence_id
    assert [a["outcome"] for a in audits(bot, "alertmanager.unsilence")] == ["backend_unavailable"]
    assert "Unsilence" in buttons(root(bot, message["ts"]))


class _Parked(http.server.BaseHTTPRequestHandler):
    """Forwards to the real Alertmanager, holding each silence creation until the test releases it."""

    upstream = ""
    arrived = threading.Event()
    release = threading.Event()

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if method == "POST":
            self.arrived.set()
            self.release.wait(30)
        answer = httpx.request(method, self.upstream + self.path, content=body or None,
                               headers={"Content-Type": "application/json"}, timeout=10)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._forward("POST")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def parked(alertmanager_api: AlertmanagerServer) -> Iterator[tuple[str, type[_Parked]]]:
    class Handler(_Parked):
        upstream = alertmanager_api.url
        arrived = threading.Event()
        release = threading.Event()

    handler = Handler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def test_no_database_lock_is_held_while_alertmanager_answers(slack: FakeSlack, tmp_path: Path,
                                                             pagerduty: FakePagerDuty, monkeypatch: pytest.MonkeyPatch,
                                                             parked: tuple[str, type[_Parked]],
                                                             alertmanager_api: AlertmanagerServer) -> None:
    """While Alertmanager holds the silence request, another writer can take SQLite's write lock (the click's
    transaction has committed); once it answers, the silence is recorded."""
    url, handler = parked
    bot = make_bot(slack, tmp_path, url, pagerduty, monkeypatch)
    try:
        message = fire(bot, "PnlDrift")
        name_done: list[str] = []
        clicker = threading.Thread(target=lambda: name_done.append(click(bot, message, "Silence 1 h", ERIN,
                                                                         answers=2)))
        clicker.start()
        assert handler.arrived.wait(15), "the silence request never reached Alertmanager"
        writer = sqlite3.connect(tmp_path / "bot.db", timeout=5)
        try:
            writer.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the click still holds it
            writer.rollback()
        finally:
            writer.close()
        wait_until(lambda: "Silencing in Alertmanager for 1 h" in str(bot.fake.message(PROD_INCIDENT,
                                                                                         message["ts"])["blocks"]),
                   15, "the root to show the claim")
        handler.release.set()
        clicker.join(30)
        assert name_done and name_done[0].startswith("Silenced *PnlDrift*")
        [silence] = active(alertmanager_api.url, "PnlDrift")
        assert group_row(bot, "PnlDrift").silence_id == silence.id
    finally:
        bot.stop()
