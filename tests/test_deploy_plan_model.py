"""The typed deploy plan: `DeployPlan` round-trips through its JSON, and plans stored by older versions of
the bot — version 1 as the previous code wrote it, and the unversioned 0002-era shape that migration 0003
moved into `runs` — still load, with the same hash where nothing changed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, load_config
from bot.core.runs.spec import OnResume
from bot.core.workflows.deploy.model import CanaryPlan, DeployPlan, LiftedFreeze
from bot.core.workflows.deploy.plan import build_plan, plan_hash

REPO = Path(__file__).resolve().parents[1]
#: a canary plan exactly as the code before `DeployPlan` stored it in `runs.plan` (version 1)
STORED_V1: dict[str, Any] = json.loads((REPO / "tests/data/deploy_plan_v1_canary.json").read_text())
OLD = "registry.example.com/trading-bot-swarm:v2.2.0"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "chatops.example.yml")


def legacy(plan: dict[str, Any]) -> dict[str, Any]:
    """The 0002-era shape: no versions, step fields flat, and the fields added since then missing."""
    old = copy.deepcopy(plan)
    old.pop("v")
    old.pop("rollout_timeout")
    old["canary"].pop("error_limit")
    old["steps"] = [{"idx": s["idx"], "kind": s["kind"], "name": s["name"], "timeout": s["timeout"],
                     "estimate": s["estimate"], "on_resume": s["on_resume"], **s["params"]} for s in old["steps"]]
    return old


@pytest.mark.parametrize("strategy", ["rolling", "canary", "blue-green"])
def test_a_built_plan_round_trips_through_its_json(config: Config, strategy: str) -> None:
    """build_plan → to_json → (through a JSON text, as the database does) → from_json gives the same plan."""
    plan = build_plan(env_name="production", env=config.environments["production"], version="v2.3",
                      strategy=strategy, current_image=OLD, checks=[], reason="r", requested_by="U0ALICE01")  # type: ignore[arg-type]
    stored = json.loads(json.dumps(plan.to_json()))
    assert stored["v"] == DeployPlan.VERSION
    assert DeployPlan.from_json(stored) == plan
    assert (plan.canary is not None) == (strategy == "canary")
    assert (plan.blue_green is not None) == (strategy == "blue-green")


def test_a_version_1_plan_stored_by_the_previous_code_loads_unchanged() -> None:
    """The stored version-1 JSON loads into typed parts, and writing it back gives the same JSON (so its
    plan hash, to which approvals are bound, does not change)."""
    plan = DeployPlan.from_json(STORED_V1)
    assert plan.strategy == "canary" and plan.target.deployment == "trading-bot-swarm"
    assert plan.canary == CanaryPlan(steps=(10, 25, 50, 75, 100), interval_seconds=5.0)
    assert [s.kind for s in plan.steps][:2] == ["checklist", "precheck"]
    assert plan.step("checklist") is not None and plan.step("checklist").get("role") == "deployer"  # type: ignore[union-attr]
    assert plan.checks[0].name == "error_rate" and plan.checks[0].op == ">"
    assert plan.to_json() == STORED_V1
    assert plan_hash(plan) == plan_hash(STORED_V1)


def test_the_unversioned_0002_shape_loads_with_the_defaults_of_its_time() -> None:
    """No version, flat step dicts, no rollout timeout and no canary error limit: loads, with the defaults."""
    plan = DeployPlan.from_json(legacy(STORED_V1))
    assert plan.rollout_timeout == 600.0 and plan.canary is not None and plan.canary.error_limit == 4
    assert [s.kind for s in plan.steps] == [s["kind"] for s in STORED_V1["steps"]]
    rollout = plan.step("rollout")
    assert rollout is not None and rollout.get("strategy") == "canary" and rollout.on_resume == OnResume.proceed
    assert plan.eta_seconds == STORED_V1["eta_seconds"]


def test_a_forced_plan_keeps_the_freeze_it_lifted() -> None:
    """The lifted freeze (restored when the run ends) survives the round trip."""
    stored = {**STORED_V1, "lifted_freeze": {"held_by": "U0BOB0002", "held_by_name": "bob", "reason": "close",
                                             "expires_at": "2026-12-04T10:00:00+00:00"}}
    plan = DeployPlan.from_json(stored)
    assert plan.lifted_freeze == LiftedFreeze("U0BOB0002", "bob", "close", "2026-12-04T10:00:00+00:00")
    assert plan.to_json() == stored


@pytest.mark.parametrize("change", [{"v": 2}, {"strategy": "big-bang"}, {"canary": {"router": "linkerd"}}])
def test_a_plan_this_code_cannot_read_is_refused_clearly(change: dict[str, Any]) -> None:
    """A newer version, an unknown strategy or router: a ValueError naming it, not a half-read plan."""
    with pytest.raises(ValueError, match="version|strategy|router"):
        DeployPlan.from_json({**STORED_V1, **change})
