"""The one analysis gate behind canary steps, the monitoring window and the blue-green watch: an external
signal fails a running analysis at once, and a watch window counts Prometheus errors against the
consecutive-error limit instead of rolling back on the first one."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.runs.context import StepContext
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    NEW_IMAGE,
    OLD_IMAGE,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)


def approved_canary(d: Deployer) -> str:
    _, run_id = d.deploy("v2.3 --env production --canary")
    d.approve_all(run_id)
    d.tick(run_id)
    return run_id


def test_an_external_signal_fails_the_running_canary_at_once(deployer: Deployer) -> None:
    """A signal on the deploy workflow (e.g. an alert correlated with the deploy) fails the canary analysis
    at its next interval, before any query: one `fail` verdict naming the cause, then the rollback."""
    firing = threading.Event()
    seen: list[str] = []

    def alert_signal(ctx: StepContext) -> str | None:
        seen.append(ctx.run_id)
        return "alert HighErrorRate firing in production" if firing.is_set() else None

    workflow: Any = deployer.container.core.runs.registry.get("deploy")
    workflow.analysis_signals.append(alert_signal)
    run_id = approved_canary(deployer)
    wait_until(lambda: (deployer.step(run_id, "rollout").data or {}).get("weight") == 50, 20, "the canary at 50 %")
    firing.set()
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and deployer.live_image() == OLD_IMAGE
    assert "alert HighErrorRate firing in production → rolled back (canary analysis at 50%)" in (
        run.rollback_reason or ""), run.rollback_reason
    verdicts = deployer.audit("deploy.analysis", run_id)
    assert verdicts[-1]["outcome"] == "fail" and verdicts[-1]["args"]["cause"].startswith("alert HighErrorRate")
    assert set(seen) == {run_id}


def with_monitoring_window(data: dict[str, Any]) -> None:
    data["environments"]["production"]["monitor_seconds"] = 10  # two 5 s intervals after the canary


@pytest.fixture
def monitored(fake_slack: FakeSlack, sqlite_url: str, tmp_path: Path) -> Iterator[Deployer]:
    d = start_deploy_bot(fake_slack, sqlite_url, write_config(tmp_path, with_monitoring_window))
    yield d
    d.stop()


def test_the_monitoring_window_rides_out_one_interval_without_prometheus(monitored: Deployer) -> None:
    """Prometheus unreachable for one interval of the monitoring window is an error, not a failure: the
    window goes on, judges the next interval and the deploy succeeds; the result line says one interval
    had no metrics."""
    d = monitored
    metrics = d.sim().metrics
    run_id = approved_canary(d)
    d.wait_step(run_id, "monitor", "running", timeout=40)
    metrics.set("down", True)

    def monitor_verdicts() -> list[str]:
        return [r["outcome"] for r in d.audit("deploy.analysis", run_id) if r["args"].get("window") == "monitor"]

    try:
        wait_until(lambda: "error" in monitor_verdicts(), 20, "an interval without Prometheus")
    finally:
        metrics.set("down", False)
    run = d.wait_state(run_id, timeout=40)
    assert run.state == "succeeded", run.rollback_reason
    assert d.live_image() == NEW_IMAGE
    assert monitor_verdicts() == ["error", "pass"]
    assert "1 interval(s) without metrics" in (d.step(run_id, "monitor").detail or "")
