"""What `/stop-trading` and `/resume-trading` share as workflows: a typed plan (`plans.py`) read from the
run row, their steps come from it, and their live message is one layout —
a header, facts, the reason, the steps, what was undone, the result with how long it took."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bot import blocks
from bot.config import Config
from bot.core.model import Reply
from bot.core.ports import EnvBackends
from bot.core.runs.context import describe_duration
from bot.core.runs.spec import RetryPolicy, StepSpec
from bot.core.runs.states import Phase, RunState
from bot.core.runs.workflow import MAIN_RETRY, ROLLBACK_RETRY, Handler
from bot.core.workflows.deploy.messages import STATE_TEXT, step_line
from bot.persistence.models import Run, RunStep
from bot.timeutil import aware


class TradingWorkflow(ABC):
    """Base of the trading workflows. Subclasses set `kind`, `audit_prefix`, `icon`, `handlers`,
    `compensates`, `deadline_seconds` and write `title` and their outcomes."""

    kind = ""
    audit_prefix = ""
    icon = ""
    compensates = False
    takes_lock = False  # a safety action never waits for an environment lock
    deadline_seconds = 60.0  # how long compensation steps keep being retried
    handler_table: Mapping[str, Handler] = {}

    def __init__(self, config: Config, backends: Callable[[str], EnvBackends]) -> None:
        self.config = config
        self.backends = backends
        self.handlers: Mapping[str, Handler] = self.handler_table

    # -- the plan: typed, read from the run row's versioned JSON --------------------------------------
    @abstractmethod
    def plan_of(self, run: Run) -> Any:
        """The run's typed plan (`plans.StopPlan`, `plans.ResumePlan`), read from its stored JSON."""

    def main_spec(self, run: Run, idx: int) -> StepSpec:
        spec: StepSpec = self.plan_of(run).steps[idx]
        return spec

    def undo_refused(self, run: Run, steps: Sequence[RunStep]) -> str | None:
        return None

    def retry_policy(self, run: Run, spec: StepSpec, phase: Phase) -> RetryPolicy:
        return ROLLBACK_RETRY if phase == Phase.rollback else MAIN_RETRY

    def rollback_deadline(self, run: Run) -> float:
        return self.deadline_seconds

    @abstractmethod
    def title(self, run: Run) -> str:
        """"Stop trading in production", "Resume trading in staging (gradual)"."""

    def final_alert(self, run: Run, state: RunState) -> str | None:
        return f"{self.icon} {self.title(run)}: {run.outcome}"

    # -- the live message ---------------------------------------------------------------------------
    def message(self, run: Run, steps: Sequence[RunStep], facts: list[tuple[str, str]], *,
                undo_title: str = "Undoing", why_undone: str = "Why it was undone",
                buttons: Sequence[blocks.Block] = (), footer: str = "") -> Reply:
        """The one layout of a trading run's message; `facts` come after who asked and the state."""
        state = RunState(run.state)
        title = self.title(run)
        head = [("Requested by", f"<@{run.requested_by}>"), ("State", STATE_TEXT[state])]
        body: list[blocks.Block] = [blocks.header(f"{self.icon} {title}"), blocks.fields(head + facts)]
        if run.reason:
            body.append(blocks.context(f"Reason: {blocks.user_text(run.reason)}"))
        body.append(blocks.section("*Steps*\n" + "\n".join(step_line(s) for s in steps
                                                          if s.phase == Phase.main.value)))
        undo = [s for s in steps if s.phase == Phase.rollback.value]
        if undo:
            body.append(blocks.section(f"*{undo_title}*\n" + "\n".join(step_line(s) for s in undo)))
        if run.rollback_reason:
            body.append(blocks.section(f"*{why_undone}:* {run.rollback_reason}"))
        if run.outcome:
            start, end = aware(run.started_at), aware(run.finished_at)
            took = f" (took {describe_duration((end - start).total_seconds())})" if start and end else ""
            body.append(blocks.section(f"*Result:* {run.outcome}{took}"))
        if buttons:
            body.append(blocks.actions(*buttons, block_id=f"run:{run.id}"))
        body.append(blocks.context(f"run `{run.id}`" + (f" · {footer}" if footer else "")))
        return Reply(f"{title}: {STATE_TEXT[state]}", blocks.message(*body), ephemeral=False)
