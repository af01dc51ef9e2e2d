"""Canary deploys to production end to end: the happy path, its record, every way back (analysis, abort)."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core import locks
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    BOTH_DATABASES,
    CAROL,
    NAMES,
    NEW_IMAGE,
    OLD_IMAGE,
    PROD_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    module_database_url,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)

CANARY = "trading-bot-swarm-canary"


def approved_canary(d: Deployer, version: str = "v2.3") -> str:
    """Request a production canary, have bob and carol approve and alice tick the checklist; the run id."""
    _, run_id = d.deploy(f"{version} --env production --canary")
    d.approve_all(run_id)
    d.tick(run_id)
    return run_id


def is_subsequence(wanted: list[str], actual: list[str]) -> bool:
    it = iter(actual)
    return all(any(a == w for a in it) for w in wanted)


# --- the happy path, run once per database and looked at by several tests ---------------------------------
@pytest.fixture(scope="module", params=BOTH_DATABASES)
def succeeded(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A production canary deploy of v2.3 that ran to the end (on SQLite and on PostgreSQL), and its bot."""
    tmp = tmp_path_factory.mktemp("canary")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, module_database_url(request, tmp), write_config(tmp))
        run_id = approved_canary(d)
        d.wait_state(run_id)
        yield d, run_id
        d.stop()


def test_canary_run_succeeds_and_promotes_the_new_image(succeeded: tuple[Deployer, str]) -> None:
    """The run ends succeeded; the stable Deployment runs v2.3 at full size and the canary is gone."""
    d, run_id = succeeded
    assert d.run(run_id).state == "succeeded"
    assert d.live_image() == NEW_IMAGE
    cluster = d.sim().cluster
    assert CANARY not in cluster.deployments("trading-prod")
    assert cluster.replicas("trading-prod", "trading-bot-swarm") == 3


def test_final_message_summarises_who_how_long_and_outcome(succeeded: tuple[Deployer, str]) -> None:
    """The message ends with who requested, who approved, how long it took and the outcome; no buttons."""
    d, run_id = succeeded
    text = d.message_text(run_id)
    assert "Succeeded" in text
    assert "Summary: requested by <@U0ALICE01>, approved by <@U0BOB0002>, <@U0CAROL03>, took" in text
    assert "outcome: deployed" in text
    assert d.buttons(run_id) == []


def test_live_message_is_updated_in_place_with_details_in_the_thread(succeeded: tuple[Deployer, str]) -> None:
    """One top-level message per run, edited as steps progress; analysis results and the end in its thread."""
    d, run_id = succeeded
    ts = d.message_ts(run_id)
    top = [m for m in d.fake.messages_in("C0PRODDEP1")
           if not m.get("thread_ts") and run_id in str(m.get("blocks"))]
    assert [m["ts"] for m in top] == [ts]
    assert len([c for c in d.fake.calls_to("chat.update") if c.params.get("ts") == ts]) >= 5
    thread = d.thread_texts(run_id)
    assert any(t.startswith("Canary 50%: *pass*") for t in thread)
    assert any(t.startswith("Canary 100%: *pass*") for t in thread)
    assert thread[-1].startswith("✅ Finished: deployed")


def test_lock_is_released_after_success(succeeded: tuple[Deployer, str]) -> None:
    """A finished run no longer holds production."""
    d, _ = succeeded
    with d.container.db.read() as session:
        assert locks.current(session, "production") is None


def test_audit_chain_verifies_after_a_full_run(succeeded: tuple[Deployer, str]) -> None:
    """The hash chain over everything the run recorded verifies."""
    d, _ = succeeded
    result = d.verify_audit()
    assert result.ok, result.problem
    assert result.checked >= 20


