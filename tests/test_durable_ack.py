"""An acknowledged command is never lost: durable before the ack, run after a SIGKILL, never twice.

Real `chatops serve` processes on SQLite and on PostgreSQL, a FakeSlack receiving the replies at
`response_url`, signed requests over HTTP, SIGKILL right after the last ack, a restart on the same
database; and a PostgreSQL that is stopped under a running bot.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.persistence.db import Database
from bot.persistence.models import AuditRecord, OutboxMessage, PendingCommand, ProcessedRequest
from bot.settings import Settings
from tests.bot_server import REPO, SECRET, free_port
from tests.harness.postgres import PostgresServer, find_pg_bindir
from tests.harness.signing import block_actions_body, signed_headers, slash_command_body
from tests.harness.slack_api import FakeSlack
from tests.test_serve import serve_env

ALICE = "U0ALICE01"  # may see staging (deployer there), is not an auditor: /audit is refused in the ack
BURST = 60


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API and response_url endpoint on a real socket."""
    with FakeSlack() as fake:
        yield fake


def _burst(port: int, fake: FakeSlack) -> tuple[list[str], list[str], list[httpx.Response]]:
    """60 signed commands at once: two /swarm-status (deferred) to each /audit (refused in the ack).
    Returns the response_url names of the deferred ones, of the refused ones, and every ack."""
    deferred, refused, bodies = [], [], []
    for i in range(BURST):
        if i % 3 == 2:
            name, command = f"refused-{i}", "/audit"
            refused.append(name)
        else:
            name, command = f"status-{i}", "/swarm-status"
            deferred.append(name)
        bodies.append(slash_command_body(command, "", ALICE, "alice", "C0STAGING1", fake.response_url(name)))
    url = f"http://127.0.0.1:{port}/slack/events"

    def send(body: bytes) -> httpx.Response:
        return httpx.post(url, content=body, headers=signed_headers(body, SECRET), timeout=10)

    with ThreadPoolExecutor(max_workers=20) as pool:
        acks = list(pool.map(send, bodies))
    return deferred, refused, acks


def _settled(db_url: str, timeout: float = 60.0) -> None:
    """Wait until no command is pending and no reply is waiting in the outbox."""
    db = Database(db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with db.read() as session:
                pending = session.execute(select(func.count()).select_from(PendingCommand)).scalar_one()
                queued = session.execute(select(func.count()).select_from(OutboxMessage)
                                         .where(OutboxMessage.status == "pending")).scalar_one()
            if pending == 0 and queued == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"not settled: {pending} pending command(s), {queued} queued reply(ies)")
    finally:
        db.dispose()


def _audit_counts(db_url: str) -> tuple[Counter[tuple[str, str]], int]:
    db = Database(db_url)
    try:
        with db.read() as session:
            rows = session.execute(select(AuditRecord.action, AuditRecord.outcome)).all()
            keys = session.execute(select(func.count()).select_from(ProcessedRequest)).scalar_one()
        return Counter((a, o) for a, o in rows), int(keys)
    finally:
        db.dispose()


def start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`chatops serve` with its output in a file (a pipe nobody reads would block it), once /readyz is 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become ready")


def _pending_count(db_url: str) -> int:
    db = Database(db_url)
    try:
        with db.read() as session:
            return int(session.execute(select(func.count()).select_from(PendingCommand)).scalar_one())
    finally:
        db.dispose()


def _replies_queued(db_url: str) -> dict[str, int]:
    """response_url name -> how many replies the bot queued for it (one per run of the command)."""
    db = Database(db_url)
    try:
        with db.read() as session:
            payloads = session.execute(select(OutboxMessage.payload).where(OutboxMessage.kind == "respond")).scalars()
            return dict(Counter(str(p["response_url"]).rsplit("/", 1)[1] for p in payloads))
    finally:
        db.dispose()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(10)


