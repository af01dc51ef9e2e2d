"""A production-like world for end-to-end deploy tests and the rollback benchmark: the Kubernetes API
stand-in (official client over HTTP), a REAL Prometheus scraping an exporter the test steers, a fake
Slack, and a config whose production environment points at them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.core.analysis import default_checks
from tests.harness.exporter import MetricsExporter
from tests.harness.k8s_api import FakeKubernetes
from tests.harness.prometheus import PrometheusServer
from tests.harness.slack_api import FakeSlack

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "trading-prod"
DEPLOYMENT = "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
ALICE, BOB, CAROL, ROOT = "U0ALICE01", "U0BOB0002", "U0CAROL03", "U0ROOT006"
DEPLOY_CHANNEL, INCIDENT_CHANNEL = "C0PRODDEP1", "C0PRODINC1"


@dataclass
class World:
    kube: FakeKubernetes
    exporter: MetricsExporter
    prometheus: PrometheusServer
    config: Path

    def image(self) -> str:
        return str(self.kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]["image"])

    def has_canary(self) -> bool:
        try:
            self.kube.deployment(NAMESPACE, f"{DEPLOYMENT}-canary")
        except Exception:
            return False
        return True


def write_config(path: Path, kube_url: str, prometheus_url: str, *, steps: list[int], interval: float,
                 window: str = "5s", approvals: int = 2) -> Path:
    data: dict[str, Any] = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    prod = data["environments"]["production"]
    prod.update(
        kubernetes={"host": kube_url},
        prometheus={"url": prometheus_url},
        approvals_required=approvals,
        canary={"router": "replicas", "steps": steps, "interval_seconds": interval, "failure_limit": 1,
                "inconclusive_limit": 3},
        analysis=[{"name": c.name, "query": c.query, "op": c.op, "threshold": c.threshold, "unit": c.unit}
                  for c in default_checks(window)],
        procedure=[{"kind": "precheck"}, {"kind": "rollout", "name": "Roll out"},
                   {"kind": "health", "name": "Health checks"}],
        rollout_timeout_seconds=60,
        blue_green={"monitor_seconds": 5},
    )
    prod.pop("jobs", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def real_world(tmp_path: Path, *, steps: list[int] | None = None, interval: float = 5.0,
               approvals: int = 2) -> Iterator[World]:
    with FakeKubernetes(rollout_ticks=4) as kube, MetricsExporter(namespace=NAMESPACE) as exporter:
        kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
        kube.add_service(NAMESPACE, DEPLOYMENT, {"app": DEPLOYMENT})
        with PrometheusServer([exporter.target]) as prometheus:
            config = write_config(tmp_path / "chatops.yml", kube.url, prometheus.url,
                                  steps=steps or [25, 50, 100], interval=interval, approvals=approvals)
            yield World(kube, exporter, prometheus, config)


def plan_button(fake: FakeSlack, label: str, timeout: float = 15.0) -> dict[str, Any]:
    """The newest button labelled `label` in the deploy channel (posted or updated), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in reversed(fake.messages_in(DEPLOY_CHANNEL)):
            blocks = message.get("blocks") or []
            if isinstance(blocks, str):
                blocks = json.loads(blocks)
            for block in blocks:
                for element in block.get("elements", []) if block.get("type") == "actions" else []:
                    if element.get("text", {}).get("text") == label:
                        return {"value": element["value"], "action_id": element["action_id"],
                                "ts": message.get("ts")}
        time.sleep(0.05)
    raise TimeoutError(f"no {label!r} button in {DEPLOY_CHANNEL}")


def run_message_text(fake: FakeSlack) -> str:
    """Text and blocks of the (first) run message in the deploy channel, as one string."""
    messages = fake.messages_in(DEPLOY_CHANNEL)
    return json.dumps(messages[0]) if messages else ""


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")
