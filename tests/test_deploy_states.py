"""The run state machine and the plan, without a bot: legal moves only, and a plan hash that pins the plan."""

from __future__ import annotations

import pytest

from bot.config import Config
from bot.core.runs.states import ACTIVE, TERMINAL, TRANSITIONS, RunState, check_transition
from bot.core.workflows.deploy.plan import DeployPlan, build_plan, plan_hash
from bot.errors import Conflict, InvalidTransition
from tests.test_deploy_support import OLD_IMAGE

LEGAL = [(a, b) for a, nexts in TRANSITIONS.items() for b in nexts]
ILLEGAL = [(a, b) for a in RunState for b in RunState if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("current", "requested"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transitions_pass(current: RunState, requested: RunState) -> None:
    """Every move in the table is allowed."""
    check_transition(current.value, requested)


@pytest.mark.parametrize(("current", "requested"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transitions_raise_invalid_transition(current: RunState, requested: RunState) -> None:
    """Every move not in the table raises InvalidTransition naming both states."""
    with pytest.raises(InvalidTransition, match=f"'{current.value}' to '{requested.value}'"):
        check_transition(current.value, requested)


def test_unknown_state_raises_invalid_transition() -> None:
    """A state the table does not know (a corrupted row) cannot move anywhere."""
    with pytest.raises(InvalidTransition):
        check_transition("half-done", RunState.running)


def test_invalid_transition_is_a_conflict_for_users() -> None:
    """InvalidTransition is a Conflict in the error tree: users get a conflict message, not a crash."""
    assert issubclass(InvalidTransition, Conflict)


def test_finished_runs_cannot_move() -> None:
    """Succeeded, rolled back, aborted, expired and dry runs are final and not active; a failed run can
    only go back to rolling back or running (a person continues it with /rollback: its rollback, or — for a
    rollback run past its image change, which is never reversed — its own steps)."""
    assert TERMINAL == {RunState.succeeded, RunState.rolled_back, RunState.aborted, RunState.expired,
                        RunState.dry_run}
    assert TRANSITIONS[RunState.failed] == {RunState.rolling_back, RunState.running}
    assert not TERMINAL & ACTIVE and RunState.failed not in ACTIVE


def test_nothing_runs_without_passing_through_approval_or_the_queue() -> None:
    """Only a queued run can start running (or a failed one, approved before, that a person continues), and
    only a pending or queued one can be aborted outright."""
    assert [s for s, n in TRANSITIONS.items() if RunState.running in n] == [RunState.queued, RunState.failed]
    assert {s for s, n in TRANSITIONS.items() if RunState.aborted in n} == {RunState.pending_approval,
                                                                            RunState.queued}


def plan_for(config: Config, **changes: str) -> DeployPlan:
    args = {"version": "v2.3", "strategy": "canary", "requested_by": "U0ALICE01", **changes}
    return build_plan(env_name="production", env=config.environments["production"], current_image=OLD_IMAGE,
                      checks=[], reason=None, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [{"version": "v2.4"}, {"strategy": "rolling"},
                                    {"requested_by": "U0ROOT006"}])
def test_plan_hash_changes_with_the_plan(example_config: Config, change: dict[str, str]) -> None:
    """A different version, strategy or requester gives a different plan hash (old approvals do not count)."""
    assert plan_hash(plan_for(example_config)) != plan_hash(plan_for(example_config, **change))


def test_plan_hash_is_stable(example_config: Config) -> None:
    """The same plan hashes the same, so a stored approval can be compared with it."""
    assert plan_hash(plan_for(example_config)) == plan_hash(plan_for(example_config))


def test_canary_plan_keeps_trading_running(example_config: Config) -> None:
    """The default procedure stops trading only for rolling and blue-green deploys, not for a canary."""
    kinds = [s.kind for s in plan_for(example_config).steps]
    rolling = [s.kind for s in plan_for(example_config, strategy="rolling").steps]
    assert "trading_stop" not in kinds and "trading_stop" in rolling and "trading_resume" in rolling
