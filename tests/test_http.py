"""End to end over real HTTP: signed Slack requests to the real ASGI server, replies to a fake Slack."""

from __future__ import annotations

import json
import logging
import re
import socket
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


class ServerLogs(logging.Handler):
    """Every record the server side logs (ours, Bolt's, and uvicorn's, which does not propagate to root)."""

    LOGGERS = ("", "uvicorn")  # uvicorn.error propagates to uvicorn, which does not propagate

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> ServerLogs:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
        self._levels["bot.http"] = logging.getLogger("bot.http").level
        logging.getLogger("bot.http").setLevel(logging.INFO)
        return self

    def __exit__(self, *_exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        logging.getLogger("bot.http").setLevel(self._levels["bot.http"])

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records
                if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]

    def lines_from(self, logger: str) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == logger]


@pytest.fixture
def server_logs() -> Iterator[ServerLogs]:
    with ServerLogs() as logs:
        yield logs


def metric(bot: RunningBot, line_start: str) -> float | None:
    """The value of the first /metrics sample whose line starts with `line_start`."""
    for line in bot.client.get(f"{bot.url}/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_metric(bot: RunningBot, line_start: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(bot, line_start) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{line_start} is {metric(bot, line_start)}, expected {value}")
        time.sleep(0.02)


def raw_connection(bot: RunningBot, head: str, body_start: bytes = b"") -> socket.socket:
    """A real socket with the request line and headers of `head` (CRLFs added) and the first body bytes sent."""
    host, port = bot.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = head.strip().splitlines() + [f"Host: {host}", "", ""]
    sock.sendall("\r\n".join(lines).encode("latin-1") + body_start)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers and body of the one response on `sock`; the last value says whether the server then closed
    the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return int(status_line.split()[1]), headers, body, closed


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


@pytest.mark.parametrize("tamper", ["wrong_secret", "stale", "missing", "body", "future", "garbage_ts",
                                    "superscript_ts", "mixed_ts"])
def test_forged_requests_are_rejected(bot: RunningBot, tamper: str, server_logs: ServerLogs) -> None:
    """Wrong secret, stale or future timestamp, missing headers and a tampered body all get 401 and act on nothing;
    a timestamp of digits that are not ASCII ("\xb2" is "²" to the server) is malformed, not a 500."""
    body = slash_command_body("/help", "", ALICE, "alice", "C0STAGING1", bot.fake.response_url("x"))
    headers = signed_headers(body, SECRET)
    reasons = {"wrong_secret": "bad_signature", "stale": "stale_timestamp", "missing": "missing_headers",
               "body": "bad_signature", "future": "stale_timestamp", "garbage_ts": "malformed_timestamp",
               "superscript_ts": "malformed_timestamp", "mixed_ts": "malformed_timestamp"}
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
    elif tamper == "superscript_ts":
        headers = dict(headers, **{"X-Slack-Request-Timestamp": b"\xb2" * 10})  # type: ignore[dict-item]
    elif tamper == "mixed_ts":
        headers = dict(headers, **{"X-Slack-Request-Timestamp": b"170000000\xb3"})  # type: ignore[dict-item]
    resp = bot.post(body, headers)
    assert resp.status_code == 401 and resp.json()["reason"] == reasons[tamper]
    metrics = bot.client.get(f"{bot.url}/metrics").text
    assert f'chatops_slack_requests_rejected_total{{reason="{reasons[tamper]}"}} 1.0' in metrics
    bot.settle()
    assert audit_records(bot) == []
    assert server_logs.tracebacks() == [] and len(server_logs.lines_from("bot.http")) == 1


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


# --- the body gate: limits before the signature check (issue 6, item 1) --------------------------------

LIMITED = {"http_body_timeout_seconds": 1.0, "http_max_body_reads": 4}


@pytest.fixture
def limited_bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[RunningBot]:
    """The real bot with a 1 s body timeout and at most 4 bodies read at once."""
    running = start_bot(fake_slack, f"sqlite:///{tmp_path}/bot.db", **LIMITED)
    yield running
    running.stop()


