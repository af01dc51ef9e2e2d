"""`/deploy v2.3 --canary` end to end with real parts: the real bot over HTTP, the official Kubernetes client
against the API stand-in, canary analysis against a REAL Prometheus, approvals through signed button clicks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.persistence import audit
from bot.persistence.db import Database
from bot.persistence.models import AuditRecord
from tests.bot_server import SECRET, RunningBot, free_port, start_bot
from tests.harness.signing import block_actions_body, signed_headers, slash_command_body
from tests.harness.slack_api import DEFAULT_TOKEN, FakeSlack
from tests.real_world import (
    ALICE,
    BOB,
    CAROL,
    DEPLOY_CHANNEL,
    IMAGE,
    INCIDENT_CHANNEL,
    REPO,
    World,
    plan_button,
    real_world,
    run_message_text,
    wait_until,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Kubernetes stand-in with trading-bot-swarm at v2.2.0, an exporter and a real Prometheus scraping it."""
    with real_world(tmp_path) as w:
        yield w


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API on a real socket."""
    with FakeSlack() as fake:
        yield fake


def click(bot_url: str, fake: FakeSlack, label: str, user: str, name: str) -> None:
    button = plan_button(fake, label)
    body = block_actions_body(button["action_id"], button["value"], user, DEPLOY_CHANNEL, button["ts"],
                              fake.response_url(name))
    assert httpx.post(f"{bot_url}/slack/events", content=body, headers=signed_headers(body, SECRET)).status_code == 200


def records(db_url: str) -> list[AuditRecord]:
    db = Database(db_url)
    with db.read() as session:
        rows = list(session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars())
        assert audit.verify(session).ok
    db.dispose()
    return rows


def request_and_approve(bot: RunningBot, fake: FakeSlack) -> None:
    bot.command("/deploy", "v2.3 --env production --canary --reason e2e", ALICE, name="req",
                channel=DEPLOY_CHANNEL)
    click(bot.url, fake, "Approve", BOB, "bob")
    click(bot.url, fake, "Approve", CAROL, "carol")


def test_canary_with_two_approvals_goes_green(world: World, fake_slack: FakeSlack, tmp_path: Path) -> None:
    """Healthy canary: 25/50/100 % with real analysis, promoted; the stable Deployment runs v2.3, canary gone."""
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/e2e.db", config=world.config)
    try:
        request_and_approve(bot, fake_slack)
        wait_until(lambda: "Succeeded" in run_message_text(fake_slack), 120, "the run to succeed")
        assert world.image() == f"{IMAGE}:v2.3" and not world.has_canary()
        text = run_message_text(fake_slack)
        assert "approved by <@U0BOB0002>, <@U0CAROL03>" in text and "promoted" in text
        actions = [r.action for r in records(bot.container.settings.database_url)]
        assert actions.count("deploy.start") == 1 and actions.count("deploy.analysis") >= 3
        assert actions.count("kubernetes.canary_weight") == 3 and "deploy.succeeded" in actions
    finally:
        bot.stop()


def test_bad_canary_rolls_back_by_itself(world: World, fake_slack: FakeSlack, tmp_path: Path) -> None:
    """The exporter turns 20 % errors mid-canary: analysis fails, the bot rolls back and says why."""
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/bad.db", config=world.config)
    try:
        request_and_approve(bot, fake_slack)
        wait_until(world.has_canary, 60, "the canary Deployment")
        world.exporter.set(version="canary", error_rate=0.2)
        wait_until(lambda: "Rolled back" in run_message_text(fake_slack), 90, "the automatic rollback")
        assert world.image() == f"{IMAGE}:v2.2.0" and not world.has_canary()
        text = run_message_text(fake_slack)
        assert "error_rate" in text and "FAIL" in text
        alerts = [m["text"] for m in fake_slack.messages_in(INCIDENT_CHANNEL)]
        assert any("rolled back" in a for a in alerts)
        actions = [r.action for r in records(bot.container.settings.database_url)]
        assert "deploy.rollback.start" in actions and "deploy.rolled_back" in actions
    finally:
        world.exporter.set(version="canary", error_rate=0.002)
        bot.stop()


def test_prometheus_down_fails_safe(world: World, fake_slack: FakeSlack, tmp_path: Path) -> None:
    """Prometheus goes away mid-canary: the analysis cannot vouch for the canary, so it rolls back."""
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/down.db", config=world.config)
    try:
        request_and_approve(bot, fake_slack)
        wait_until(world.has_canary, 60, "the canary Deployment")
        world.prometheus.stop()
        wait_until(lambda: "Rolled back" in run_message_text(fake_slack), 90, "the fail-safe rollback")
        assert "prometheus unreachable" in run_message_text(fake_slack).lower()
        assert world.image() == f"{IMAGE}:v2.2.0"
    finally:
        bot.stop()


def test_kubernetes_down_at_plan_time_is_reported_and_audited(world: World, fake_slack: FakeSlack,
                                                              tmp_path: Path) -> None:
    """/deploy while the Kubernetes API answers 503: a clear message, no plan, no lock, an audit record."""
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/k8s-down.db", config=world.config)
    try:
        world.kube.error_next(3, status=503)
        bot.command("/deploy", "v2.3 --env production --canary", ALICE, name="down", channel=DEPLOY_CHANNEL)
        text = fake_slack.wait_for_response("down", timeout=20)[0].body["text"]
        assert "kubernetes" in text.lower() and "Traceback" not in text
        assert fake_slack.messages_in(DEPLOY_CHANNEL) == []
        bot.settle()
        last = records(bot.container.settings.database_url)[-1]
        assert (last.action, last.outcome) == ("command.deploy", "backend_unavailable")
    finally:
        bot.stop()


def test_istio_canary_shifts_virtual_service_weights(world: World, fake_slack: FakeSlack, tmp_path: Path) -> None:
    """With the istio router the canary's share is set by VirtualService weights 25/50/100, then back to 0."""
    import yaml

    data = yaml.safe_load(world.config.read_text())
    data["environments"]["production"]["canary"]["router"] = "istio"
    world.config.write_text(yaml.safe_dump(data, sort_keys=False))
    world.kube.add_virtual_service("trading-prod", "trading-bot-swarm", "trading-bot-swarm")
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/istio.db", config=world.config)
    try:
        request_and_approve(bot, fake_slack)
        wait_until(lambda: "Succeeded" in run_message_text(fake_slack), 120, "the istio canary")
        weights = []
        for r in world.kube.requests:
            if r.method == "PATCH" and "/virtualservices/" in r.path and isinstance(r.body, dict):
                routes = r.body["spec"]["http"][0]["route"]
                weights.append(next(d["weight"] for d in routes if d["destination"]["subset"] == "canary"))
        assert weights == [25, 50, 100, 0]
        assert world.image() == f"{IMAGE}:v2.3" and not world.has_canary()
    finally:
        bot.stop()


