"""Approvals and aborts before execution: who counts, once, for which plan, until when, and clicks racing."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core import locks
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    OLD_IMAGE,
    ROOT,
    Deployer,
    button_payload,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)


def test_requester_cannot_approve_their_own_deploy(deployer: Deployer) -> None:
    """An approver who requested the deploy is refused and the approval does not count."""
    _, run_id = deployer.deploy("v2.3 --env production --canary", ROOT)
    reply = deployer.click(run_id, "Approve", ROOT)
    assert "you requested this deploy" in reply
    assert deployer.approvals(run_id) == [] and deployer.run(run_id).state == "pending_approval"


@pytest.mark.parametrize("user", [DAVE, ERIN, ALICE], ids=["viewer", "operator", "deployer"])
def test_people_without_the_approver_role_cannot_approve(deployer: Deployer, user: str) -> None:
    """Viewers, operators and deployers who are not approvers are refused naming the approver role."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.click(run_id, "Approve", user)
    assert "may not approve deploys to production" in reply and "*approver* role" in reply
    assert deployer.approvals(run_id) == []


def test_double_click_counts_once(deployer: Deployer) -> None:
    """The same approver clicking twice is one approval; the second click says so."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    first = deployer.click(run_id, "Approve", BOB)
    second = deployer.click(run_id, "Approve", BOB)
    assert "1 more approval(s) needed" in first and "already approved" in second
    assert [a.user_id for a in deployer.approvals(run_id)] == [BOB]
    assert "1/2: <@U0BOB0002>" in deployer.message_text(run_id)
    assert deployer.run(run_id).state == "pending_approval"


def test_slack_retry_of_a_click_is_processed_once(deployer: Deployer) -> None:
    """The same click delivered twice (a Slack retry) is audited and answered once."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    body = deployer.click_body(run_id, "Approve", BOB, "retried")
    assert deployer.bot.post(body).status_code == 200
    assert deployer.bot.post(body).status_code == 200
    deployer.bot.settle()
    assert len(deployer.fake.wait_for_response("retried")) == 1
    assert len(deployer.audit("deploy.approve", run_id)) == 1 and len(deployer.approvals(run_id)) == 1


def test_approval_for_a_different_plan_is_refused(deployer: Deployer) -> None:
    """A click carrying another plan's hash is refused: approvals are bound to the plan they saw."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    value = button_payload(deployer.button(run_id, "Approve"))
    stale = json.dumps({**value, "h": "0123456789abcdef"}, separators=(",", ":"), sort_keys=True)
    reply = deployer.click(run_id, "Approve", BOB, value=stale)
    assert "different plan" in reply and deployer.approvals(run_id) == []


def test_approval_with_a_too_short_hash_prefix_is_refused(deployer: Deployer) -> None:
    """A hash prefix shorter than 12 characters does not pin a plan, so it is refused."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    value = button_payload(deployer.button(run_id, "Approve"))
    short = json.dumps({**value, "h": value["h"][:4]}, separators=(",", ":"), sort_keys=True)
    assert "different plan" in deployer.click(run_id, "Approve", BOB, value=short)
    assert deployer.approvals(run_id) == []


def test_last_approval_starts_the_run(deployer: Deployer) -> None:
    """The second approver's click queues the run and the executor starts it."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.click(run_id, "Approve", BOB)
    reply = deployer.click(run_id, "Approve", CAROL)
    assert "All approvals are in" in reply
    deployer.wait_step(run_id, "checklist")
    assert [r["outcome"] for r in deployer.audit("deploy.start", run_id)] == ["running"]


@pytest.fixture
def deployer_on_both_databases(fake_slack: FakeSlack, database_url: str,
                               config_path: Path) -> Iterator[Deployer]:
    """The real bot on SQLite and on PostgreSQL."""
    d = start_deploy_bot(fake_slack, database_url, config_path)
    yield d
    d.stop()


def test_concurrent_approve_clicks_start_exactly_one_run(deployer_on_both_databases: Deployer) -> None:
    """Bob and Carol clicking at once (each twice) give two approvals and exactly one deploy.start."""
    d = deployer_on_both_databases
    _, run_id = d.deploy("v2.3 --env production --canary")
    replies = d.click_together(run_id, "Approve", [BOB, CAROL, BOB, CAROL])
    assert sum("All approvals are in" in r for r in replies) == 1, replies
    assert all("Approved run" in r or "already approved" in r or "approvals are closed" in r for r in replies)
    d.wait_step(run_id, "checklist")
    assert sorted(a.user_id for a in d.approvals(run_id)) == [BOB, CAROL]
    assert len(d.audit("deploy.approve", run_id)) == 2
    assert len(d.audit("deploy.approved", run_id)) == 1 and len(d.audit("deploy.start", run_id)) == 1


# --- expiry ---------------------------------------------------------------------------------------------
def short_ttl(data: dict[str, Any]) -> None:
    data["environments"]["production"]["approval_ttl_minutes"] = 0.02  # 1.2 s


@pytest.fixture
def expired_run(fake_slack: FakeSlack, sqlite_url: str, tmp_path: Path) -> Iterator[tuple[Deployer, str]]:
    """A production plan whose 1.2 s approval window passed with one of two approvals (and its bot)."""
    d = start_deploy_bot(fake_slack, sqlite_url, write_config(tmp_path, short_ttl))
    _, run_id = d.deploy("v2.3 --env production --canary")
    d.click(run_id, "Approve", BOB)
    d.wait_state(run_id, "expired", timeout=10)
    yield d, run_id
    d.stop()


def test_expired_plan_says_so_and_loses_its_buttons(expired_run: tuple[Deployer, str]) -> None:
    """After approval_ttl_minutes the message says the approvals did not arrive and offers no buttons."""
    d, run_id = expired_run
    assert "Expired: approvals did not arrive in time" in d.message_text(run_id)
    assert d.buttons(run_id) == []
    assert len(d.audit("deploy.expired", run_id)) == 1


def test_expired_plan_releases_the_lock(expired_run: tuple[Deployer, str]) -> None:
    """An expired plan no longer holds the environment: a new /deploy is accepted."""
    d, _ = expired_run
    with d.container.db.read() as session:
        assert locks.current(session, "production") is None
    reply, _ = d.deploy("v2.3 --env production --canary")
    assert "queued" in reply


def test_click_on_an_expired_plan_is_refused(expired_run: tuple[Deployer, str]) -> None:
    """A late Approve click (an old copy of the button) after expiry neither counts nor starts a run."""
    d, run_id = expired_run
    value = json.dumps({"env": "production", "h": d.run(run_id).plan_hash[:16], "run": run_id},
                       separators=(",", ":"), sort_keys=True)
    reply = d.press(run_id, {"action_id": "deploy.approve", "value": value}, CAROL)
    assert "expired" in reply and d.run(run_id).state == "expired"
    assert [a.user_id for a in d.approvals(run_id)] == [BOB]


# --- abort before execution -------------------------------------------------------------------------------
def test_requester_abort_before_start_changes_nothing_and_frees_the_environment(deployer: Deployer) -> None:
    """Abort on a pending plan: aborted, no buttons, lock released, cluster untouched."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.click(run_id, "Abort", ALICE)
    assert "aborted; nothing was changed" in reply
    run = deployer.run(run_id)
    assert run.state == "aborted" and run.abort_requested_by == ALICE
    assert deployer.buttons(run_id) == [] and "Aborted" in deployer.message_text(run_id)
    with deployer.container.db.read() as session:
        assert locks.current(session, "production") is None
    assert deployer.live_image() == OLD_IMAGE
    assert [r["outcome"] for r in deployer.audit("deploy.abort", run_id)] == ["aborted"]


