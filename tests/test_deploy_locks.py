"""One active run per environment: /lock freezes, /unlock rules, break-glass --force, expiry, /status."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from bot.core import locks
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
    assert "`production` is locked by <@U0ALICE01> for a freeze" in reply and "quarter-end close" in reply
    info = holder(deployer)
    assert info is not None and info.kind == "freeze" and info.held_by == ALICE
    texts = deployer.channel_texts(PROD_DEPLOY)
    assert any(t.startswith(":lock:") and "quarter-end close" in t for t in texts)


def test_lock_needs_a_reason(deployer: Deployer) -> None:
    """/lock without --reason is refused and freezes nothing."""
    reply = deployer.command("/lock", "production")
    assert "missing --reason TEXT" in reply and "Usage: `/lock ENV --reason TEXT [--hours N]`" in reply
    assert holder(deployer) is None


def test_lock_needs_the_deployer_role(deployer: Deployer) -> None:
    """A viewer cannot freeze an environment."""
    assert "*deployer* role" in deployer.command("/lock", "production --reason x", DAVE)
    assert holder(deployer) is None


def test_deploy_during_a_freeze_is_refused_naming_the_freeze(deployer: Deployer) -> None:
    """/deploy while frozen says who froze it and why, and plans nothing."""
    deployer.command("/lock", "production --reason 'quarter-end close'", ROOT)
    reply = deployer.command("/deploy", "v2.3 --env production --canary")
    assert "locked by <@U0ROOT006> for a freeze" in reply and "quarter-end close" in reply
    assert deployer.audit("deploy.plan") == []


def test_admin_force_deploys_through_a_freeze_loudly(deployer: Deployer) -> None:
    """An admin's /deploy --force breaks the freeze, is announced as break-glass and audited."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    reply, run_id = deployer.deploy("v2.3 --env production --canary --force", ROOT)
    assert "queued" in reply
    info = holder(deployer)
    assert info is not None and info.kind == "run" and info.run_id == run_id
    assert any("BREAK-GLASS" in t and "<@U0ROOT006> forced a deploy of v2.3" in t and "quarter-end close" in t
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
    assert f"run `{first}`" in reply and "/unlock production --force" in reply
    assert len(deployer.audit("deploy.plan")) == 1


def test_holder_can_lift_their_freeze(deployer: Deployer) -> None:
    """/unlock by whoever froze the environment lifts it and says so in the deploy channel."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "Unlocked `production`" in deployer.command("/unlock", "production")
    assert holder(deployer) is None
    assert any("<@U0ALICE01> lifted the freeze" in t for t in deployer.channel_texts(PROD_DEPLOY))


def test_someone_elses_freeze_needs_admin_force(deployer: Deployer) -> None:
    """/unlock of another person's freeze is refused, even for an admin without --force."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "admin with `/unlock production --force`" in deployer.command("/unlock", "production", ROOT)
    assert holder(deployer) is not None


def test_admin_force_unlock_breaks_a_freeze_loudly(deployer: Deployer) -> None:
    """/unlock --force by an admin lifts another person's freeze, announced as break-glass and audited."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    assert "Unlocked" in deployer.command("/unlock", "production --force", ROOT)
    assert holder(deployer) is None
    assert any("BREAK-GLASS" in t and "<@U0ROOT006> force-released" in t for t in deployer.channel_texts(PROD_DEPLOY))
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
    assert f"run `{run_id}`" in reply and "released when the run ends" in reply
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
    assert f"`production` is locked by <@U0ALICE01> for run `{run_id}`" in text
    assert f"Run `{run_id}`: v2.3 (canary) — ⏳ Waiting for approval, requested by <@U0ALICE01>" in text


def test_status_shows_free_after_the_run_ends(deployer: Deployer) -> None:
    """Once a run is aborted /status shows the environment free and no active run (the run is among the
    last runs now)."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.click(run_id, "Abort", ALICE)
    text = deployer.command("/swarm-status", "--env production", BOB)
    assert "Lock: free" in text and f"Run `{run_id}`" not in text and "Active run: none" in text
    assert f"• `{run_id}` deploy v2.3 (canary) by <@U0ALICE01>" in text and "🛑 Aborted" in text


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


# --- out-of-range values are usage errors, not internal errors (issue 6, item 6) ---------------------
def test_lock_for_a_vanishing_duration_is_a_usage_error(deployer: Deployer) -> None:
    """`--hours 1e-300` (a freeze that would expire at once) is refused saying what is accepted; nothing is frozen."""
    reply = deployer.command("/lock", "production --reason x --hours 1e-300")
    assert ":warning: --hours: '1e-300' is not a plain number" in reply
    assert "from 0.1 (6 minutes) to 168 (a week)" in reply and "went wrong" not in reply
    assert holder(deployer) is None
    deployer.bot.settle()
    assert deployer.audit("command.lock")[-1]["outcome"] == "usage_error"


def test_lock_for_zero_hours_says_what_is_accepted(deployer: Deployer) -> None:
    """`--hours 0` is out of range, and the message gives the range actually accepted (not "between 0 and 168")."""
    reply = deployer.command("/lock", "production --reason x --hours 0")
    assert "--hours: 0 is out of range; give a number of hours from 0.1 (6 minutes) to 168" in reply
    assert holder(deployer) is None


def test_tick_button_with_a_huge_step_is_a_usage_error(deployer: Deployer) -> None:
    """A crafted Tick value with step 10**20 or 1e20 is refused as malformed and audited, never an internal error."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    button = deployer.button(run_id, "Tick:")
    for step in ("100000000000000000000", "1e20"):
        value = button["value"].replace('"step":0', f'"step":{step}')
        assert value != button["value"]
        reply = deployer.click(run_id, "Tick:", ALICE, value=value)
        assert reply == ":warning: malformed button (checklist step)"
    deployer.bot.settle()
    outcomes = [r["outcome"] for r in deployer.audit("action.deploy.tick")]
    assert outcomes == ["usage_error", "usage_error"]
    assert deployer.step(run_id, "checklist").status == "running"  # nothing was ticked


# --- next steps that work (issue 6, item 13) ----------------------------------------------------------
def test_lock_on_your_own_freeze_points_at_unlock(deployer: Deployer) -> None:
    """Locking what you froze yourself says so and how to change it, not "ask whoever holds it"."""
    deployer.command("/lock", "production --reason 'quarter-end close'")
    reply = deployer.command("/lock", "production --reason 'longer close' --hours 8")
    assert "You froze `production` yourself: `/unlock production` lifts the freeze" in reply
    assert "whoever" not in reply


def test_lock_on_someone_elses_freeze_names_who_to_ask(deployer: Deployer) -> None:
    """Locking another person's freeze names that person and the admin's exact command."""
    deployer.command("/lock", "production --reason 'quarter-end close'", ROOT)
    reply = deployer.command("/lock", "production --reason other")
    assert "Ask <@U0ROOT006>, who froze it, to `/unlock production`" in reply
    assert "`/unlock production --force`" in reply


def test_second_deploy_while_your_plan_is_pending_says_abort_it_first(deployer: Deployer) -> None:
    """A second /deploy while your own plan waits for approval says to abort that run first."""
    _, first = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.command("/deploy", "v2.4 --env production")
    assert f"Your run `{first}` holds `production`: abort `{first}` first" in reply
    assert "Wait for it" not in reply
    assert len(deployer.audit("deploy.plan")) == 1


def test_unlock_of_a_run_lock_names_the_environment_in_its_hint(deployer: Deployer) -> None:
    """/unlock staging on a run's lock suggests `/unlock staging --force`, a command that works as typed."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    reply = deployer.command("/unlock", "staging")
    assert "(admins) `/unlock staging --force`" in reply
    assert "/unlock --force" not in reply
