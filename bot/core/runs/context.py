"""What a step handler sees (`StepContext`) and the exceptions that steer the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from bot.core.ports import EnvBackends
from bot.core.runs.effects import EFFECTS_KEY, Effect
from bot.core.runs.spec import StepSpec
from bot.core.runs.states import Phase
from bot.persistence.models import Run, RunStep

if TYPE_CHECKING:
    from bot.core.runs.engine import Executor
    from bot.core.runs.workflow import Workflow


class StepFailed(Exception):
    """A step could not do its job; the run rolls back (or, in rollback, fails for a person)."""


class Skipped(Exception):
    """The step does not apply; its reason is shown."""


class Aborted(Exception):
    pass


class LeaseLost(Exception):
    """Another process owns the run now (we were too slow to renew)."""


class Stopping(Exception):
    """This process is shutting down; the run stays where it is for the next owner."""


def describe_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes}m{sec:02d}s" if sec else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class StepContext:
    """The run's facts, its backends, and durable progress in `data`."""

    executor: Executor
    workflow: Workflow
    run_id: str
    environment: str
    plan: Any  # the workflow's typed plan
    spec: StepSpec
    backends: EnvBackends
    data: dict[str, Any]
    phase: Phase
    idx: int
    deadline: float  # time.monotonic() after which the step has failed
    resumed: bool
    abortable: bool = True
    _last_check: float = field(default=0.0)

    def save(self, **changes: Any) -> None:
        """Persist progress (weight, tracker state, ...) and refresh the live message."""
        self.data.update(changes)
        store = self.executor.store
        with self.executor.db.transaction() as session:
            step = session.get(RunStep, (self.run_id, self.idx, self.phase.value))
            assert step is not None
            step.data = dict(self.data)
            store.refresh_message(session, store.load(session, self.run_id))

    def effect(self, key: str, label: str, before: Any, after: Any) -> None:
        """Record, durably, that this step changed `key` from `before` to `after` (right after it did)."""
        effects = list(self.data.get(EFFECTS_KEY) or [])
        effects.append(Effect(key, label, before, after).to_json())
        self.save(**{EFFECTS_KEY: effects})

    def note(self, text: str) -> None:
        """A reply in the run's thread."""
        store = self.executor.store
        with self.executor.db.transaction() as session:
            store.thread(session, store.load(session, self.run_id, for_update=False), text)

    def audit(self, action: str, outcome: str, **args: Any) -> None:
        store = self.executor.store
        with self.executor.db.transaction() as session:
            run = store.load(session, self.run_id, for_update=False)
            store.audit(session, run, None, action, outcome, step=self.spec.name, **args)

    def check(self) -> None:
        """Raise if the run was aborted, the lease lost, the process stopping or the step out of time."""
        if self.executor.stopping.is_set():
            raise Stopping()
        now = time.monotonic()
        if now - self._last_check >= 0.5:
            self._last_check = now
            self.executor.renew(self.run_id)
            if self.abortable:
                with self.executor.db.read() as session:
                    who = session.execute(select(Run.abort_requested_by).where(Run.id == self.run_id)).scalar_one()
                if who:
                    raise Aborted(f"aborted by <@{who}>")
        if now > self.deadline:
            raise StepFailed(f"timed out after {describe_duration(self.spec.timeout)}")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.executor.kick.wait(min(0.25, left))

    def fresh_data(self) -> dict[str, Any]:
        """Re-read this step's data (e.g. a checklist tick written by a button)."""
        with self.executor.db.read() as session:
            step = session.get(RunStep, (self.run_id, self.idx, self.phase.value))
            return dict(step.data or {}) if step else {}
