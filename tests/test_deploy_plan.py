"""/deploy: the plan it posts, dry runs, and the requests it refuses before anything is planned."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from sqlalchemy import func, select

from bot.core import locks
from bot.persistence.models import Run
from tests.harness.signing import slash_command_body
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    DAVE,
    NEW_IMAGE,
    OLD_IMAGE,
    PROD_DEPLOY,
    ROOT,
    Deployer,
    button_payload,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
)


def run_count(d: Deployer) -> int:
    with d.container.db.read() as session:
        return int(session.execute(select(func.count()).select_from(Run)).scalar_one())


def test_plan_message_shows_what_will_happen(deployer: Deployer) -> None:
    """The plan names its steps, current version (rollback target), strategy, thresholds, ETA, approvals."""
    _, run_id = deployer.deploy("v2.3 --env production --canary --reason 'fix fills'")
    text = deployer.message_text(run_id)
    for expected in ("Deploy v2.3 → production (canary)", "Stakeholders notified", "Pre-checks", "Roll out",
                     "Health checks and smoke tests", f"`{OLD_IMAGE}`", f"`{NEW_IMAGE}`", "50% → 100%",
                     "error_rate > 0.05 fails", "order_success < 0.99 fails", "0/2", "Waiting for approval",
                     "Reason: fix fills"):
        assert expected in text, expected
    assert "ETA" in text


def test_plan_is_posted_in_the_environment_deploy_channel(deployer: Deployer) -> None:
    """A /deploy typed anywhere posts the plan in the environment's deploy channel and says where."""
    reply, run_id = deployer.deploy("v2.3 --env production --canary")
    assert f"<#{PROD_DEPLOY}>" in reply and "2 approval(s)" in reply
    assert deployer.run(run_id).channel == PROD_DEPLOY
    assert deployer.message(run_id)["channel"] == PROD_DEPLOY


def test_approve_button_carries_the_plan_hash(deployer: Deployer) -> None:
    """The Approve button names the run and a prefix of the plan hash; Abort is offered beside it."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    buttons = {b["text"]["text"]: button_payload(b) for b in deployer.buttons(run_id)}
    assert set(buttons) == {"Approve", "Abort"}
    assert deployer.run(run_id).plan_hash.startswith(buttons["Approve"]["h"])
    assert buttons["Approve"]["run"] == run_id and len(buttons["Approve"]["h"]) >= 12


def test_dry_run_posts_the_plan_without_buttons(deployer: Deployer) -> None:
    """--dry-run posts the plan marked as a dry run, with nothing to click."""
    reply, run_id = deployer.deploy("v2.3 --env production --canary --dry-run")
    assert "Dry run" in reply and "Nothing will be changed" in reply
    assert "Dry run: plan only" in deployer.message_text(run_id)
    assert deployer.buttons(run_id) == []


def test_dry_run_takes_no_lock_and_changes_nothing(deployer: Deployer) -> None:
    """A dry run holds no lock (a real deploy may follow at once) and never touches the cluster."""
    _, dry = deployer.deploy("v2.3 --env staging --dry-run")
    with deployer.container.db.read() as session:
        assert locks.current(session, "staging") is None
    _, real = deployer.deploy("v2.3 --env staging")
    deployer.wait_step(real, "checklist")
    assert deployer.run(dry).state == "dry_run" and deployer.run(dry).started_at is None
    assert deployer.live_image("staging") == OLD_IMAGE


def test_staging_needs_no_approval_and_starts_at_once(deployer: Deployer) -> None:
    """With approvals_required 0 the run is queued immediately and the executor starts it."""
    reply, run_id = deployer.deploy("v2.3 --env staging")
    assert reply.startswith("Deploying v2.3 → staging")
    deployer.wait_step(run_id, "checklist")
    assert deployer.run(run_id).state == "running"


def test_version_not_matching_allowed_tags_is_refused(deployer: Deployer) -> None:
    """A tag outside the environment's allowed_tags is refused with the pattern, and nothing is planned."""
    reply = deployer.command("/deploy", "v2.3-rc.1 --env production")
    assert "not allowed in production" in reply and "accepts tags matching" in reply
    assert run_count(deployer) == 0


def test_release_candidate_is_allowed_where_the_pattern_permits_it(deployer: Deployer) -> None:
    """The same rc tag is accepted in staging, whose allowed_tags include -rc.N."""
    reply, _ = deployer.deploy("v2.3-rc.1 --env staging")
    assert "Deploying v2.3-rc.1 → staging" in reply


def test_unknown_environment_is_refused(deployer: Deployer) -> None:
    """--env with a name the config does not know is refused, listing the known ones."""
    reply = deployer.command("/deploy", "v2.3 --env prod")
    assert "unknown environment 'prod'" in reply and "production, staging" in reply
    assert run_count(deployer) == 0


def test_deploying_the_version_already_running_is_refused(deployer: Deployer) -> None:
    """Asking for the image the cluster already runs says so and plans nothing."""
    reply = deployer.command("/deploy", "v2.2.0 --env production")
    assert "already runs" in reply and OLD_IMAGE in reply
    assert run_count(deployer) == 0


def test_people_without_the_deployer_role_cannot_request(deployer: Deployer) -> None:
    """A viewer's /deploy is refused naming the missing role; nothing is planned."""
    reply = deployer.command("/deploy", "v2.3 --env production", DAVE)
    assert "may not deploy to production" in reply and "*deployer* role" in reply
    assert run_count(deployer) == 0


def test_second_deploy_while_a_run_holds_the_lock_names_holder_time_and_run(deployer: Deployer) -> None:
    """A /deploy while another run holds the environment says who holds it, since when, and which run."""
    _, first = deployer.deploy("v2.3 --env production --canary")
    reply = deployer.command("/deploy", "v2.4 --env production", ROOT)
    assert "`production` is locked by <@U0ALICE01>" in reply and f"run `{first}`" in reply
    assert "since " in reply and " UTC" in reply
    assert run_count(deployer) == 1


def test_dry_run_is_allowed_while_locked(deployer: Deployer) -> None:
    """Looking at a plan is harmless, so a dry run works while another run holds the lock."""
    deployer.deploy("v2.3 --env production --canary")
    reply, _ = deployer.deploy("v2.4 --env production --dry-run", ALICE)
    assert "Dry run" in reply


def test_slack_retry_of_deploy_plans_once(deployer: Deployer) -> None:
    """The same /deploy delivered twice (a Slack retry) posts one plan and answers once."""
    body = slash_command_body("/deploy", "v2.3 --env production --canary", ALICE, "alice", "C0STAGING1",
                              deployer.fake.response_url("retried"), trigger_id="1.2.retried")
    assert deployer.bot.post(body).status_code == 200
    assert deployer.bot.post(body).status_code == 200
    deployer.bot.settle()
    assert len(deployer.fake.wait_for_response("retried")) == 1
    assert run_count(deployer) == 1 and len(deployer.audit("deploy.plan")) == 1
