"""The rollback plan undoes only what the run did and did not undo itself (runbook 8.2, one run at a time)."""

from __future__ import annotations

from typing import Any

from bot.core.workflows.deploy.steps import rollback_plan
from bot.persistence.models import Run, RunStep

KINDS = ["precheck", "trading_stop", "maintenance_on", "rollout", "health", "maintenance_off", "trading_resume",
         "monitor"]


def run_with(statuses: dict[str, str]) -> tuple[Run, list[RunStep]]:
    plan: dict[str, Any] = {"steps": [{"kind": k, "name": k, "probes": []} for k in KINDS],
                            "rollout_timeout": 60, "strategy": "rolling"}
    plan.update(previous_image="img:v1", environment="production", version="v2", image="img:v2",
                target={"namespace": "ns", "deployment": "app", "container": "app"})
    run = Run(id="r-1", kind="deploy", plan=plan,
              subject={"v": 1, "version": "v2", "image": "img:v2", "previous_image": "img:v1", "strategy": "rolling"})
    steps = [RunStep(run_id="r-1", idx=i, phase="main", kind=k, name=k, status=statuses.get(k, "pending"),
                     data={}) for i, k in enumerate(KINDS)]
    return run, steps


def kinds(statuses: dict[str, str]) -> list[str]:
    run, steps = run_with(statuses)
    return [s.kind for s in rollback_plan(run, steps)]


def test_failure_after_trading_fully_resumed_leaves_trading_alone() -> None:
    """A monitoring-window failure after trading was resumed restores the image but does not cut trading."""
    done = {k: "done" for k in KINDS[:-1]} | {"monitor": "failed"}
    assert kinds(done) == ["restore", "rb_health"]


def test_failure_while_trading_is_stopped_resumes_it_after_the_restore() -> None:
    """A failed rollout while trading is stopped: restore, verify, maintenance off, then resume gradually."""
    statuses = {"precheck": "done", "trading_stop": "done", "maintenance_on": "done", "rollout": "failed"}
    assert kinds(statuses) == ["restore", "rb_health", "rb_maintenance_off", "rb_trading_resume"]


def test_nothing_touched_means_nothing_to_roll_back() -> None:
    """A run stopped at its pre-checks has no rollback steps."""
    assert kinds({"precheck": "failed"}) == []
