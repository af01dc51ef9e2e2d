"""/stop-trading on the simulated backends: operators only, no approval, acts at once, verifies the halt,
records it so no deploy resumes trading behind the operator's back, tells the incident channel."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core import halts
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    BOB,
    ERIN,
    STAGING_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    write_config,
)


def stop(d: Deployer, text: str = "--env staging --reason 'bad fills'", user: str = ERIN) -> str:
    return d.command("/stop-trading", text, user)


def run_of(reply: str) -> str:
    import re

    found = re.search(r"run `(r-[0-9a-f]{8})`", reply)
    assert found, reply
    return found.group(1)


def test_operator_stops_trading_at_once_and_it_is_verified(deployer: Deployer) -> None:
    trading = deployer.sim("staging").trading
    assert trading.status().trading
    reply = stop(deployer)
    assert "Stopping trading in staging (graceful)" in reply
    run_id = run_of(reply)
    run = deployer.wait_state(run_id)
    assert run.state == "succeeded", run.outcome
    assert not trading.status().trading and trading.status().active_bots == 0
    assert (run.outcome or "").startswith("trading HALTED: the trading API accepted the stop; halt verified")
    assert [s.status for s in deployer.steps(run_id)] == ["done", "done", "skipped"]  # no kill switch needed
    assert any("stopping trading in staging" in t for t in deployer.channel_texts(STAGING_INCIDENT))
    assert any("trading HALTED" in t for t in deployer.channel_texts(STAGING_INCIDENT))
    actions = [r["action"] for r in deployer.audit("", run_id)]
    assert actions[0] == "trading.stop.requested" and "stop_trading.succeeded" in actions
    with deployer.container.db.read() as session:
        halt = halts.current(session, "staging")
    assert halt is not None and halt.run_id == run_id and halt.mode == "graceful"


def test_deploy_after_a_stop_leaves_trading_halted_and_says_so(deployer: Deployer) -> None:
    run_id = run_of(stop(deployer))
    deployer.wait_state(run_id)
    _, deploy_id = deployer.deploy("v2.3 --env staging")
    deployer.tick(deploy_id)
    run = deployer.wait_state(deploy_id)
    assert run.state == "succeeded"
    resume = deployer.step(deploy_id, "trading_resume")
    assert resume.status == "skipped" and "trading stays halted" in (resume.detail or "")
    assert "still changed: trading: stopped (was on)" in (run.outcome or "")
    assert not deployer.sim("staging").trading.status().trading


def test_only_operators_may_stop_trading_and_the_refusal_is_audited(deployer: Deployer) -> None:
    reply = deployer.command("/stop-trading", "--env staging", "U0ALICE01")  # alice deploys, does not operate
    assert "may not stop trading in staging" in reply
    assert deployer.sim("staging").trading.status().trading
    refusals = [r for r in deployer.audit("") if r["action"].startswith("command.stop-trading")
                or r["outcome"] == "denied"]
    assert refusals


def test_bad_arguments_get_a_usage_error(deployer: Deployer) -> None:
    reply = deployer.command("/stop-trading", "--env nowhere", ERIN)
    assert "nowhere" in reply and "/stop-trading" in reply
    reply = deployer.command("/stop-trading", "--env staging --emergncy", ERIN)
    assert "--emergncy" in reply


# --- /resume-trading -------------------------------------------------------------------------------------
def quick_resume(data: dict[str, Any]) -> None:
    staging = data["environments"]["staging"]
    staging.update(resume_window_seconds=2, resume_fractions=[0.1, 0.5, 1.0], canary={"interval_seconds": 5})


@pytest.fixture
def resumer(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Deployer]:
    d = start_deploy_bot(fake_slack, f"sqlite:///{tmp_path}/r.db", write_config(tmp_path, quick_resume))
    yield d
    d.stop()


def test_resume_after_a_stop_turns_trading_on_and_lifts_the_halt(resumer: Deployer) -> None:
    resumer.wait_state(run_of(stop(resumer)))
    reply = resumer.command("/resume-trading", "--env staging --reason 'fixed'", ERIN)
    run = resumer.wait_state(run_of(reply))
    assert run.state == "succeeded", run.outcome
    assert resumer.sim("staging").trading.status().trading
    assert ("start", 1.0) in resumer.sim("staging").trading.history
    with resumer.container.db.read() as session:
        assert halts.current(session, "staging") is None


def test_gradual_resume_goes_stage_by_stage_watching_the_kpis(resumer: Deployer) -> None:
    resumer.wait_state(run_of(stop(resumer)))
    run = resumer.wait_state(run_of(resumer.command("/resume-trading", "--env staging --gradual", ERIN)), timeout=60)
    assert run.state == "succeeded", run.outcome
    starts = [v for k, v in resumer.sim("staging").trading.history if k == "start"]
    assert starts == [0.1, 0.5, 1.0]
    verdicts = resumer.audit("trading.resume.analysis", run.id)
    assert len(verdicts) >= 2 and all(r["outcome"] == "pass" for r in verdicts)


def test_bad_kpis_during_a_gradual_resume_halt_trading_again(resumer: Deployer) -> None:
    resumer.wait_state(run_of(stop(resumer)))
    resumer.sim("staging").metrics.set("error_rate", 0.2)
    run = resumer.wait_state(run_of(resumer.command("/resume-trading", "--env staging --gradual", ERIN)), timeout=60)
    assert run.state == "rolled_back", run.outcome
    assert "KPIs at 10% of bots" in (run.rollback_reason or "") and "HALTED again" in (run.outcome or "")
    assert not resumer.sim("staging").trading.status().trading  # halted again, as the run says
    assert [v for k, v in resumer.sim("staging").trading.history if k == "start"] == [0.1]
    with resumer.container.db.read() as session:
        assert halts.current(session, "staging") is not None


def test_resume_in_production_needs_an_approval(resumer: Deployer) -> None:
    resumer.wait_state(run_of(resumer.command("/stop-trading", "--env production", ERIN)))
    reply = resumer.command("/resume-trading", "--env production", ERIN)
    assert "needs 1 approval" in reply
    run_id = run_of(reply)
    assert resumer.run(run_id).state == "pending_approval"
    assert not resumer.sim("production").trading.status().trading
    assert "may not approve" in resumer.click(run_id, "Approve", ERIN)  # erin operates, does not approve
    resumer.click(run_id, "Approve", BOB)
    run = resumer.wait_state(run_id)
    assert run.state == "succeeded", run.outcome
    assert resumer.sim("production").trading.status().trading


# --- the kill switch ---------------------------------------------------------------------------------------
def quick_verify(data: dict[str, Any]) -> None:
    quick_resume(data)
    data["environments"]["staging"]["stop_verify_seconds"] = 2


@pytest.fixture
def killer(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Deployer]:
    d = start_deploy_bot(fake_slack, f"sqlite:///{tmp_path}/k.db", write_config(tmp_path, quick_verify))
    yield d
    d.stop()


@pytest.mark.parametrize("mode", ["lie", "fail", "hang"])
def test_kill_switch_scales_trading_to_zero_when_the_api_cannot_halt(killer: Deployer, mode: str) -> None:
    """The trading API lies (says stopped, keeps trading), fails or hangs: verification fails, the kill switch
    scales the trading Deployment to 0 and says so; /resume-trading restores the replicas."""
    world = killer.sim("staging")
    before = world.cluster.replicas("trading-staging", "trading-bot-swarm")
    assert before > 0
    world.trading.set_mode(mode)
    try:
        run = killer.wait_state(run_of(stop(killer)), timeout=60)
    finally:
        world.trading.set_mode("ok")
    assert run.state == "succeeded", run.outcome
    assert (run.outcome or "").startswith("trading HALTED by the kill switch")
    assert "NOT verified" in (run.outcome or "") and f"trading-bot-swarm scaled {before} → 0" in (run.outcome or "")
    assert world.cluster.replicas("trading-staging", "trading-bot-swarm") == 0
    assert "kubernetes.kill_switch" in [r["action"] for r in killer.audit("", run.id)]
    resume = killer.wait_state(run_of(killer.command("/resume-trading", "--env staging", ERIN)), timeout=60)
    assert resume.state == "succeeded", resume.outcome
    assert world.cluster.replicas("trading-staging", "trading-bot-swarm") == before
    assert f"restored trading-bot-swarm to {before} replicas" in (resume.outcome or "")
