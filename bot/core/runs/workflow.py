"""The `Workflow` protocol: what a kind of run brings to the engine, and the registry of them.

A workflow is a linear list of steps plus a compensation plan (not a DAG): the engine runs the main
steps in order; when one fails (or the run is aborted) it asks the workflow for the rollback steps
that undo what was done, and runs those. Everything kind-specific lives behind this protocol: step
handlers, the compensation plan, retry policies, the live message, the final summary, the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from bot.core.model import Reply
from bot.core.runs.spec import RetryPolicy, StepSpec
from bot.core.runs.states import Phase, RunState
from bot.errors import NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bot.core.runs.context import StepContext
    from bot.core.runs.effects import Change
    from bot.persistence.models import Approval, Run, RunStep

Handler = Callable[["StepContext"], str | None]

#: transient faults during main steps: a few quick retries within the step's deadline
MAIN_RETRY = RetryPolicy(initial_seconds=0.5, backoff=2.0, max_seconds=5.0, jitter=0.2)
#: a rollback is retried until it succeeds or its own (long) deadline passes
ROLLBACK_RETRY = RetryPolicy(initial_seconds=1.0, backoff=2.0, max_seconds=30.0, jitter=0.2)


class Workflow(Protocol):
    kind: str  # stored in runs.kind: "deploy", "stop_trading", ...
    audit_prefix: str  # audit actions are "<prefix>.step.start", "<prefix>.succeeded", ...
    handlers: Mapping[str, Handler]  # step kind -> handler, for main and rollback steps
    compensates: bool  # False: a failed main step ends the run failed (nothing to undo, e.g. a stop)
    takes_lock: bool  # the run holds the environment's lock (and keeps it when it fails)

    def plan_of(self, run: Run) -> Any:
        """The run's typed plan, read from its stored JSON (what handlers see as `ctx.plan`)."""
        ...

    def main_spec(self, run: Run, idx: int) -> StepSpec:
        """The spec of main step `idx`, read from the run's stored plan."""
        ...

    def compensation(self, run: Run, steps: Sequence[RunStep]) -> list[StepSpec]:
        """Rollback steps that undo what the recorded steps did (empty: nothing to undo)."""
        ...

    def undo_refused(self, run: Run, steps: Sequence[RunStep]) -> str | None:
        """Why this run must not be undone now that a main step failed or it was aborted (None: compensate as
        usual). The run then ends failed, holding its lock, and a person continues it forward."""
        ...

    def retry_policy(self, run: Run, spec: StepSpec, phase: Phase) -> RetryPolicy: ...

    def rollback_deadline(self, run: Run) -> float:
        """Seconds a rollback step may keep retrying before the run needs a person."""
        ...

    def title(self, run: Run) -> str:
        """"Deploy v2.3 → production", "Stop trading in production"."""
        ...

    def render(self, run: Run, steps: Sequence[RunStep], approvals: Sequence[Approval]) -> Reply:
        """The run's live message."""
        ...

    def success_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        """The final summary of a run that did everything (`left`: what it changed, per its effects)."""
        ...

    def rolled_back_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        """The final summary after the compensation ran (`left`: what is still changed, normally nothing)."""
        ...

    def inspect(self, run: Run) -> list[str]:
        """A live look at what the run's backends show now (best effort; each part may be "unknown: why"),
        for a run that needs a person."""
        ...

    def final_alert(self, run: Run, state: RunState) -> str | None:
        """What the incident channel hears when the run succeeded (None: nothing)."""
        ...

    def finished(self, session: Session, run: Run, state: RunState, left: Sequence[Change]) -> None:
        """Kind-specific bookkeeping in the finishing transaction (restore a freeze, record a halt, ...)."""
        ...


class Registry:
    def __init__(self) -> None:
        self._by_kind: dict[str, Workflow] = {}

    def add(self, workflow: Workflow) -> Workflow:
        if workflow.kind in self._by_kind:
            raise ValueError(f"workflow kind {workflow.kind!r} registered twice")
        self._by_kind[workflow.kind] = workflow
        return workflow

    def get(self, kind: str) -> Workflow:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise NotFound(f"no workflow of kind {kind!r}") from None

    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind


def spec_of_row(data: Mapping[str, Any] | None) -> StepSpec:
    """A rollback step keeps its spec in its own data (the compensation plan is made when it starts)."""
    raw = (data or {}).get("spec") or {}
    return StepSpec.from_json(raw)
