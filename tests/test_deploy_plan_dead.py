"""A deploy plan whose post can never be delivered: the run is cancelled, production's lock released, the
requester told by direct message; the requester's first reply said "queued", never "posted"."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.core import locks
from bot.persistence.models import OutboxMessage
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    PROD_DEPLOY,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)


def dms(d: Deployer, user: str) -> list[str]:
    return [str(m.get("text", "")) for m in d.fake.messages_in(user)]


def plan_row(d: Deployer, run_id: str) -> OutboxMessage:
    with d.container.db.read() as session:
        return session.execute(select(OutboxMessage).where(OutboxMessage.message_key == f"run:{run_id}",
                                                           OutboxMessage.kind == "post")).scalar_one()


def test_plan_refused_by_slack_cancels_the_run_and_tells_the_requester(deployer: Deployer) -> None:
    """The bot is not in the deploy channel: the plan post is dead on its first try, the run aborted by the
    bot (not by a person), the lock released, the requester DM'd with what to do; a new /deploy works."""
    deployer.fake.fail_next("chat.postMessage", error="not_in_channel")
    reply, run_id = deployer.deploy("v2.3 --env production --canary")
    assert "queued" in reply and "posted" not in reply
    run = deployer.wait_state(run_id, "aborted")
    assert run.outcome is not None and "could not be posted" in run.outcome
    with deployer.container.db.read() as session:
        assert locks.current(session, "production") is None
    [text] = wait_until(lambda: dms(deployer, ALICE), 10, "a DM to the requester")
    assert f"run `{run_id}`" in text and "cancelled" in text and "not_in_channel" in text
    assert f"<#{PROD_DEPLOY}>" in text and "/invite" in text
    [cancel] = deployer.audit("deploy.cancel", run_id)
    assert cancel["actor_id"] == "bot" and cancel["args"]["state_before"] == "pending_approval"
    assert [r["args"]["reason"] for r in deployer.audit("slack.delivery_failed")][0] == "permanent"
    assert deployer.verify_audit().ok
    reply, _ = deployer.deploy("v2.3 --env production --canary")
    assert "queued" in reply


def test_plan_still_undelivered_when_the_approval_window_ends(fake_slack: FakeSlack, sqlite_url: str,
                                                              tmp_path: Path) -> None:
    """Slack answers 503 to every post for the whole (3 s) approval window: the plan is retried until the
    window ends, then dead; the run does not outlive it holding the lock, and once Slack is back the
    requester learns what happened."""
    def short_window(data: dict[str, Any]) -> None:
        data["environments"]["production"]["approval_ttl_minutes"] = 0.05

    d = start_deploy_bot(fake_slack, sqlite_url, write_config(tmp_path, short_window))
    try:
        fake_slack.fail_next("chat.postMessage", status=503, times=1000)
        reply, run_id = d.deploy("v2.3 --env production --canary")
        assert "queued" in reply
        row = wait_until(lambda: (r := plan_row(d, run_id)).status == "dead" and r, 20, "the plan post to die")
        assert row.attempts > 1 and "deadline" in (row.last_error or "")
        wait_until(lambda: d.run(run_id).state in ("aborted", "expired"), 20, "the run to end")
        run = d.run(run_id)
        with d.container.db.read() as session:
            assert locks.current(session, "production") is None
        fake_slack.reset()  # Slack is back
        [text] = wait_until(lambda: dms(d, ALICE), 20, "a DM to the requester")
        assert f"run `{run_id}`" in text and "could not be posted" in text
        assert run.state in text or "cancelled" in text
        assert not [m for m in fake_slack.messages_in(PROD_DEPLOY) if "Approve" in str(m)]
    finally:
        d.stop()
