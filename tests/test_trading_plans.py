"""The typed plans of /stop-trading and /resume-trading: their JSON round-trips, a plan stored by the
earlier dict-building code loads unchanged (same hash), and unknown versions or values are refused."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.runs.spec import StepSpec
from bot.core.workflows.deploy.plan import plan_hash
from bot.core.workflows.trading.plans import ResumePlan, StopPlan, TradingTarget

TARGET = {"namespace": "trading-prod", "deployment": "trading-bot-swarm", "container": "trading-bot-swarm"}
STEP = StepSpec(0, "api_stop", "Stop trading (graceful) through the trading API", timeout=10.0, estimate=1.0)


def stored_stop() -> dict[str, Any]:
    """A stop plan exactly as the earlier code wrote it into runs.plan."""
    return {"v": 1, "mode": "emergency", "reason": "bad fills", "requested_by": "U0ERIN005", "verify_seconds": 30.0,
            "target": dict(TARGET), "deployments": ["trading-bot-swarm", "trading-bot-signals"],
            "steps": [STEP.to_json()]}


def stored_resume() -> dict[str, Any]:
    return {"v": 1, "gradual": True, "fractions": [0.1, 0.25, 0.5, 1.0], "window_seconds": 900.0,
            "interval_seconds": 30.0, "reason": None, "requested_by": "U0ERIN005",
            "restore": {"trading-bot-swarm": 4}, "target": dict(TARGET), "deployments": ["trading-bot-swarm"],
            "mode": "graceful", "checks": [{"name": "error_rate", "query": "q", "op": "<", "threshold": 0.05}],
            "steps": [StepSpec(1, "stages", "Resume trading", timeout=4200.0).to_json()]}


def test_a_stored_stop_plan_loads_and_writes_back_the_same() -> None:
    """Old rows load into StopPlan and write back identical, so nothing bound to their hash changes."""
    plan = StopPlan.from_json(stored_stop())
    assert plan.mode == "emergency" and plan.target == TradingTarget(**TARGET)
    assert plan.deployments == ("trading-bot-swarm", "trading-bot-signals") and plan.steps[0].kind == "api_stop"
    assert plan.to_json() == stored_stop() and plan_hash(plan.to_json()) == plan_hash(stored_stop())


def test_a_stored_resume_plan_loads_and_writes_back_the_same() -> None:
    """A resume plan's approval hash is over its JSON: a typed round trip must not change it."""
    plan = ResumePlan.from_json(stored_resume())
    assert plan.gradual and plan.fractions == (0.1, 0.25, 0.5, 1.0) and dict(plan.restore) == {"trading-bot-swarm": 4}
    assert plan.to_json() == stored_resume() and plan_hash(plan.to_json()) == plan_hash(stored_resume())


@pytest.mark.parametrize("change", [{"v": 2}, {"v": None}, {"mode": "gentle"}])
def test_unknown_stop_plans_are_refused(change: dict[str, Any]) -> None:
    """A version this bot does not know, or a mode it cannot carry out, is an error, never a guess."""
    with pytest.raises(ValueError):
        StopPlan.from_json({**stored_stop(), **change})


@pytest.mark.parametrize("change", [{"v": 2}, {"fractions": []}, {"fractions": [0.5, 1.5]}])
def test_unknown_resume_plans_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResumePlan.from_json({**stored_resume(), **change})