def test_blue_green_switches_through_the_service_and_promotes(world: World, fake_slack: FakeSlack,
                                                             tmp_path: Path) -> None:
    """Blue-green against the API stand-in: green gets traffic only via the Service switch, then blue is updated."""
    bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/bg.db", config=world.config)
    try:
        bot.command("/deploy", "v2.3 --env production --blue-green", ALICE, name="req", channel=DEPLOY_CHANNEL)
        click(bot.url, fake_slack, "Approve", BOB, "bob")
        click(bot.url, fake_slack, "Approve", CAROL, "carol")
        wait_until(lambda: "Succeeded" in run_message_text(fake_slack), 90, "the blue-green run")
        selectors = [r.body for r in world.kube.requests
                     if r.method == "PATCH" and "/services/" in r.path and r.body]
        assert len(selectors) == 2  # to green, then home to the updated blue
        assert "trading-bot-swarm-green" in str(selectors[0]) and "green" not in str(selectors[1])
        assert world.image() == f"{IMAGE}:v2.3"
        assert world.kube.service("trading-prod", "trading-bot-swarm")["spec"]["selector"] == {
            "app": "trading-bot-swarm"}
    finally:
        bot.stop()


# --- a bot process killed mid-canary ------------------------------------------------------------------------
def serve(world: World, fake: FakeSlack, db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env.update(CHATOPS_CONFIG=str(world.config), CHATOPS_DATABASE_URL=db_url, CHATOPS_SLACK_SIGNING_SECRET=SECRET,
               CHATOPS_SLACK_BOT_TOKEN=DEFAULT_TOKEN, CHATOPS_SLACK_API_URL=fake.base_url,
               CHATOPS_SLACK_RESPONSE_URL_PREFIXES=f'["{fake.response_url("")}"]', CHATOPS_DEPLOY_LEASE_SECONDS="3")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(ready, 30, "chatops serve to be ready")
    return proc


def test_killed_mid_canary_resumes_without_repeating_a_step(world: World, fake_slack: FakeSlack,
                                                           tmp_path: Path) -> None:
    """SIGKILL during the canary; the next process resumes the same step, finishes, and no step started twice."""
    db_url = f"sqlite:///{tmp_path}/restart.db"
    port = free_port()
    proc = serve(world, fake_slack, db_url, port)
    url = f"http://127.0.0.1:{port}"
    try:
        body = slash_command_body("/deploy", "v2.3 --env production --canary", ALICE, "alice", DEPLOY_CHANNEL,
                                  fake_slack.response_url("req"))
        httpx.post(f"{url}/slack/events", content=body, headers=signed_headers(body, SECRET))
        click(url, fake_slack, "Approve", BOB, "bob")
        click(url, fake_slack, "Approve", CAROL, "carol")
        wait_until(lambda: any(r.action == "deploy.analysis" for r in records(db_url)), 60, "a first analysis")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = serve(world, fake_slack, db_url, free_port())
        wait_until(lambda: any(r.action == "deploy.succeeded" for r in records(db_url)), 120, "the resumed run")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = records(db_url)
    starts = [r.args for r in rows if r.action == "deploy.step.start"]
    assert len(starts) == len(set(starts)) == 3  # precheck, roll out, health: each started once
    assert any(r.action == "deploy.step.resume" for r in rows)
    weights = [r.args for r in rows if r.action == "kubernetes.canary_weight"]
    assert len(weights) == len(set(weights)) == 3
    assert world.image() == f"{IMAGE}:v2.3" and not world.has_canary()


# --- two processes, one PostgreSQL, two approvers clicking at once ---------------------------------------------
@pytest.mark.postgres
def test_concurrent_approvals_on_two_processes_start_one_run(world: World, fake_slack: FakeSlack,
                                                            pg_database_url: str) -> None:
    """bob and carol click Approve at the same moment on two replicas: both count, exactly one run starts."""
    first = serve(world, fake_slack, pg_database_url, free_port())
    second_port = free_port()
    second = serve(world, fake_slack, pg_database_url, second_port)
    first_url = f"http://127.0.0.1:{first.args[-1]}"
    try:
        body = slash_command_body("/deploy", "v2.3 --env production --canary", ALICE, "alice", DEPLOY_CHANNEL,
                                  fake_slack.response_url("req"))
        httpx.post(f"{first_url}/slack/events", content=body, headers=signed_headers(body, SECRET))
        button = plan_button(fake_slack, "Approve")
        bodies = [(first_url, block_actions_body(button["action_id"], button["value"], BOB, DEPLOY_CHANNEL,
                                                 button["ts"], fake_slack.response_url("b"))),
                  (f"http://127.0.0.1:{second_port}", block_actions_body(
                      button["action_id"], button["value"], CAROL, DEPLOY_CHANNEL, button["ts"],
                      fake_slack.response_url("c")))]
        threads = [threading.Thread(target=httpx.post, args=(f"{u}/slack/events",),
                                    kwargs={"content": b, "headers": signed_headers(b, SECRET)}) for u, b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: any(r.action == "deploy.succeeded" for r in records(pg_database_url)), 120, "the run")
    finally:
        for proc in (first, second):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    actions = [r.action for r in records(pg_database_url)]
    assert actions.count("deploy.approve") == 2 and actions.count("deploy.approved") == 1
    assert actions.count("deploy.start") == 1
