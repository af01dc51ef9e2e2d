"""`/rollback --with-db` (runbook 8.2 step 3: the database rollback Job; admin plus one approval, always) and
the immediate rollback of a deploy that ended within `immediate_rollback_window_seconds`.

Production runs on the Kubernetes API stand-in (official client, simulated controller running the Job);
trading is simulated. Every refusal is an ephemeral answer and an audit record."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.k8s_api import FakeKubernetes
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    IMAGE,
    PROD_DEPLOY,
    ROOT,
    Deployer,
    fake_slack,
    start_deploy_bot,
    wait_until,
    write_config,
)

NS, APP = "trading-prod", "trading-bot-swarm"
QUICK_PROCEDURE = [{"kind": "precheck"}, {"kind": "rollout", "name": "Roll out"}, {"kind": "health"},
                   {"kind": "trading_resume", "name": "Resume trading", "fractions": [1.0], "pause_seconds": 0}]


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(rollout_ticks=2) as k:
        k.add_deployment(NS, APP, f"{IMAGE}:v2.3", replicas=4)
        yield k


@pytest.fixture
def bot(fake_slack: FakeSlack, kube: FakeKubernetes,
        tmp_path: Path) -> Iterator[Callable[..., Deployer]]:
    started: list[Deployer] = []

    def start(**prod: Any) -> Deployer:
        def change(data: dict[str, Any]) -> None:
            env = data["environments"]["production"]
            env.update({"kubernetes": {"host": kube.url}, "procedure": QUICK_PROCEDURE,
                        "rollback_approvals_required": 0, **prod})
        d = start_deploy_bot(fake_slack, f"sqlite:///{tmp_path}/db.db", write_config(tmp_path, change))
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def run_id_of(reply: str) -> str:
    found = re.search(r"run `(r-[0-9a-f]{8})`", reply)
    assert found, reply
    return found.group(1)


def rollback(d: Deployer, flags: str, user: str) -> str:
    return d.command("/rollback", f"--env production --to v2.2.0 {flags}".strip(), user, channel=PROD_DEPLOY)


def live_image(kube: FakeKubernetes) -> str:
    return str(kube.deployment(NS, APP)["spec"]["template"]["spec"]["containers"][0]["image"])


def test_with_db_needs_the_admin_role_and_the_refusal_is_audited(bot: Callable[..., Deployer],
                                                                  kube: FakeKubernetes) -> None:
    d = bot()
    reply = rollback(d, "--with-db", ALICE)  # alice deploys to production; she is no admin
    assert "may not roll the database of production back" in reply and "admin" in reply
    denied = [r for r in d.audit("command.rollback") if r["outcome"] == "denied"]
    assert denied and denied[0]["environment"] == "production"
    with d.container.db.read() as session:
        from bot.persistence.models import Run

        assert session.query(Run).count() == 0
    assert kube.requests_matching(lambda r: "/jobs" in r.path) == []


def test_with_db_takes_one_approval_then_runs_the_job_after_the_application(bot: Callable[..., Deployer],
                                                                            kube: FakeKubernetes) -> None:
    d = bot()  # rollback_approvals_required: 0 — a database rollback needs a second person anyway
    reply = rollback(d, "--with-db --reason 'migration broke fills'", ROOT)
    assert "needs 1 approval(s)" in reply, reply
    run_id = run_id_of(reply)
    assert [s.kind for s in d.steps(run_id)] == ["precheck", "trading_stop", "maintenance_on", "rollout",
                                                 "db_rollback", "health", "maintenance_off", "trading_resume"]
    assert kube.requests_matching(lambda r: "/jobs" in r.path) == []  # nothing before the approval
    d.click(run_id, "Approve", BOB)
    run = d.wait_state(run_id)
    assert run.state == "succeeded", run.outcome
    assert live_image(kube) == f"{IMAGE}:v2.2.0"
    job = kube.job(NS, f"{run_id}-db-rollback")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["restore", "--tag", "pre-v2.3"]  # the backup taken before the bad version
    assert job["metadata"]["labels"]["swarm-chatops/run"] == run_id
    # runbook order: the application first, then the database, then verification
    order = [i for i, r in enumerate(kube.requests) if not r.faulted and (
        (r.method == "PATCH" and r.path.endswith(f"/deployments/{APP}")) or (r.method == "POST" and
                                                                            r.path.endswith("/jobs")))]
    assert [kube.requests[i].method for i in order] == ["PATCH", "POST"]
    assert "database rolled back" in (d.step(run_id, "db_rollback").detail or "")
    creates = d.audit("kubernetes.job.create", run_id)
    assert [json.loads(json.dumps(r["args"]))["purpose"] for r in creates] == ["db-rollback"]


def test_a_failed_database_rollback_job_says_why(bot: Callable[..., Deployer], kube: FakeKubernetes) -> None:
    d = bot()
    kube.fail_jobs("r-", "Error: backup pre-v2.3 not found\n")
    run_id = run_id_of(rollback(d, "--with-db", ROOT))
    d.click(run_id, "Approve", BOB)
    run = d.wait_state(run_id)
    assert run.state != "succeeded"
    step = d.step(run_id, "db_rollback")
    assert step.status == "failed" and "database rollback job" in (step.detail or "")
    d.bot.settle()
    thread = "\n".join(str(m.get("text")) for m in d.fake.messages_in(PROD_DEPLOY))
    assert "Database rollback Job" in thread and "backup pre-v2.3 not found" in thread


def test_with_db_where_no_database_rollback_is_configured(bot: Callable[..., Deployer]) -> None:
    d = bot(db_rollback=None)
    reply = rollback(d, "--with-db", ROOT)
    assert "production has no database rollback configured" in reply and "db_rollback" in reply
    assert [r["outcome"] for r in d.audit("command.rollback")] == ["usage_error"]


def test_immediate_rollback_within_the_window_and_never_with_db(bot: Callable[..., Deployer],
                                                                 kube: FakeKubernetes) -> None:
    d = bot(rollback_approvals_required=None, immediate_rollback_window_seconds=600)  # default: 1 approval
    _, deploy_id = d.deploy("v2.4 --env production")
    d.approve_all(deploy_id)
    assert d.wait_state(deploy_id).state == "succeeded"
    # --with-db ignores the window: it still waits for an approval
    with_db = rollback(d, "--with-db", ROOT)
    assert "needs 1 approval(s)" in with_db, with_db
    d.click(run_id_of(with_db), "Abort", ROOT)
    reply = rollback(d, "--reason 'fills broken'", ALICE)
    assert "at once, without approval" in reply and f"deploy `{deploy_id}` ended succeeded" in reply, reply
    run = d.wait_state(run_id_of(reply))
    assert run.state == "succeeded" and run.approvals_required == 0
    assert run.plan["immediate"].startswith(f"deploy `{deploy_id}`")
    assert live_image(kube) == f"{IMAGE}:v2.2.0"


def test_no_window_means_an_approval(bot: Callable[..., Deployer]) -> None:
    d = bot(rollback_approvals_required=None)
    _, deploy_id = d.deploy("v2.4 --env production")
    d.approve_all(deploy_id)
    assert d.wait_state(deploy_id).state == "succeeded"
    reply = rollback(d, "", ALICE)
    assert "needs 1 approval(s)" in reply and "without approval" not in reply
    wait_until(lambda: d.run(run_id_of(reply)).state == "pending_approval", 10, "the plan")
