"""/stop-trading on the simulated backends: operators only, no approval, acts at once, verifies the halt,
records it so no deploy resumes trading behind the operator's back, tells the incident channel."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from bot.core import halts
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ERIN,
    STAGING_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
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
