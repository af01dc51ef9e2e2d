"""`chatops serve` as a real process: refuses bad config, shuts down gracefully, resumes the outbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage
from tests.bot_server import REPO, SECRET, free_port
from tests.harness.signing import signed_headers, slash_command_body
from tests.harness.slack_api import DEFAULT_TOKEN, FakeSlack

ROOT = "U0ROOT006"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API on a real socket."""
    with FakeSlack() as fake:
        yield fake


def serve_env(fake: FakeSlack, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env.update(CHATOPS_CONFIG=str(REPO / "chatops.example.yml"), CHATOPS_DATABASE_URL=db_url,
               CHATOPS_SLACK_SIGNING_SECRET=SECRET, CHATOPS_SLACK_BOT_TOKEN=DEFAULT_TOKEN,
               CHATOPS_SLACK_API_URL=fake.base_url,
               CHATOPS_SLACK_RESPONSE_URL_PREFIXES=f'["{fake.response_url("")}"]',
               CHATOPS_SHUTDOWN_GRACE_SECONDS="3")
    env.update(extra)
    return env


def start_serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become ready")


def test_serve_refuses_invalid_config(tmp_path: Path) -> None:
    """An invalid config stops `serve` with each problem and its field path, exit 2, no traceback."""
    bad = tmp_path / "bad.yml"
    bad.write_text("people: {alice: nobody}\nenvironments: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env.update(CHATOPS_CONFIG=str(bad), CHATOPS_SLACK_SIGNING_SECRET="s", CHATOPS_SLACK_BOT_TOKEN="xoxb-1",
               CHATOPS_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    out = subprocess.run([sys.executable, "-m", "bot", "serve"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "people" in out.stderr and "not a Slack user id" in out.stderr
    assert "environments" in out.stderr and "Traceback" not in out.stderr


def test_serve_requires_signing_secret(tmp_path: Path) -> None:
    """HTTP mode without a signing secret refuses to start, naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env.update(CHATOPS_CONFIG=str(REPO / "chatops.example.yml"), CHATOPS_SLACK_BOT_TOKEN="xoxb-1",
               CHATOPS_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    out = subprocess.run([sys.executable, "-m", "bot", "serve"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "CHATOPS_SLACK_SIGNING_SECRET" in out.stderr and "Traceback" not in out.stderr


def test_sigterm_persists_undelivered_reply_and_restart_delivers_it(fake_slack: FakeSlack, tmp_path: Path) -> None:
    """SIGTERM while Slack is failing: exit 0 with the reply kept in the outbox; the next start delivers it."""
    db_url = f"sqlite:///{tmp_path}/bot.db"
    port = free_port()
    proc = start_serve(serve_env(fake_slack, db_url), port)
    fake_slack.fail_next("response/after-restart", status=503, times=3)
    body = slash_command_body("/audit", "", ROOT, "root", "C0STAGING1", fake_slack.response_url("after-restart"))
    assert httpx.post(f"http://127.0.0.1:{port}/slack/events", content=body,
                      headers=signed_headers(body, SECRET)).status_code == 200
    fake_slack.wait_for_response("after-restart", timeout=10)  # the first (failing) attempt
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    db = Database(db_url)
    with db.read() as session:
        row = session.execute(select(OutboxMessage)).scalar_one()
    assert row.status == "pending" and row.kind == "respond"
    db.dispose()
    proc = start_serve(serve_env(fake_slack, db_url), free_port())
    try:
        delivered = [r for r in fake_slack.wait_for_response("after-restart", count=4, timeout=20) if not r.faulted]
        assert len(delivered) == 1
        assert delivered[0].body["response_type"] == "ephemeral"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_sigterm_finishes_in_flight_work(fake_slack: FakeSlack, tmp_path: Path) -> None:
    """A reply accepted just before SIGTERM is still delivered before the process exits."""
    port = free_port()
    proc = start_serve(serve_env(fake_slack, f"sqlite:///{tmp_path}/bot.db"), port)
    body = slash_command_body("/audit", "", ROOT, "root", "C0STAGING1", fake_slack.response_url("inflight"))
    httpx.post(f"http://127.0.0.1:{port}/slack/events", content=body, headers=signed_headers(body, SECRET))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert len(fake_slack.wait_for_response("inflight", timeout=1)) == 1
