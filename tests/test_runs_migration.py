"""Migration 0003 moves deploy runs made under 0002 into the runs table without loss: they still render
and a queued one still runs to the end (on SQLite and on PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.config import load_config
from bot.core.runs.states import Phase
from bot.core.workflows.deploy.plan import build_plan, plan_hash
from bot.core.workflows.deploy.workflow import DeployWorkflow
from bot.persistence.db import Database
from bot.persistence.models import Run, RunStep
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import FINISHED, NAMES, NEW_IMAGE, OLD_IMAGE, start_deploy_bot, wait_until, write_config


def legacy_plan(config_file: Path) -> dict[str, Any]:
    """A plan as 0002-era code stored it: no version, step fields flat in each step dict."""
    config = load_config(config_file)
    plan = build_plan(env_name="staging", env=config.environments["staging"], version="v2.3", strategy="rolling",
                      current_image=OLD_IMAGE, checks=[], reason="legacy", requested_by="U0ALICE01").to_json()
    plan.pop("v")
    plan["steps"] = [{"idx": s["idx"], "kind": s["kind"], "name": s["name"], "timeout": s["timeout"],
                      "estimate": s["estimate"], "on_resume": s["on_resume"], **s["params"]} for s in plan["steps"]]
    return plan


def insert_0002_run(db: Database, run_id: str, plan: dict[str, Any], state: str) -> None:
    now = datetime.now(UTC)
    tz = sa.DateTime(timezone=True)
    runs = sa.table("deploy_runs", *(sa.column(c) for c in (
        "id", "environment", "version", "image", "previous_image", "strategy", "reason", "requested_by",
        "requested_name", "channel", "plan_hash", "state", "correlation_id", "outcome")),
        sa.column("dry_run", sa.Boolean), sa.column("plan", sa.JSON), sa.column("approvals_required", sa.Integer),
        sa.column("version_no", sa.Integer), sa.column("created_at", tz), sa.column("started_at", tz),
        sa.column("finished_at", tz))
    steps = sa.table("run_steps", *(sa.column(c) for c in ("run_id", "phase", "kind", "name", "status")),
                     sa.column("idx", sa.Integer), sa.column("attempts", sa.Integer), sa.column("data", sa.JSON))
    finished = state == "succeeded"
    with db.engine.begin() as conn:
        conn.execute(runs.insert().values(
            id=run_id, environment="staging", version="v2.3", image=NEW_IMAGE, previous_image=OLD_IMAGE,
            strategy="rolling", dry_run=False, reason="legacy", requested_by="U0ALICE01", requested_name="alice",
            channel="C0STAGING1", plan=plan,
            plan_hash=plan_hash(plan), approvals_required=0, state=state, version_no=1, created_at=now,
            correlation_id="c-legacy", outcome="deployed" if finished else None, started_at=now if finished else None,
            finished_at=now if finished else None))
        for s in plan["steps"]:
            conn.execute(steps.insert().values(run_id=run_id, idx=s["idx"], phase="deploy", kind=s["kind"],
                                               name=s["name"], status="done" if finished else "pending", attempts=0,
                                               data={}))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/old.db"
    from tests.conftest import _fresh_postgres

    return _fresh_postgres(request.getfixturevalue("postgres_url"))


def test_runs_made_under_0002_render_and_resume_after_the_upgrade(database_url: str, tmp_path: Path) -> None:
    def no_checklist(data: dict[str, Any]) -> None:  # nobody can tick: the legacy run's message was never posted
        data["environments"]["staging"]["procedure"] = data["environments"]["staging"]["procedure"][1:]

    config_file = write_config(tmp_path, no_checklist)
    db = Database(database_url)
    db.upgrade("0002")
    plan = legacy_plan(config_file)
    insert_0002_run(db, "r-0000aaaa", plan, "succeeded")
    insert_0002_run(db, "r-0000bbbb", plan, "queued")
    db.upgrade()
    with db.read() as session:
        done = session.get(Run, "r-0000aaaa")
        assert done is not None and done.kind == "deploy" and done.state == "succeeded"
        assert done.subject == {"v": 1, "version": "v2.3", "image": NEW_IMAGE, "previous_image": OLD_IMAGE,
                                "strategy": "rolling"}
        steps = list(session.execute(sa.select(RunStep).where(RunStep.run_id == "r-0000aaaa")).scalars())
        assert {s.phase for s in steps} == {Phase.main.value} and len(steps) == len(plan["steps"])
        workflow = DeployWorkflow(load_config(config_file), lambda _env: None)  # type: ignore[arg-type,return-value]
        text = str(workflow.render(done, steps, []).blocks)
        assert "Deploy v2.3 → staging" in text and "Roll out" in text and OLD_IMAGE in text
    db.engine.dispose()
    with FakeSlack(users=dict(NAMES)) as fake:  # the queued legacy run is picked up and finishes
        d = start_deploy_bot(fake, database_url, config_file)
        try:
            # (its message was never posted in this synthetic database, so do not wait for the outbox to settle)
            wait_until(lambda: d.run("r-0000bbbb").state in FINISHED, 40, "the legacy run to finish")
            run = d.run("r-0000bbbb")
            assert run.state == "succeeded", run.outcome
            assert d.live_image("staging") == NEW_IMAGE
            starts = [r["args"]["step"] for r in d.audit("deploy.step.start", "r-0000bbbb")]
            assert len(starts) == len(set(starts)) == len(plan["steps"])
        finally:
            d.stop()
