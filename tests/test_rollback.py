"""/rollback: runbook 8.2 as a durable run back to the previous version (or --to), with approval where
deploys need it, the duration against the 15-minute target and the post-rollback checklist; and the way
a person continues a rollback that could not finish."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from bot.core import locks
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    NEW_IMAGE,
    OLD_IMAGE,
    STAGING_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    wait_until,
)


def deployed(d: Deployer) -> str:
    _, run_id = d.deploy("v2.3 --env staging")
    d.tick(run_id)
    assert d.wait_state(run_id).state == "succeeded"
    assert d.live_image("staging") == NEW_IMAGE
    return run_id


def test_rollback_goes_back_to_the_previous_version_by_the_runbook(deployer: Deployer) -> None:
    deployed(deployer)
    reply = deployer.command("/rollback", "--env staging --reason 'bad fills'", ALICE)
    assert "Rolling staging back to v2.2.0" in reply, reply
    run_id = reply.split("run `")[1].split("`")[0]
    run = deployer.wait_state(run_id)
    assert run.state == "succeeded", run.outcome
    assert run.kind == "rollback" and deployer.live_image("staging") == OLD_IMAGE
    assert "within the 15-minute target" in (run.outcome or "")
    kinds = [s.kind for s in deployer.steps(run_id)]
    assert kinds == ["precheck", "trading_stop", "maintenance_on", "rollout", "health", "maintenance_off",
                     "trading_resume"]
    trading = deployer.sim("staging").trading.status()
    assert trading.trading and not trading.maintenance
    text = deployer.message_text(run_id)
    assert "checklist to tick is in this message's thread" in text and "15-minute target" in text
    assert any("Rollback of staging to v2.2.0" in t for t in deployer.channel_texts(STAGING_INCIDENT))


def test_rollback_to_a_named_version_and_bad_versions(deployer: Deployer) -> None:
    deployed(deployer)
    assert "not allowed in staging" in deployer.command("/rollback", "--env staging --to v1.0.0-beta", ALICE) or \
        "v1.0.0-beta" in deployer.command("/rollback", "--env staging --to v1.0.0-beta", ALICE)
    reply = deployer.command("/rollback", "--env staging --to v2.1.0", ALICE)
    run_id = reply.split("run `")[1].split("`")[0]
    assert deployer.wait_state(run_id).state == "succeeded"
    assert deployer.live_image("staging").endswith(":v2.1.0")


def test_rollback_without_a_known_previous_version_says_what_to_do(deployer: Deployer) -> None:
    reply = deployer.command("/rollback", "--env staging", ALICE)
    assert "no earlier version of staging is known" in reply and "--to VERSION" in reply


def test_rollback_needs_the_deployer_role(deployer: Deployer) -> None:
    reply = deployer.command("/rollback", "--env staging", "U0ERIN005")
    assert "may not roll back staging" in reply


def test_rollback_continues_a_run_whose_rollback_could_not_finish(deployer: Deployer) -> None:
    _, run_id = deployer.deploy("v2.3 --env staging")
    cluster = deployer.sim("staging").cluster
    cluster.fail_next_rollout()
    deployer.tick(run_id)
    deployer.wait_step(run_id, "rollout")
    wait_until(lambda: cluster.describe("trading-staging", "trading-bot-swarm")["image"] == NEW_IMAGE, 10)
    cluster.fail_next_rollout()  # the restore's rollout fails too
    assert deployer.wait_state(run_id).state == "failed"
    cluster.restart_rollout("trading-staging", "trading-bot-swarm")
    reply = deployer.command("/rollback", "--env staging", ALICE)
    assert f"Continuing the rollback of run `{run_id}`" in reply
    run = deployer.wait_state(run_id, "rolled_back")
    assert deployer.live_image("staging") == OLD_IMAGE and "still changed" not in (run.outcome or "")
    with deployer.container.db.read() as session:
        assert locks.current(session, "staging") is None


def test_a_rollback_that_fails_after_its_image_change_is_never_reversed(deployer: Deployer) -> None:
    """A rollback whose rollout fails after the image went back ends failed where it is — never redeploying the
    release it rolls back from — keeps the lock, trading stopped and maintenance on; /rollback then retries it
    forward from the failed step."""
    deployed(deployer)
    cluster = deployer.sim("staging").cluster
    cluster.fail_next_rollout()
    reply = deployer.command("/rollback", "--env staging --reason 'bad fills'", ALICE)
    run_id = reply.split("run `")[1].split("`")[0]
    run = deployer.wait_state(run_id)
    assert run.state == "failed", run.outcome
    assert "undoing would redeploy the release being rolled back" in (run.outcome or "")
    assert deployer.live_image("staging") == OLD_IMAGE  # not back on the bad release
    assert not [s for s in deployer.steps(run_id) if s.phase == "rollback"]
    trading = deployer.sim("staging").trading.status()
    assert not trading.trading and trading.maintenance  # the safe state, for a person to look at
    with deployer.container.db.read() as session:
        holder = locks.current(session, "staging")
    assert holder is not None and holder.run_id == run_id
    cluster.restart_rollout("trading-staging", "trading-bot-swarm")
    assert f"run `{run_id}`" in deployer.command("/rollback", "--env staging", ALICE)
    run = deployer.wait_state(run_id, "succeeded")
    assert deployer.live_image("staging") == OLD_IMAGE
    trading = deployer.sim("staging").trading.status()
    assert trading.trading and not trading.maintenance
    assert deployer.audit("rollback.continue", run_id)  # who continued it is on record
    with deployer.container.db.read() as session:
        assert locks.current(session, "staging") is None
