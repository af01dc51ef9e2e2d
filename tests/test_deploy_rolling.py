"""Rolling and blue-green deploys to staging (no approvals): trading stop/resume, jobs, failures, rollback."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core import locks
from bot.core.model import Actor
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    JOBS,
    NAMES,
    NEW_IMAGE,
    OLD_IMAGE,
    STAGING_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)

TRADING_STEPS = [("maintenance", True), ("maintenance", False),
                 ("start", 0.25), ("start", 0.5), ("start", 1.0)]


def started(d: Deployer, text: str = "v2.3 --env staging") -> str:
    """/deploy to staging (no approvals), alice ticks the checklist; the run id."""
    _, run_id = d.deploy(text)
    d.tick(run_id)
    return run_id


def trading_calls(d: Deployer) -> list[tuple[str, Any]]:
    """The trading API calls, with the stop reason left out."""
    return [(kind, None if kind == "stop" else arg) for kind, arg in d.sim("staging").trading.history]


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A rolling deploy of v2.3 to staging that ran to the end, and its bot."""
    tmp = tmp_path_factory.mktemp("rolling")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(tmp))
        run_id = started(d)
        d.wait_state(run_id)
        yield d, run_id
        d.stop()


def test_rolling_deploy_succeeds_with_the_new_image(rolled: tuple[Deployer, str]) -> None:
    """A rolling deploy to staging ends succeeded with v2.3 on the Deployment and the lock released."""
    d, run_id = rolled
    assert d.run(run_id).state == "succeeded"
    assert d.live_image("staging") == NEW_IMAGE
    with d.container.db.read() as session:
        assert locks.current(session, "staging") is None


def test_rolling_deploy_stops_trading_and_resumes_it_gradually(rolled: tuple[Deployer, str]) -> None:
    """Trading is stopped, maintenance switched on and off, and trading resumed 25 % → 50 % → 100 %."""
    d, _ = rolled
    assert trading_calls(d) == [("stop", None), *TRADING_STEPS]
    status = d.sim("staging").trading.status()
    assert status.trading and status.active_bots == status.total_bots and not status.maintenance


def test_rolling_deploy_audits_trading_and_kubernetes_changes(rolled: tuple[Deployer, str]) -> None:
    """The trading stop, maintenance switches, each resume fraction and the image change are audited."""
    d, run_id = rolled
    actions = [(r["action"], r["outcome"]) for r in d.audit(run_id=run_id)]
    for expected in [("trading.stop", "ok"), ("trading.maintenance", "on"), ("kubernetes.set_image", "ok"),
                     ("trading.maintenance", "off"), ("deploy.succeeded", "succeeded")]:
        assert expected in actions
    assert [r["args"]["fraction"] for r in d.audit("trading.start", run_id)] == [0.25, 0.5, 1.0]


def test_summary_says_no_approval_was_needed(rolled: tuple[Deployer, str]) -> None:
    """Staging needs no approvals and the summary says so."""
    d, run_id = rolled
    text = d.message_text(run_id)
    assert "Summary: requested by <@U0ALICE01>, no approval needed, took" in text and "approved by" not in text


# --- blue-green ------------------------------------------------------------------------------------------
def test_blue_green_switches_to_green_then_promotes_in_place(deployer: Deployer) -> None:
    """--blue-green serves v2.3 from a green copy, then updates the live Deployment and removes green."""
    run_id = started(deployer, "v2.3 --env staging --blue-green")
    assert deployer.wait_state(run_id).state == "succeeded"
    cluster = deployer.sim("staging").cluster
    data = deployer.step(run_id, "rollout").data
    assert cluster.service_selector("trading-staging", "trading-bot-swarm") == data["original_selector"]
    assert cluster.describe("trading-staging", "trading-bot-swarm")["image"] == NEW_IMAGE
    assert "trading-bot-swarm-green" not in cluster.deployments("trading-staging")
    assert [r["action"] for r in deployer.audit("kubernetes.", run_id)] == [
        "kubernetes.blue_green.deploy", "kubernetes.service_switch", "kubernetes.blue_green.promote"]


def test_blue_green_new_colour_gets_no_traffic_before_the_switch(deployer: Deployer) -> None:
    """The Service's selector before the switch does not match the new colour's pods."""
    run_id = started(deployer, "v2.3 --env staging --blue-green")
    deployer.wait_state(run_id)
    data = deployer.step(run_id, "rollout").data
    assert not data["original_selector"].items() <= data["copy_labels"].items()


def colour_probe(data: dict[str, Any]) -> None:
    data["environments"]["staging"]["probes"] = [{"name": "colour health",
                                                  "url": "http://trading-bot-swarm-{colour}.trading-staging/health"}]