def test_sigkill_after_a_burst_loses_no_acknowledged_command(fake_slack: FakeSlack, database_url: str,
                                                            tmp_path: Path) -> None:
    """SIGKILL right after the 60th ack; after a restart every deferred command has run once and answered
    at its response_url, and every refusal answered in the ack is audited once (SQLite and PostgreSQL)."""
    log = tmp_path / "serve.log"
    proc = start_serve(serve_env(fake_slack, database_url), port := free_port(), log)
    try:
        deferred, refused, acks = _burst(port, fake_slack)
    finally:
        _kill(proc)  # right after the last ack: most deferred jobs have not run yet
    assert [a.status_code for a in acks] == [200] * BURST
    print(f"left pending by the SIGKILL: {_pending_count(database_url)} of {len(deferred)} deferred commands")
    refusal_texts = [a.json()["text"] for a in acks if a.content]
    assert len(refusal_texts) == len(refused) and all("auditor" in t for t in refusal_texts)

    proc = start_serve(serve_env(fake_slack, database_url), free_port(), log)
    try:
        for name in deferred:
            fake_slack.wait_for_response(name, timeout=60)
        _settled(database_url)
        time.sleep(1.5)  # a second run of anything would have reached FakeSlack by now
    finally:
        proc.terminate()
        proc.wait(30)

    posts = Counter(r.name for r in fake_slack.responses if not r.faulted)
    assert all(posts[name] >= 1 for name in deferred)
    # a reply whose call was made but not yet marked sent at the SIGKILL is sent again (at-least-once): at
    # most one per task thread (each job delivers its own reply) plus the outbox worker's one ...
    assert sum(posts[name] - 1 for name in deferred) <= Settings.model_fields["worker_threads"].default + 1
    # ... but every command ran exactly once: one reply queued for each
    assert _replies_queued(database_url) == dict.fromkeys(deferred, 1)
    assert not any(name in posts for name in refused)  # answered in the ack, nothing posted later
    counts, keys = _audit_counts(database_url)
    assert counts[("command.status", "ok")] == len(deferred)
    assert counts[("command.audit", "denied")] == len(refused)
    assert keys == BURST


# --- PostgreSQL stopped under a running bot -------------------------------------------------------
@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, so that it can be stopped."""
    if find_pg_bindir() is None:
        pytest.skip("no PostgreSQL binaries")
    server = PostgresServer()
    try:
        server.start()
    except Exception as exc:  # no cluster, no test (the shared one is covered elsewhere)
        pytest.skip(f"could not start PostgreSQL: {exc}")
    yield server
    server.stop()


def _claims_success(resp: httpx.Response) -> bool:
    """A 200 whose body does not say that nothing was recorded."""
    if resp.status_code != 200:
        return False
    if not resp.content:
        return True  # an empty ack: "we have it"
    text: Any = resp.json().get("text", "")
    return "not recorded" not in text


@pytest.mark.postgres
def test_postgres_stopped_no_ack_claims_a_recorded_command(fake_slack: FakeSlack,
                                                           private_postgres: PostgresServer,
                                                           tmp_path: Path) -> None:
    """With PostgreSQL stopped, deferred commands, refusals and /help are answered "not recorded", and a
    button click gets a 503 plus a note at its response_url; none of it is run or audited later."""
    url = private_postgres.url
    log = tmp_path / "serve.log"
    proc = start_serve(serve_env(fake_slack, url), port := free_port(), log)
    events = f"http://127.0.0.1:{port}/slack/events"
    try:
        private_postgres._pg_ctl_stop("fast")  # the data directory stays: it is started again below
        answers: list[httpx.Response] = []
        for i in range(20):
            for command in ("/swarm-status", "/audit", "/help"):
                body = slash_command_body(command, "", ALICE, "alice", "C0STAGING1",
                                          fake_slack.response_url(f"down-{command[1:]}-{i}"))
                answers.append(httpx.post(events, content=body, headers=signed_headers(body, SECRET), timeout=10))
        click = block_actions_body("audit.page", json.dumps({"before": 5}), "U0ROOT006", "C0STAGING1",
                                   "1700000000.000100", fake_slack.response_url("down-click"))
        click_answer = httpx.post(events, content=click, headers=signed_headers(click, SECRET), timeout=10)
    finally:
        _kill(proc)

    assert [a.status_code for a in answers] == [200] * len(answers)
    assert not [a.json() if a.content else "(empty)" for a in answers if _claims_success(a)]
    assert "/status" in answers[2].json()["text"]  # /help still answers, saying it was not recorded
    assert click_answer.status_code == 503
    assert "not recorded" in fake_slack.wait_for_response("down-click", timeout=10)[0].body["text"]

    # the database comes back: a new process finds nothing to run, nothing was audited
    assert private_postgres.port is not None
    private_postgres._start_on(private_postgres.port)  # same port, same data directory
    proc = start_serve(serve_env(fake_slack, url), free_port(), log)
    try:
        _settled(url)
        time.sleep(1.5)
    finally:
        proc.terminate()
        proc.wait(30)
    counts, keys = _audit_counts(url)
    assert sum(n for (action, _), n in counts.items() if action.startswith(("command.", "action."))) == 0
    assert keys == 0
    assert not [r for r in fake_slack.responses if r.name.startswith("down-") and r.name != "down-click"]