def test_audit_records_the_run_from_plan_to_success(succeeded: tuple[Deployer, str]) -> None:
    """Plan, approvals, start, each step's start/end, Kubernetes changes, verdicts and success, in order."""
    d, run_id = succeeded
    actions = [r["action"] for r in d.audit(run_id=run_id)]
    expected_in_order = ["deploy.plan", "deploy.approve", "deploy.approve", "deploy.approved", "deploy.start",
                         "deploy.step.start", "deploy.checklist_tick", "deploy.step.end",  # the checklist
                         "deploy.step.start", "deploy.step.end",  # pre-checks
                         "deploy.step.start", "kubernetes.canary_weight", "deploy.analysis",
                         "kubernetes.canary_weight", "deploy.analysis", "kubernetes.canary_promote",
                         "deploy.step.end",  # the rollout
                         "deploy.step.start", "deploy.step.end", "deploy.succeeded"]
    assert is_subsequence(expected_in_order, actions), actions
    approvers = [r["actor_id"] for r in d.audit("deploy.approve", run_id)]
    assert approvers == [BOB, CAROL]
    verdicts = [(r["args"]["weight"], r["outcome"]) for r in d.audit("deploy.analysis", run_id)]
    assert verdicts == [(50, "pass"), (100, "pass")]


def test_each_step_started_exactly_once_and_ended(succeeded: tuple[Deployer, str]) -> None:
    """Every deploy step has one deploy.step.start and one deploy.step.end, and none was resumed."""
    d, run_id = succeeded
    names = [s.name for s in d.steps(run_id)]
    started = [r["args"]["step"] for r in d.audit("deploy.step.start", run_id)]
    ended = [r["args"]["step"] for r in d.audit("deploy.step.end", run_id)]
    assert started == names and ended == names
    assert d.audit("deploy.step.resume", run_id) == []
    assert all(s.attempts == 1 and s.status == "done" for s in d.steps(run_id))


# --- rolling back on bad analysis ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A production canary whose error rate is 20 %, left to finish by itself, and its bot."""
    tmp = tmp_path_factory.mktemp("bad")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(tmp))
        d.sim().metrics.set("error_rate", 0.2)
        run_id = approved_canary(d)
        d.wait_state(run_id)
        yield d, run_id
        d.stop()


def test_bad_canary_rolls_back_by_itself(bad_canary: tuple[Deployer, str]) -> None:
    """A failed analysis interval ends the run rolled back, the old image live and the canary removed."""
    d, run_id = bad_canary
    assert d.run(run_id).state == "rolled_back"
    assert d.live_image() == OLD_IMAGE
    assert CANARY not in d.sim().cluster.deployments("trading-prod")
    assert d.sim().cluster.replicas("trading-prod", "trading-bot-swarm") == 3
    assert [r["outcome"] for r in d.audit("deploy.analysis", run_id)] == ["fail"]


def test_bad_canary_final_message_says_why(bad_canary: tuple[Deployer, str]) -> None:
    """The final message shows the rollback and names the failed check and its value."""
    d, run_id = bad_canary
    text = d.message_text(run_id)
    assert "Rolled back" in text and "Why it rolled back:" in text
    assert "canary analysis at 50%" in text and "error_rate=0.2" in text
    assert f"Restore `{OLD_IMAGE}`" in text


def test_bad_canary_alerts_the_incident_channel(bad_canary: tuple[Deployer, str]) -> None:
    """The incident channel hears that the deploy is rolling back and that it rolled back, with the reason."""
    d, run_id = bad_canary
    alerts = [t for t in d.channel_texts(PROD_INCIDENT) if run_id in t]
    assert any("is rolling back" in t and "error_rate" in t for t in alerts), alerts
    assert any("rolled back to" in t for t in alerts), alerts


def test_bad_canary_releases_the_lock(bad_canary: tuple[Deployer, str]) -> None:
    """A rolled-back run no longer holds production."""
    d, _ = bad_canary
    with d.container.db.read() as session:
        assert locks.current(session, "production") is None


def test_rollback_is_audited(bad_canary: tuple[Deployer, str]) -> None:
    """The rollback's start, its Kubernetes changes and the final state are audited; the chain verifies."""
    d, run_id = bad_canary
    actions = [r["action"] for r in d.audit(run_id=run_id)]
    for action in ("deploy.step.fail", "deploy.rollback.start", "kubernetes.canary_reset",
                   "deploy.rolled_back"):
        assert action in actions, actions
    assert d.verify_audit().ok


def test_no_data_three_times_rolls_back(deployer: Deployer) -> None:
    """Three inconclusive intervals (no data) roll the canary back: failing safe."""
    deployer.sim().metrics.set("nodata", True)
    run_id = approved_canary(deployer)
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and deployer.live_image() == OLD_IMAGE
    assert [r["outcome"] for r in deployer.audit("deploy.analysis", run_id)] == ["inconclusive"] * 3
    assert "3 inconclusive interval(s)" in (run.rollback_reason or "")


