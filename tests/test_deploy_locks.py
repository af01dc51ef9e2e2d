"""One active run per environment: /lock freezes, /unlock rules, break-glass --force, expiry, /status."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from bot.core.deploy import locks
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    DAVE,
    PROD_DEPLOY,
    ROOT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    wait_until,
)


def holder(d: Deployer, env: str = "production") -> locks.LockInfo | None:
    with d.container.db.read() as session:
        return locks.current(session, env)


def test_lock_freezes_the_environment_and_announces_it(deployer: Deployer) -> None:
    """/lock ENV --reason records a freeze by its holder and announces it in the deploy channel."""
    reply = deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "`production` is locked by alice for a freeze" in reply and "quarter-end close" in reply
    info = holder(deployer)
    assert info is not None and info.kind == "freeze" and info.held_by == ALICE
    texts = deployer.channel_texts(PROD_DEPLOY)
    assert any(t.startswith(":lock:") and "quarter-end close" in t for t in texts)


def test_lock_needs_a_reason(deployer: Deployer) -> None:
    """/lock without --reason is refused and freezes nothing."""
    assert "needs --reason" in deployer.command("/lock", "production")
    assert holder(deployer) is None


def test_lock_needs_the_deployer_role(deployer: Deployer) -> None:
    """A viewer cannot freeze an environment."""
    assert "*deployer* role" in deployer.command("/lock", "production --reason x", DAVE)
    assert holder(deployer) is None


def test_deploy_during_a_freeze_is_refused_naming_the_freeze(deployer: Deployer) -> None:
    """/deploy while frozen says who froze it and why, and plans nothing."""
    deployer.command("/lock", "production --reason 'quarter-end close'", ROOT)
    reply = deployer.command("/deploy", "v2.3 --env production --canary")
    assert "locked by root for a freeze" in reply and "quarter-end close" in reply
    assert deployer.audit("deploy.plan") == []


def test_admin_force_deploys_through_a_freeze_loudly(deployer: Deployer) -> None:
    """An admin's /deploy --force breaks the freeze, is announced as break-glass and audited."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    reply, run_id = deployer.deploy("v2.3 --env production --canary --force", ROOT)
    assert "queued" in reply
    info = holder(deployer)
    assert info is not None and info.kind == "run" and info.run_id == run_id
    assert any("BREAK-GLASS" in t and "root forced a deploy of v2.3" in t and "quarter-end close" in t
               for t in deployer.channel_texts(PROD_DEPLOY))
    [record] = deployer.audit("lock.break_glass", run_id)
    assert record["actor_id"] == ROOT and "quarter-end close" in record["args"]["broke_lock"]


def test_force_deploy_needs_admin(deployer: Deployer) -> None:
    """A deployer's --force is refused naming the admin role; the freeze stays."""
    deployer.command("/lock", "production --reason 'quarter-end close'", ROOT)
    reply = deployer.command("/deploy", "v2.3 --env production --force")
    assert "*admin* role" in reply
    info = holder(deployer)
    assert info is not None and info.kind == "freeze"


def test_force_deploy_never_overrides_a_running_deploy(deployer: Deployer) -> None:
    """--force breaks a freeze, not another run's lock: the admin is refused and pointed at /unlock --force."""
    _, first = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.command("/deploy", "v2.4 --env production --force", ROOT)
    assert f"deploy run `{first}`" in reply and "/unlock production --force" in reply
    assert len(deployer.audit("deploy.plan")) == 1


def test_holder_can_lift_their_freeze(deployer: Deployer) -> None:
    """/unlock by whoever froze the environment lifts it and says so in the deploy channel."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "Unlocked `production`" in deployer.command("/unlock", "production")
    assert holder(deployer) is None
    assert any("alice lifted the freeze" in t for t in deployer.channel_texts(PROD_DEPLOY))


def test_someone_elses_freeze_needs_admin_force(deployer: Deployer) -> None:
    """/unlock of another person's freeze is refused, even for an admin without --force."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "admin with --force" in deployer.command("/unlock", "production", ROOT)
    assert holder(deployer) is not None


