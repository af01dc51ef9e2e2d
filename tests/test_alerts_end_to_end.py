"""End to end with real parts: a real Prometheus evaluates an alerting rule on the canary's metrics and sends
it to a real Alertmanager, which posts it to the bot. The bot fails the running production canary at once
(its own analysis interval is an hour), pages the PagerDuty stand-in, threads the alert in the incident
channel, and the root's Silence button creates a silence the real Alertmanager then reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from bot.persistence.models import Run
from tests.alerting import ALERTS, TOKEN, roots
from tests.bot_server import RunningBot, start_bot
from tests.harness.alertmanager import AlertmanagerServer, require_alertmanager
from tests.harness.exporter import MetricsExporter
from tests.harness.k8s_api import FakeKubernetes
from tests.harness.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.harness.prometheus import PrometheusServer, free_port
from tests.harness.slack_api import FakeSlack
from tests.real_world import (
    ALICE,
    DEPLOY_CHANNEL,
    DEPLOYMENT,
    IMAGE,
    INCIDENT_CHANNEL,
    NAMESPACE,
    wait_until,
    write_config,
)
from tests.test_alert_actions import NAMES, buttons, click

ERIN = "U0ERIN005"  # production's operator in the example config
KEY_VAR = "CHATOPS_TEST_E2E_PD_KEY"
RULES = """
groups:
  - name: trading
    rules:
      - alert: CanaryErrorRate
        expr: >
          sum(rate(http_requests_total{version="canary",status="500"}[5s]))
          / sum(rate(http_requests_total{version="canary"}[5s])) > 0.05
        labels: {severity: critical, env: production}
        annotations: {summary: "canary 5xx above 5%", runbook_url: "https://runbooks.example/canary-5xx"}
"""


class Stack:
    def __init__(self, bot: RunningBot, kube: FakeKubernetes, exporter: MetricsExporter, am: AlertmanagerServer,
                 pagerduty: FakePagerDuty) -> None:
        self.bot, self.kube, self.exporter, self.am, self.pagerduty = bot, kube, exporter, am, pagerduty

    def deploy(self) -> Run:
        self.bot.command("/deploy", "v2.3 --env production --canary", ALICE, name="req", channel=DEPLOY_CHANNEL)
        wait_until(lambda: self.run() is not None, 15, "the run")
        run = self.run()
        assert run is not None
        return run

    def run(self) -> Run | None:
        with self.bot.container.db.read() as session:
            return session.execute(select(Run).where(Run.kind == "deploy")).scalar_one_or_none()

    def has_canary(self) -> bool:
        try:
            self.kube.deployment(NAMESPACE, f"{DEPLOYMENT}-canary")
        except Exception:  # noqa: BLE001 - absent
            return False
        return True


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    require_alertmanager()
    monkeypatch.setenv(KEY_VAR, DEFAULT_ROUTING_KEY)
    bot_port = free_port()
    with FakeSlack(users=dict(NAMES)) as slack, FakeKubernetes(rollout_ticks=4) as kube, \
            MetricsExporter(namespace=NAMESPACE) as exporter, FakePagerDuty() as pagerduty, \
            AlertmanagerServer(f"http://127.0.0.1:{bot_port}/alerts/alertmanager", token=TOKEN) as am, \
            PrometheusServer([exporter.target], rules=RULES, alertmanagers=[f"127.0.0.1:{am.port}"]) as prom:
        kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
        kube.add_service(NAMESPACE, DEPLOYMENT, {"app": DEPLOYMENT})
        config = write_config(tmp_path / "chatops.yml", kube.url, prom.url, steps=[50, 100], interval=3600,
                              approvals=0)
        data = yaml.safe_load(config.read_text())
        data["alerts"] = {"channel": ALERTS}
        prod = data["environments"]["production"]
        prod["alertmanager"] = {"url": am.url}
        prod["pagerduty"] = {"routing_key_env": KEY_VAR, "url": pagerduty.url}
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        bot = start_bot(slack, f"sqlite:///{tmp_path}/e2e.db", config=config, port=bot_port,
                        alertmanager_token=TOKEN)
        try:
            yield Stack(bot, kube, exporter, am, pagerduty)
        finally:
            bot.stop()


def test_a_real_alert_fails_the_canary_pages_and_is_silenced(stack: Stack) -> None:
    """Prometheus rule → Alertmanager → bot: the canary rolls back at once, PagerDuty is triggered, the root is
    in the incident channel, and its Silence button makes a real silence."""
    run = stack.deploy()
    wait_until(stack.has_canary, 60, "the canary to take traffic")
    stack.exporter.set(version="canary", error_rate=0.3)
    wait_until(lambda: (stack.run() or run).state == "rolled_back", 90, "the alert to roll the canary back")
    finished = stack.run()
    assert finished is not None
    assert "alert CanaryErrorRate (critical) fired in production" in (finished.rollback_reason or "")
    assert not stack.has_canary()  # the cluster agrees: no canary left
    stack.exporter.set(version="canary", error_rate=0.002)

    wait_until(lambda: any(e["event_action"] == "trigger" for e in stack.pagerduty.events), 30, "the page")
    page = next(e for e in stack.pagerduty.events if e["event_action"] == "trigger")
    assert page["routing_key"] == DEFAULT_ROUTING_KEY and "CanaryErrorRate" in page["payload"]["summary"]

    stack.bot.settle()
    root = next(r for r in roots(stack.bot.fake, INCIDENT_CHANNEL) if "CanaryErrorRate" in r["text"])
    assert "<!here>" in str(root.get("text")) + str(root.get("blocks"))  # critical: the channel is called
    assert "Silence 1 h" in buttons(root)
    click(stack.bot, root, "Silence 1 h", ERIN)
    wait_until(lambda: any(s["status"]["state"] == "active" for s in stack.am.silences()), 20, "the silence")
    silence = next(s for s in stack.am.silences() if s["status"]["state"] == "active")
    assert {m["name"]: m["value"] for m in silence["matchers"]}["alertname"] == "CanaryErrorRate"
    assert "erin" in silence["createdBy"]
    with httpx.Client(timeout=5) as client:  # Alertmanager itself now reports the alert as silenced
        alerts = client.get(f"{stack.am.url}/api/v2/alerts", params={"silenced": "true"}).json()
    assert any(a["labels"]["alertname"] == "CanaryErrorRate" and a["status"]["state"] == "suppressed"
               for a in alerts)