def rss_bytes() -> int:
    """Resident memory of this process, which runs the server (uvicorn in a thread)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmRSS in /proc/self/status"
    return int(match.group(1)) * 1024


def test_huge_chunked_upload_is_cut_at_the_limit(bot: RunningBot, server_logs: ServerLogs) -> None:
    """An unsigned 200 MB chunked upload gets its 413 after about the limit: the server stops reading, closes the
    connection, and its memory does not grow with the upload."""
    total = 200 * 1024 * 1024
    block = b"a" * 65536
    frame = b"%x\r\n" % len(block) + block + b"\r\n"
    sock = raw_connection(bot, "POST /slack/events HTTP/1.1\nTransfer-Encoding: chunked\n"
                               "Content-Type: application/x-www-form-urlencoded")
    baseline = rss_bytes()
    peak = baseline
    response: list[tuple[int, dict[str, str], bytes, bool]] = []
    reader = threading.Thread(target=lambda: response.append(read_response(sock)), daemon=True)
    reader.start()
    sent = 0
    try:
        while sent < total and not response:
            sock.sendall(frame)
            sent += len(block)
            if sent % (4 * 1024 * 1024) == 0:
                peak = max(peak, rss_bytes())
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed the connection: what it had not read was never read
    reader.join(10)
    peak = max(peak, rss_bytes())
    sock.close()
    assert response, "no response to the oversized upload"
    status, headers, body, closed = response[0]
    assert status == 413 and json.loads(body)["reason"] == "too_large"
    assert headers["connection"] == "close" and closed
    print(f"sent {sent >> 20} MB before the close, RSS grew by {(peak - baseline) >> 20} MB")
    assert sent < 40 * 1024 * 1024, f"the server took {sent} bytes of a body over a 1 MB limit"
    assert peak - baseline < 50 * 1024 * 1024, f"memory grew by {(peak - baseline) >> 20} MB"
    assert metric(bot, 'chatops_slack_requests_rejected_total{reason="too_large"}') == 1.0
    assert server_logs.tracebacks() == []


def test_declared_oversized_body_is_refused_before_it_is_sent(bot: RunningBot) -> None:
    """Content-Length: 10 MB with only 1 KB sent: 413 at once (not after waiting for the rest), and closed."""
    sock = raw_connection(bot, f"POST /slack/events HTTP/1.1\nContent-Length: {10 * 1024 * 1024}\n"
                               "Content-Type: application/x-www-form-urlencoded", b"x" * 1024)
    status, headers, body, closed = read_response(sock)
    sock.close()
    assert status == 413 and json.loads(body)["reason"] == "too_large" and "10485760" in json.loads(body)["error"]
    assert headers["connection"] == "close" and closed


def test_half_sent_body_times_out_with_408(limited_bot: RunningBot, server_logs: ServerLogs) -> None:
    """A body that stops arriving half way is answered 408 after the body timeout and the connection closed."""
    sock = raw_connection(limited_bot, "POST /slack/events HTTP/1.1\nContent-Length: 500\n"
                                       "Content-Type: application/x-www-form-urlencoded", b"command=%2Fhelp")
    status, headers, body, closed = read_response(sock)
    sock.close()
    assert status == 408 and json.loads(body)["reason"] == "body_timeout"
    assert headers["connection"] == "close" and closed
    assert metric(limited_bot, "chatops_http_body_reads_in_progress") == 0.0
    assert server_logs.tracebacks() == []
    assert [line for line in server_logs.lines_from("bot.http") if "body_timeout" in line]


def test_body_reads_beyond_the_cap_get_503_at_once(limited_bot: RunningBot, server_logs: ServerLogs) -> None:
    """With 4 half-sent bodies held (the cap), 3 more requests get 503 + Retry-After without waiting; once the
    4 have timed out a signed command is served again."""
    head = "POST /slack/events HTTP/1.1\nContent-Length: 500\nContent-Type: application/x-www-form-urlencoded"
    held = [raw_connection(limited_bot, head, b"command=") for _ in range(4)]
    wait_for_metric(limited_bot, "chatops_http_body_reads_in_progress", 4.0)
    extra = [raw_connection(limited_bot, head, b"command=") for _ in range(3)]
    for sock in extra:
        status, headers, body, closed = read_response(sock)
        sock.close()
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["reason"] == "busy"
        assert headers["connection"] == "close" and closed
    assert metric(limited_bot, 'chatops_slack_requests_rejected_total{reason="busy"}') == 3.0
    assert [read_response(sock)[0] for sock in held] == [408] * 4
    for sock in held:
        sock.close()
    resp = limited_bot.command("/help", "", ALICE)
    assert resp.status_code == 200 and "/status" in resp.json()["text"]
    assert server_logs.tracebacks() == []


def test_client_gone_mid_body_is_one_log_line(bot: RunningBot, server_logs: ServerLogs) -> None:
    """A client that disconnects half way through its body leaves one INFO line, no ERROR and no traceback."""
    sock = raw_connection(bot, "POST /slack/events HTTP/1.1\nContent-Length: 1000\n"
                               "Content-Type: application/x-www-form-urlencoded", b"command=%2Fhelp&text=")
    wait_for_metric(bot, "chatops_http_body_reads_in_progress", 1.0)
    sock.close()
    wait_for_metric(bot, 'chatops_slack_requests_rejected_total{reason="client_disconnected"}', 1.0)
    wait_for_metric(bot, "chatops_http_body_reads_in_progress", 0.0)
    assert server_logs.tracebacks() == []
    lines = [r for r in server_logs.records if r.name == "bot.http"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "disconnected" in lines[0].getMessage()


def test_body_within_limits_is_served_after_the_gate(limited_bot: RunningBot) -> None:
    """A signed command sent in several pieces (chunked) within the limits is read whole and answered."""
    body = slash_command_body("/help", "", ALICE, "alice", "C0STAGING1", limited_bot.fake.response_url("c"))
    headers = signed_headers(body, SECRET)
    head = "POST /slack/events HTTP/1.1\nTransfer-Encoding: chunked\n" + "\n".join(f"{k}: {v}"
                                                                                   for k, v in headers.items())
    sock = raw_connection(limited_bot, head)
    for i in range(0, len(body), 40):
        piece = body[i:i + 40]
        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    sock.sendall(b"0\r\n\r\n")
    status, _headers, reply, _closed = read_response(sock)
    sock.close()
    assert status == 200 and "/status" in json.loads(reply)["text"]
