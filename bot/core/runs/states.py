"""Run and step states, and the only transitions allowed between run states.

Every workflow's runs share these states; an illegal move raises `InvalidTransition`. Step status and
phase are enums too, so no module compares raw strings for them (the database stores their values).
"""

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
    # failed -> rolling_back: a person continues a rollback that could not finish (`/rollback`)
    RunState.rolling_back: frozenset({RunState.rolled_back, RunState.failed}),
    RunState.succeeded: frozenset(),
    RunState.rolled_back: frozenset(),
    # failed -> running: a person continues a run that must not be undone (a rollback past its image change)
    RunState.failed: frozenset({RunState.rolling_back, RunState.running}),
    RunState.aborted: frozenset(),
    RunState.expired: frozenset(),
}

ACTIVE = frozenset({RunState.pending_approval, RunState.queued, RunState.running, RunState.rolling_back})
EXECUTING = frozenset({RunState.queued, RunState.running, RunState.rolling_back})
FINISHED = frozenset({RunState.succeeded, RunState.rolled_back, RunState.failed, RunState.aborted,
                      RunState.expired})
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    skipped = "skipped"


OPEN_STEP = frozenset({StepStatus.pending, StepStatus.running})
TOUCHED_STEP = frozenset({StepStatus.running, StepStatus.done, StepStatus.failed})


class Phase(StrEnum):
    main = "main"  # the workflow's own steps
    rollback = "rollback"  # the compensation plan, built from what the main steps did


def check_transition(current: str, requested: RunState) -> None:
    try:
        state = RunState(current)
    except ValueError:
        raise InvalidTransition("run", current, requested.value) from None
    if requested not in TRANSITIONS[state]:
        raise InvalidTransition("run", state.value, requested.value)
