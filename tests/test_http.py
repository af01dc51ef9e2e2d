"""End to end over real HTTP: signed Slack requests to the real ASGI server, replies to a fake Slack."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.core.model import Reply
from bot.ids import ActionId, encode_value
from bot.persistence import audit
from bot.persistence.models import AuditRecord, OutboxMessage
from tests.bot_server import SECRET, RunningBot, start_bot
from tests.harness.signing import block_actions_body, event_body, sign, signed_headers, slash_command_body
from tests.harness.slack_api import FakeSlack

ALICE, DAVE, ROOT = "U0ALICE01", "U0DAVE004", "U0ROOT006"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API on a real socket."""
    with FakeSlack(users={ALICE: "alice", DAVE: "dave", ROOT: "root"}) as fake:
        yield fake


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[RunningBot]:
    """The real bot served by uvicorn on 127.0.0.1, on SQLite, talking to the fake Slack."""
    running = start_bot(fake_slack, f"sqlite:///{tmp_path}/bot.db")
    yield running
    running.stop()


def audit_records(bot: RunningBot) -> list[AuditRecord]:
    with bot.container.db.read() as session:
        return list(session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars())


def test_help_is_answered_in_the_ack(bot: RunningBot) -> None:
    """A signed /help gets the command list in the HTTP response itself."""
    resp = bot.command("/help", "", ALICE)
    assert resp.status_code == 200
    body = resp.json()
    assert body["response_type"] == "ephemeral" and "/status" in body["text"] and "/audit" in body["text"]
    bot.settle()
    assert [r.action for r in audit_records(bot)] == ["command.help"]


@pytest.mark.parametrize("tamper", ["wrong_secret", "stale", "missing", "body", "future", "garbage_ts"])
def test_forged_requests_are_rejected(bot: RunningBot, tamper: str) -> None:
    """Wrong secret, stale or future timestamp, missing headers and a tampered body all get 401 and act on nothing."""
    body = slash_command_body("/help", "", ALICE, "alice", "C0STAGING1", bot.fake.response_url("x"))
    headers = signed_headers(body, SECRET)
    reasons = {"wrong_secret": "bad_signature", "stale": "stale_timestamp", "missing": "missing_headers",
               "body": "bad_signature", "future": "stale_timestamp", "garbage_ts": "malformed_timestamp"}
    if tamper == "wrong_secret":
        headers = signed_headers(body, "not-the-secret")
    elif tamper == "stale":
        headers = signed_headers(body, SECRET, timestamp=int(time.time()) - 301)
    elif tamper == "future":
        headers = signed_headers(body, SECRET, timestamp=int(time.time()) + 400)
    elif tamper == "missing":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif tamper == "body":
        body = body.replace(b"help", b"audit")
    elif tamper == "garbage_ts":
        headers = dict(headers, **{"X-Slack-Request-Timestamp": "yesterday"})
    resp = bot.post(body, headers)
    assert resp.status_code == 401 and resp.json()["reason"] == reasons[tamper]
    metrics = bot.client.get(f"{bot.url}/metrics").text
    assert f'chatops_slack_requests_rejected_total{{reason="{reasons[tamper]}"}} 1.0' in metrics
    bot.settle()
    assert audit_records(bot) == []