def test_admin_force_unlock_breaks_a_freeze_loudly(deployer: Deployer) -> None:
    """/unlock --force by an admin lifts another person's freeze, announced as break-glass and audited."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "Unlocked" in deployer.command("/unlock", "production --force", ROOT)
    assert holder(deployer) is None
    assert any("BREAK-GLASS" in t and "root force-released" in t for t in deployer.channel_texts(PROD_DEPLOY))
    assert [r["actor_id"] for r in deployer.audit("lock.break_glass")] == [ROOT]


def test_force_unlock_needs_admin(deployer: Deployer) -> None:
    """A deployer's /unlock --force is refused naming the admin role."""
    deployer.command("/lock", "production --reason x", ROOT)
    assert "*admin* role" in deployer.command("/unlock", "production --force")
    assert holder(deployer) is not None


def test_unlock_of_a_run_lock_is_refused_without_force(deployer: Deployer) -> None:
    """A lock held by a run is released when the run ends; /unlock says so and points at Abort."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.command("/unlock", "production")
    assert f"deploy run `{run_id}`" in reply and "released when the run ends" in reply
    assert holder(deployer) is not None


def test_force_unlock_of_a_pending_run_aborts_it(deployer: Deployer) -> None:
    """Breaking a pending run's lock aborts that run, so it can no longer be approved and started unlocked."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.command("/unlock", "production --force", ROOT)
    assert deployer.run(run_id).state == "aborted"
    assert deployer.buttons(run_id) == []


def test_unlock_when_nothing_is_locked(deployer: Deployer) -> None:
    """/unlock of a free environment says it is not locked."""
    assert "is not locked" in deployer.command("/unlock", "production")


def test_expired_freeze_no_longer_blocks(deployer: Deployer) -> None:
    """A freeze past its --hours no longer holds the environment: a deploy takes the lock over."""
    deployer.command("/lock", "production --reason 'short' --hours 0.0003")  # about one second
    wait_until(lambda: holder(deployer) is None, 5, "the freeze to expire")
    reply, run_id = deployer.deploy("v2.3 --env production --canary")
    info = holder(deployer)
    assert info is not None and info.run_id == run_id


def test_status_shows_the_lock_and_the_active_run(deployer: Deployer) -> None:
    """/status names the lock holder and each active run with its state and requester."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    text = deployer.command("/swarm-status", "--env production", BOB)
    assert f"`production` is locked by alice for deploy run `{run_id}`" in text
    assert f"Run `{run_id}`: v2.3 (canary) — ⏳ Waiting for approval, requested by alice" in text


def test_status_shows_free_after_the_run_ends(deployer: Deployer) -> None:
    """Once a run is aborted /status shows the environment free and no active run."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.click(run_id, "Abort", ALICE)
    text = deployer.command("/swarm-status", "--env production", BOB)
    assert "Lock: free" in text and run_id not in text


def test_force_unlock_of_a_running_run_rolls_it_back(deployer: Deployer) -> None:
    """Breaking a running run's lock aborts it into a rollback, recorded as an abort by the admin."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(run_id, "checklist")
    deployer.command("/unlock", "staging --force", ROOT)
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and run.abort_requested_by == ROOT
    assert [r["actor_id"] for r in deployer.audit("deploy.abort", run_id)] == [ROOT]


def test_force_unlock_of_a_running_run_rolls_it_back_under_the_lock(deployer: Deployer) -> None:
    """/unlock --force on a running run stops it; the lock stays until its rollback ends, then it is free."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(run_id, "checklist")
    reply = deployer.command("/unlock", "staging --force", ROOT)
    assert "rolling back" in reply and "unlocks when it ends" in reply
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and run.abort_requested_by == ROOT
    assert "is not locked" in deployer.command("/unlock", "staging", ROOT)
    assert [r["outcome"] for r in deployer.audit("lock.break_glass")] == ["abort_requested"]