@pytest.mark.parametrize("user", [CAROL, ROOT], ids=["approver", "admin"])
def test_approvers_and_admins_may_abort_someone_elses_plan(deployer: Deployer, user: str) -> None:
    """An approver or an admin (not the requester) may abort a pending plan."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    assert "aborted" in deployer.click(run_id, "Abort", user)
    assert deployer.run(run_id).state == "aborted"


@pytest.mark.parametrize("user", [DAVE, ERIN], ids=["viewer", "operator"])
def test_people_who_are_not_requester_approver_or_admin_cannot_abort(deployer: Deployer, user: str) -> None:
    """Viewers and operators are refused and the plan stays pending."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.click(run_id, "Abort", user)
    assert "may not abort" in reply
    assert deployer.run(run_id).state == "pending_approval"


def test_approval_after_abort_is_refused(deployer: Deployer) -> None:
    """A late Approve click on an aborted plan is refused and starts nothing."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    approve = deployer.button(run_id, "Approve")
    deployer.click(run_id, "Abort", ALICE)
    reply = deployer.press(run_id, approve, BOB)
    assert "approvals are closed" in reply
    assert deployer.approvals(run_id) == [] and deployer.run(run_id).state == "aborted"
    assert deployer.audit("deploy.start", run_id) == []


# --- the checklist ----------------------------------------------------------------------------------------
def test_checklist_waits_for_a_tick_before_anything_changes(deployer: Deployer) -> None:
    """A started run waits at its checklist item, offering a Tick button, and touches nothing meanwhile."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(run_id, "checklist")
    assert deployer.button(run_id, "Tick: Stakeholders notified")
    assert [s.status for s in deployer.steps(run_id)][1:] == ["pending"] * (len(deployer.steps(run_id)) - 1)
    assert deployer.sim("staging").trading.history == []


def test_abort_while_waiting_at_the_checklist_says_nothing_changed(deployer: Deployer) -> None:
    """Aborting a started run that is still at its checklist ends it without any rollback work."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(run_id, "checklist")
    deployer.click(run_id, "Abort", ALICE)
    run = deployer.wait_state(run_id)
    assert run.outcome == "stopped before anything in the cluster changed"
    assert deployer.steps(run_id, "rollback") == [] and deployer.sim("staging").trading.history == []


@pytest.mark.parametrize("user", [ERIN, DAVE], ids=["operator", "viewer"])
def test_checklist_tick_needs_the_items_role(deployer: Deployer, user: str) -> None:
    """Only someone with the item's role (deployer by default) can tick it; the run keeps waiting."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(run_id, "checklist")
    assert "*deployer* role" in deployer.tick(run_id, user)
    assert deployer.step(run_id, "checklist").status == "running"


def test_double_tick_is_recorded_once(deployer: Deployer) -> None:
    """A tick clicked twice is one tick; the second click says it was already ticked or done."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    tick = deployer.button(run_id, "Tick:")
    deployer.press(run_id, tick, ALICE)
    second = deployer.press(run_id, tick, ALICE)
    assert "already ticked" in second or "not waiting for a tick" in second
    assert len(deployer.audit("deploy.checklist_tick", run_id)) == 1
    assert deployer.step(run_id, "checklist").data["ticked_by"] == ALICE
