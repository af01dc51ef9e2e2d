"""Run states and the only transitions allowed between them (an illegal move raises InvalidTransition)."""

from __future__ import annotations

from enum import StrEnum

from bot.errors import InvalidTransition


class RunState(StrEnum):
    dry_run = "dry_run"  # plan only, never executes
    pending_approval = "pending_approval"
    queued = "queued"  # approved, waiting for an executor to take it
    running = "running"
    rolling_back = "rolling_back"
    succeeded = "succeeded"
    rolled_back = "rolled_back"
    failed = "failed"  # could not finish and could not roll back: a person must look
    aborted = "aborted"  # stopped before anything changed
    expired = "expired"  # approvals did not arrive in time


TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.dry_run: frozenset(),
    RunState.pending_approval: frozenset({RunState.queued, RunState.aborted, RunState.expired}),
    RunState.queued: frozenset({RunState.running, RunState.aborted}),
    RunState.running: frozenset({RunState.succeeded, RunState.rolling_back, RunState.failed}),
    RunState.rolling_back: frozenset({RunState.rolled_back, RunState.failed}),
    RunState.succeeded: frozenset(),
    RunState.rolled_back: frozenset(),
    RunState.failed: frozenset(),
    RunState.aborted: frozenset(),
    RunState.expired: frozenset(),
}

ACTIVE = frozenset({RunState.pending_approval, RunState.queued, RunState.running, RunState.rolling_back})
EXECUTING = frozenset({RunState.queued, RunState.running, RunState.rolling_back})
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(current: str, requested: RunState) -> None:
    try:
        state = RunState(current)
    except ValueError:
        raise InvalidTransition("deploy run", current, requested.value) from None
    if requested not in TRANSITIONS[state]:
        raise InvalidTransition("deploy run", state.value, requested.value)