def test_retried_command_acts_once(bot: RunningBot) -> None:
    """The same slash command delivered three times (two concurrently) is audited and answered once."""
    body = slash_command_body("/audit", "", ROOT, "root", "C0STAGING1", bot.fake.response_url("dup"),
                              trigger_id="trigger-dup-1")
    results: list[int] = []

    def send(retry: int) -> None:
        headers = signed_headers(body, SECRET)
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
        results.append(bot.post(body, headers).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send(2)
    bot.settle()
    assert results == [200, 200, 200]
    assert [r.action for r in audit_records(bot)] == ["command.audit"]
    assert len(bot.fake.wait_for_response("dup")) == 1
    time.sleep(0.3)  # a late duplicate reply would have arrived by now
    assert len(bot.fake.responses) == 1


def test_audit_reply_arrives_via_response_url(bot: RunningBot) -> None:
    """/audit as root acks at once and the page arrives on the response_url, with an Older button."""
    for i in range(4):
        bot.command("/help", "", ALICE, trigger_id=f"h{i}")
    bot.settle()
    resp = bot.command("/audit", "--limit 2", ROOT, name="page1")
    assert resp.status_code == 200 and resp.content == b""
    post = bot.fake.wait_for_response("page1")[0]
    assert post.body["response_type"] == "ephemeral"
    assert "command.help" in post.body["text"]
    buttons = [e for b in post.body["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons[0]["action_id"] == ActionId.audit_page


def test_denied_command_is_refused_and_audited(bot: RunningBot) -> None:
    """dave (viewer) asking for /audit is told which role he lacks, and the denial is recorded."""
    resp = bot.command("/audit", "", DAVE)
    assert "auditor" in resp.json()["text"]
    bot.settle()
    rec = audit_records(bot)[-1]
    assert (rec.action, rec.outcome, rec.actor_id) == ("command.audit", "denied", DAVE)


def test_usage_error_names_the_problem(bot: RunningBot) -> None:
    """A bad flag gets an ephemeral usage error naming it, never a traceback."""
    text = bot.command("/status", "--env moon", ALICE).json()["text"]
    assert "unknown environment 'moon'" in text and "Usage:" in text and "Traceback" not in text


def test_unknown_command_is_explained(bot: RunningBot) -> None:
    """An unknown slash command points at /help."""
    text = bot.command("/frobnicate", "", ALICE).json()["text"]
    assert "unknown command /frobnicate" in text and "/help" in text


def test_button_click_pages_and_checks_permission(bot: RunningBot) -> None:
    """An Older-records click by root replaces the page; the same click by dave is refused."""
    for i in range(3):
        bot.command("/help", "", ALICE, trigger_id=f"p{i}")
    bot.settle()
    value = encode_value({"limit": 1, "before": 3})
    body = block_actions_body(ActionId.audit_page, value, ROOT, "C0STAGING1", "1.1", bot.fake.response_url("click"))
    assert bot.post(body).status_code == 200
    post = bot.fake.wait_for_response("click")[0]
    assert post.body["replace_original"] is True and "#2" in post.body["text"]
    body = block_actions_body(ActionId.audit_page, value, DAVE, "C0STAGING1", "1.1", bot.fake.response_url("deny"))
    bot.post(body)
    assert "auditor" in bot.fake.wait_for_response("deny")[0].body["text"]


def test_malformed_button_value_is_refused(bot: RunningBot) -> None:
    """A button value that is not our JSON gets a clear refusal and an audit record."""
    body = block_actions_body(ActionId.audit_page, "{not json", ROOT, "C0STAGING1", "1.1",
                              bot.fake.response_url("bad"))
    bot.post(body)
    assert "not JSON" in bot.fake.wait_for_response("bad")[0].body["text"]
    bot.settle()
    assert audit_records(bot)[-1].outcome == "usage_error"


def test_app_home_published_once_per_event(bot: RunningBot) -> None:
    """app_home_opened publishes the Home tab; a retry of the same event does not publish again."""
    body = event_body({"type": "app_home_opened", "user": ALICE, "tab": "home", "event_ts": "1.2"},
                      event_id="Ev0HOME1")
    assert bot.post(body, signed_headers(body, SECRET, content_type="application/json")).status_code == 200
    headers = signed_headers(body, SECRET, content_type="application/json")
    headers["X-Slack-Retry-Num"] = "1"
    bot.post(body, headers)
    call = bot.fake.wait_for("views.publish")[0]
    bot.settle()
    assert len(bot.fake.calls_to("views.publish")) == 1
    view = call.params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert "deployer" in json.dumps(view)


def test_health_readiness_and_metrics(bot: RunningBot) -> None:
    """/healthz and /readyz answer, and /metrics exposes requests, commands, ack latency and tasks."""
    bot.command("/help", "", ALICE)
    bot.settle()
    assert bot.client.get(f"{bot.url}/healthz").json() == {"status": "ok"}
    assert bot.client.get(f"{bot.url}/readyz").json()["status"] == "ready"
    text = bot.client.get(f"{bot.url}/metrics").text
    for name in ('chatops_commands_total{command="help",outcome="ok"} 1.0', "chatops_ack_latency_seconds_bucket",
                 "chatops_http_requests_total", "chatops_background_tasks_started_total"):
        assert name in text


def test_outbox_waits_out_rate_limit_and_loses_nothing(bot: RunningBot) -> None:
    """A 429 with Retry-After delays the post, then it is delivered once, in order with the next one."""
    bot.fake.fail_next("chat.postMessage", status=429, retry_after=1)
    with bot.container.db.transaction() as session:
        bot.container.outbox.post(session, "C0STAGING1", Reply("first"), key="m1")
        bot.container.outbox.post(session, "C0STAGING1", Reply("second"))
    calls = bot.fake.wait_for(lambda c: c.method == "chat.postMessage" and not c.faulted, count=2, timeout=10)
    delivered = [c.params["text"] for c in calls if not c.faulted]
    assert delivered == ["first", "second"]
    faulted = [c for c in bot.fake.calls_to("chat.postMessage") if c.faulted]
    assert len(faulted) == 1 and calls[0].at - faulted[0].at >= 0.9


def test_outbox_retries_5xx_then_updates_in_place(bot: RunningBot) -> None:
    """Two 503s are retried; a queued update then edits the posted message by its key."""
    bot.fake.fail_next("chat.postMessage", status=503, times=2)
    with bot.container.db.transaction() as session:
        bot.container.outbox.post(session, "C0STAGING1", Reply("v1"), key="live")
    with bot.container.db.transaction() as session:
        bot.container.outbox.update(session, "live", Reply("v2"))
    update = bot.fake.wait_for(lambda c: c.method == "chat.update" and c.ok, timeout=15)[0]
    post = [c for c in bot.fake.calls_to("chat.postMessage") if c.ok][0]
    assert update.params["ts"] == post.response["ts"]  # type: ignore[index]
    assert bot.fake.message("C0STAGING1", update.params["ts"])["text"] == "v2"


def test_refused_response_url_is_dead_and_audited(bot: RunningBot) -> None:
    """A response_url outside the allowed Slack prefix is never called; the failure is audited."""
    with bot.container.db.transaction() as session:
        bot.container.outbox.respond(session, "https://evil.example.com/steal", Reply("secret page"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with bot.container.db.read() as session:
            status = session.execute(select(OutboxMessage.status)).scalar_one()
        if status == "dead":
            break
        time.sleep(0.05)
    assert status == "dead"
    rec = audit_records(bot)[-1]
    assert rec.action == "slack.delivery_failed" and "not an allowed" in rec.args
    with bot.container.db.read() as session:
        assert audit.verify(session).ok


def test_signature_helper_matches_slack_sdk() -> None:
    """Our verifier accepts exactly what slack_sdk's signer produces."""
    from slack_sdk.signature import SignatureVerifier

    from bot.slack.verify import verify

    body = b"token=x&command=%2Fhelp"
    headers = {k.lower(): v for k, v in sign(body, SECRET).items()}
    verify(SECRET, headers, body)
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)


def test_outbox_rows_are_counted(bot: RunningBot) -> None:
    """Every delivered reply leaves a 'sent' row: nothing is held only in memory."""
    bot.command("/audit", "", ROOT, name="rows")
    bot.fake.wait_for_response("rows")
    bot.settle()
    with bot.container.db.read() as session:
        counts = dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
    assert counts == {"sent": 1}