def test_blue_green_does_not_switch_to_an_unhealthy_colour(
        staging_bot: Callable[[Callable[[dict[str, Any]], None]], Deployer]) -> None:
    """A probe of the new colour failing before the switch keeps traffic where it is and rolls back."""
    d = staging_bot(colour_probe)
    d.sim("staging").probe.set_unhealthy("trading-bot-swarm-green")
    run = d.wait_state(started(d, "v2.3 --env staging --blue-green"))
    assert run.state == "rolled_back" and "unhealthy before the switch" in (run.rollback_reason or "")
    assert d.audit("kubernetes.service_switch", run.id) == []


def test_after_blue_green_the_version_serving_traffic_counts_as_running(deployer: Deployer) -> None:
    """After a blue-green deploy of v2.3, v2.3 counts as running: deploying it again is refused."""
    run_id = started(deployer, "v2.3 --env staging --blue-green")
    deployer.wait_state(run_id)
    reply = deployer.command("/deploy", "v2.3 --env staging --blue-green")
    assert "already runs" in reply


def watch_after_switch(data: dict[str, Any]) -> None:
    data["environments"]["staging"]["blue_green"] = {"monitor_seconds": 1}


@pytest.fixture(scope="module")
def bad_blue_green(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A blue-green deploy to staging whose error rate is 20 % once traffic is on green, finished, and its bot."""
    tmp = tmp_path_factory.mktemp("bad-blue-green")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(tmp, watch_after_switch))
        d.sim("staging").metrics.set("error_rate", 0.2)
        run_id = started(d, "v2.3 --env staging --blue-green")
        d.wait_state(run_id)
        yield d, run_id
        d.stop()


def test_blue_green_with_bad_metrics_after_the_switch_switches_back(bad_blue_green: tuple[Deployer, str]) -> None:
    """A failing check while watching the new colour points the Service back at the old one: rolled back."""
    d, run_id = bad_blue_green
    run = d.run(run_id)
    assert run.state == "rolled_back" and "after the switch to green" in (run.rollback_reason or "")
    selector = d.sim("staging").cluster.service_selector("trading-staging", "trading-bot-swarm")
    assert selector.get("colour") != "green"
    assert [r["outcome"] for r in d.audit("kubernetes.service_switch", run_id)] == ["ok", "rollback"]
    assert d.sim("staging").trading.status().trading


def test_after_a_blue_green_rollback_only_the_old_version_serves(bad_blue_green: tuple[Deployer, str]) -> None:
    """Every Deployment the Service selects after the rollback runs the old image (green pods no longer match)."""
    d, _ = bad_blue_green
    cluster = d.sim("staging").cluster
    selector = cluster.service_selector("trading-staging", "trading-bot-swarm")
    serving = {name: cluster.describe("trading-staging", name)["image"]
               for name in cluster.deployments("trading-staging")
               if selector.items() <= cluster.describe("trading-staging", name)["labels"].items()}
    assert serving == {"trading-bot-swarm": OLD_IMAGE}


def test_blue_green_verdicts_after_the_switch_are_audited(bad_blue_green: tuple[Deployer, str]) -> None:
    """Each analysis verdict while watching the new colour is audited, like the canary's."""
    d, run_id = bad_blue_green
    assert [r["outcome"] for r in d.audit("deploy.analysis", run_id)] == ["fail"]


def watch_after_rollout(data: dict[str, Any]) -> None:
    data["environments"]["staging"]["procedure"].append({"kind": "monitor", "name": "Monitoring window",
                                                          "seconds": 1})


def test_failing_monitoring_window_rolls_back_a_rolling_deploy(
        staging_bot: Callable[[Callable[[dict[str, Any]], None]], Deployer]) -> None:
    """A check failing in the monitoring window after the rollout restores the old image."""
    d = staging_bot(watch_after_rollout)
    d.sim("staging").metrics.set("p95_latency_ms", 2500)
    run = d.wait_state(started(d))
    assert run.state == "rolled_back" and "monitoring window" in (run.rollback_reason or "")
    assert "p95_latency_ms" in (run.rollback_reason or "")
    assert d.live_image("staging") == OLD_IMAGE
    assert [r["outcome"] for r in d.audit("deploy.analysis", run.id)] == ["fail"]


# --- failures --------------------------------------------------------------------------------------------
def with_jobs(data: dict[str, Any]) -> None:
    """Staging gets backup and migrate jobs, run after maintenance mode is on."""
    staging = data["environments"]["staging"]
    staging["jobs"] = JOBS
    at = next(i for i, s in enumerate(staging["procedure"]) if s["kind"] == "rollout")
    staging["procedure"][at:at] = [{"kind": "job", "name": f"Database {j['name']}", "job": j["name"]}
                                   for j in JOBS]


@pytest.fixture
def staging_bot(fake_slack: FakeSlack, sqlite_url: str,
                tmp_path: Path) -> Iterator[Callable[[Callable[[dict[str, Any]], None]], Deployer]]:
    """Start the bot with the fast config after a change to it (stopped at the end)."""
    bots: list[Deployer] = []

    def start(change: Callable[[dict[str, Any]], None]) -> Deployer:
        bots.append(start_deploy_bot(fake_slack, sqlite_url, write_config(tmp_path, change)))
        return bots[-1]

    yield start
    for d in bots:
        d.stop()


def test_failing_migration_rolls_back_with_the_job_log_in_the_thread(
        staging_bot: Callable[[Callable[[dict[str, Any]], None]], Deployer]) -> None:
    """A failed migrate Job rolls the run back, posts the Job's log tail in the thread and resumes trading."""
    d = staging_bot(with_jobs)
    _, run_id = d.deploy("v2.3 --env staging")
    d.sim("staging").cluster.fail_jobs(f"{run_id}-migrate",
                                       "ERROR: relation \"fills\" is locked\nmigration aborted")
    d.tick(run_id)
    run = d.wait_state(run_id)
    assert run.state == "rolled_back" and "Database migrate" in (run.rollback_reason or "")
    assert any("Job `" in t and "migration aborted" in t for t in d.thread_texts(run_id))
    statuses = {s.name: s.status for s in d.steps(run_id)}
    assert statuses["Database backup"] == "done" and statuses["Database migrate"] == "failed"
    assert statuses["Roll out"] == "skipped"
    assert d.live_image("staging") == OLD_IMAGE
    assert trading_calls(d)[-4:] == [("maintenance", False), ("start", 0.25), ("start", 0.5), ("start", 1.0)]


def test_failing_rollout_rolls_back(deployer: Deployer) -> None:
    """A rollout that hits its progress deadline rolls back to the old image and resumes trading."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.sim("staging").cluster.fail_next_rollout()
    deployer.tick(run_id)
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and "progress deadline" in (run.rollback_reason or "")
    assert deployer.live_image("staging") == OLD_IMAGE
    rollback = [(s.kind, s.status) for s in deployer.steps(run_id, "rollback")]
    assert rollback == [("restore", "done"), ("rb_health", "done"), ("rb_maintenance_off", "done"),
                        ("rb_trading_resume", "done")]
    assert deployer.sim("staging").trading.status().trading
    assert any("rolled back" in t and run_id in t for t in deployer.channel_texts(STAGING_INCIDENT))


def test_failing_rollback_ends_failed_and_calls_for_a_person(deployer: Deployer) -> None:
    """If the rollback fails too the run ends failed, says trading is stopped, alerts the incident channel."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    cluster = deployer.sim("staging").cluster
    cluster.fail_next_rollout()
    deployer.tick(run_id)
    deployer.wait_step(run_id, "rollout")
    wait_until(lambda: cluster.describe("trading-staging", "trading-bot-swarm")["image"] == NEW_IMAGE, 10)
    cluster.fail_next_rollout()  # the restore's rollout fails too
    run = deployer.wait_state(run_id)
    assert run.state == "failed"
    trading = deployer.sim("staging").trading.status()
    assert not trading.trading and trading.maintenance  # what the stand-in shows ...
    outcome = run.outcome or ""  # ... is what the run says it left behind
    assert "Restore" in outcome and "trading: stopped (was on)" in outcome
    assert "maintenance mode: on (was off)" in outcome
    assert "FAILED" in deployer.message_text(run_id)
    alerts = [t for t in deployer.channel_texts(STAGING_INCIDENT) if "FAILED and needs a person" in t]
    assert alerts and "trading: halted" in alerts[0] and "/rollback --env staging" in alerts[0]
    with deployer.container.db.read() as session:  # the environment stays locked by the run for a person
        holder = locks.current(session, "staging")
    assert holder is not None and holder.run_id == run_id
    # a person fixes the stuck rollout and continues the rollback: it finishes, the environment is free
    cluster.restart_rollout("trading-staging", "trading-bot-swarm")
    with deployer.container.db.transaction() as session:
        live = deployer.container.core.runs.load(session, run_id)
        deployer.container.executor.continue_rollback(session, live, Actor("U0ALICE01", "alice"))
    run = deployer.wait_state(run_id, "rolled_back")
    trading = deployer.sim("staging").trading.status()
    assert trading.trading and not trading.maintenance
    assert "still changed" not in (run.outcome or "")
    assert deployer.live_image("staging") == OLD_IMAGE
    with deployer.container.db.read() as session:
        assert locks.current(session, "staging") is None


def short_checklist(data: dict[str, Any]) -> None:
    data["environments"]["staging"]["procedure"][0]["timeout_seconds"] = 1


def test_step_past_its_timeout_fails_and_rolls_back(
        staging_bot: Callable[[Callable[[dict[str, Any]], None]], Deployer]) -> None:
    """A checklist nobody ticks within its timeout fails the run into a rollback that changes nothing."""
    d = staging_bot(short_checklist)
    _, run_id = d.deploy("v2.3 --env staging")
    run = d.wait_state(run_id, timeout=15)
    assert run.state == "rolled_back" and "timed out" in (run.rollback_reason or "")
    assert d.steps(run_id, "rollback") == [] and d.sim("staging").trading.history == []
    assert d.live_image("staging") == OLD_IMAGE