def test_prometheus_down_rolls_back(deployer: Deployer) -> None:
    """When the metrics source cannot be reached for `error_limit` (4) intervals in a row the analysis fails
    safe and the canary rolls back, with one cause line (Argo Rollouts' consecutiveErrorLimit)."""
    deployer.sim().metrics.set("down", True)
    run_id = approved_canary(deployer)
    run = deployer.wait_state(run_id, timeout=60)
    assert run.state == "rolled_back" and deployer.live_image() == OLD_IMAGE
    assert [r["outcome"] for r in deployer.audit("deploy.analysis", run_id)] == ["error"] * 4
    assert "Prometheus unreachable for 4 intervals in a row → rolled back" in (run.rollback_reason or ""), \
        run.rollback_reason


def test_a_short_prometheus_outage_does_not_roll_the_canary_back(deployer: Deployer) -> None:
    """One interval without Prometheus is an error, not a failure: the canary goes on and is promoted."""
    metrics = deployer.sim().metrics
    metrics.set("down", True)
    run_id = approved_canary(deployer)
    wait_until(lambda: deployer.audit("deploy.analysis", run_id), 30, "a first analysis")
    metrics.set("down", False)
    run = deployer.wait_state(run_id, timeout=60)
    assert run.state == "succeeded", run.rollback_reason
    outcomes = [r["outcome"] for r in deployer.audit("deploy.analysis", run_id)]
    assert outcomes[0] == "error" and "pass" in outcomes and "fail" not in outcomes


# --- abort during execution ---------------------------------------------------------------------------------
def test_abort_during_the_canary_rolls_back(deployer: Deployer) -> None:
    """Abort while the canary takes traffic: old image restored, canary removed, run rolled back."""
    run_id = approved_canary(deployer)
    cluster = deployer.sim().cluster
    wait_until(lambda: (deployer.step(run_id, "rollout").data or {}).get("weight") == 50, 20, "50 %")
    wait_until(lambda: CANARY in cluster.deployments("trading-prod"), 10, "the canary Deployment")
    reply = deployer.click(run_id, "Abort", BOB)
    assert "rolling back" in reply
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back" and run.abort_requested_by == BOB
    assert deployer.live_image() == OLD_IMAGE
    assert CANARY not in deployer.sim().cluster.deployments("trading-prod")
    assert "aborted by <@U0BOB0002>" in deployer.message_text(run_id)
    assert [r["outcome"] for r in deployer.audit("deploy.abort", run_id)] == ["rollback_requested"]


def test_abort_during_the_run_is_offered_with_a_confirmation(deployer: Deployer) -> None:
    """While running, the Abort button asks for confirmation before rolling back."""
    run_id = approved_canary(deployer)
    deployer.wait_step(run_id, "rollout")
    abort = deployer.button(run_id, "Abort")
    assert "confirm" in abort and "rolls back" in abort["confirm"]["text"]["text"]


def test_second_abort_click_during_the_run_is_harmless(deployer: Deployer) -> None:
    """A double-clicked Abort while running requests one rollback; the second click changes nothing."""
    run_id = approved_canary(deployer)
    deployer.wait_step(run_id, "rollout")
    abort = deployer.button(run_id, "Abort")
    deployer.press(run_id, abort, ALICE)
    second = deployer.press(run_id, abort, ALICE)
    assert "already being aborted" in second or "nothing to abort" in second
    deployer.wait_state(run_id)
    assert len(deployer.audit("deploy.rollback.start", run_id)) == 1
    assert len(deployer.audit("deploy.abort", run_id)) == 1


def test_finished_run_and_its_steps_show_in_metrics(succeeded: tuple[Deployer, str]) -> None:
    """/metrics counts the finished run by environment and outcome, and times its steps by kind."""
    d, _ = succeeded
    text = d.bot.client.get(f"{d.bot.url}/metrics").text
    assert 'chatops_deploy_runs_total{environment="production",outcome="succeeded"} 1.0' in text
    assert 'chatops_deploy_step_seconds_count{kind="rollout",status="done"} 1.0' in text
