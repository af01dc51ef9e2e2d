"""The deploy workflow as the runs engine sees it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from bot.config import Config
from bot.core import locks
from bot.core.model import Reply
from bot.core.ports import EnvBackends
from bot.core.runs.effects import Change
from bot.core.runs.spec import RetryPolicy, StepSpec
from bot.core.runs.states import Phase, RunState
from bot.core.runs.store import RunStore
from bot.core.runs.workflow import MAIN_RETRY, ROLLBACK_RETRY, Handler
from bot.core.workflows.deploy import steps as deploy_steps
from bot.core.workflows.deploy.gate import Signal
from bot.core.workflows.deploy.messages import render_run
from bot.core.workflows.deploy.plan import DeployPlan, plan_of, subject_of
from bot.core.workflows.deploy.strategies import strategy_of
from bot.errors import ChatOpsError
from bot.persistence.models import Approval, Run, RunStep
from bot.timeutil import utcnow

KIND = "deploy"
DEFAULT_ROLLBACK_DEADLINE = 1800.0


class DeployWorkflow:
    kind = KIND
    audit_prefix = "deploy"
    compensates = True
    takes_lock = True

    def __init__(self, config: Config, backends: Callable[[str], EnvBackends]) -> None:
        self.config = config
        self.backends = backends
        self.store: RunStore | None = None  # set by the composition root (messages to the freezer)
        self.handlers: Mapping[str, Handler] = {**deploy_steps.HANDLERS, **deploy_steps.ROLLBACK_HANDLERS}
        #: external reasons to fail a running analysis at once, asked every interval by every analysis gate
        #: (canary steps, monitoring window, blue-green watch): `(ctx) -> reason | None` (see `gate`)
        self.analysis_signals: list[Signal] = []

    def plan_of(self, run: Run) -> DeployPlan:
        return plan_of(run)

    def main_spec(self, run: Run, idx: int) -> StepSpec:
        return plan_of(run).steps[idx]

    def compensation(self, run: Run, steps: Sequence[RunStep]) -> list[StepSpec]:
        return deploy_steps.rollback_plan(run, list(steps))

    def retry_policy(self, run: Run, spec: StepSpec, phase: Phase) -> RetryPolicy:
        return ROLLBACK_RETRY if phase == Phase.rollback else MAIN_RETRY

    def rollback_deadline(self, run: Run) -> float:
        env = self.config.environments.get(run.environment)
        return float(getattr(env, "rollback_deadline_seconds", DEFAULT_ROLLBACK_DEADLINE))

    def title(self, run: Run) -> str:
        return f"Deploy {subject_of(run).version} → {run.environment}"

    def render(self, run: Run, steps: Sequence[RunStep], approvals: Sequence[Approval]) -> Reply:
        return render_run(run, list(steps), list(approvals))

    def success_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        extra = [c.describe() for c in left if not c.key.startswith(("image:", "replicas:"))]
        return "deployed" + (f"; still changed: {'; '.join(extra)}" if extra else "")

    def rolled_back_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        rollback = [s for s in steps if s.phase == Phase.rollback.value]
        if not rollback:
            text = "stopped before anything in the cluster changed"
        else:
            text = f"rolled back to `{subject_of(run).previous_image}`"
        return text + (f"; still changed: {'; '.join(c.describe() for c in left)}" if left else "")

    def inspect(self, run: Run) -> list[str]:
        """What Kubernetes and the trading API show now, part by part (each may be unknown)."""
        out: list[str] = []
        try:
            backends = (self.store.backends if self.store is not None else self.backends)(run.environment)
        except Exception as exc:  # noqa: BLE001 - a report, never a crash
            return [f"backends unknown: {exc}"]
        plan = plan_of(run)
        t = plan.target
        cluster = backends.cluster

        def part(label: str, read: Callable[[], str]) -> None:
            try:
                out.append(f"{label}: {read()}")
            except ChatOpsError as exc:
                out.append(f"{label}: unknown ({exc.message})")
            except Exception as exc:  # noqa: BLE001
                out.append(f"{label}: unknown ({type(exc).__name__})")

        part(f"{t.deployment} image", lambda: f"`{cluster.current_image(t.ref)}`")
        part(f"{t.deployment} replicas", lambda: str(cluster.replicas(t.namespace, t.deployment)))
        for label, read in strategy_of(plan).inspect(plan, cluster):
            part(label, read)

        def trading() -> str:
            st = backends.trading.status()
            return (f"{'trading' if st.trading else 'halted'} ({st.active_bots}/{st.total_bots} bots), "
                    f"maintenance {'on' if st.maintenance else 'off'}")
        part("trading", trading)
        return out

    def final_alert(self, run: Run, state: RunState) -> str | None:
        return None

    def finished(self, session: Session, run: Run, state: RunState, left: Sequence[Change]) -> None:
        """A forced deploy lifted a freeze: put the freeze back (if it has not expired) and tell its holder."""
        lifted = plan_of(run).lifted_freeze
        if lifted is None or state in (RunState.dry_run,) or self.store is None:
            return
        until = datetime.fromisoformat(lifted.expires_at) if lifted.expires_at else None
        who = lifted.held_by or "?"
        if state == RunState.failed:
            note = (f"<@{who}>: your freeze of {run.environment} was lifted by run `{run.id}` (forced), which failed; "
                    "the environment stays locked by that run.")
        elif until is None or until <= utcnow():
            note = (f"<@{who}>: your freeze of {run.environment} was lifted by run `{run.id}` (forced) and has "
                    "expired meanwhile; it was not restored.")
        else:
            locks.acquire(session, run.environment, kind="freeze", run_id=None, held_by=who,
                          held_by_name=lifted.held_by_name, reason=lifted.reason,
                          ttl=max(timedelta(seconds=1), until - utcnow()))
            note = (f"<@{who}>: your freeze of {run.environment} was lifted for forced run `{run.id}` and is "
                    f"restored now (until {until.strftime('%H:%M UTC')}).")
        self.store.thread(session, run, f":lock: {note}")
        self.store.audit(session, run, None, "lock.freeze_restored" if "restored now" in note else "lock.freeze_lifted",
                         "ok", freezer=who)


#: runbook 8.3, posted with a finished rollback
POST_ROLLBACK_CHECKLIST = (
    "Verify all services are healthy",
    "Check trading positions are correct",
    "Confirm no data loss",
    "Notify stakeholders of the rollback",
    "Schedule a post-mortem",
    "Document the root cause",
    "Create tickets to fix the issue",
)
RUNBOOK_ROLLBACK_TARGET_SECONDS = 900.0  # runbook 9.2 / 8.2: a rollback within 15 minutes


class RollbackWorkflow(DeployWorkflow):
    """`/rollback`: runbook 8.2 as a durable run — the deploy machinery pointed at the previous version."""

    kind = "rollback"
    audit_prefix = "rollback"

    def title(self, run: Run) -> str:
        return f"Rollback of {run.environment} to {subject_of(run).version}"

    def _took(self, run: Run) -> float | None:
        from bot.timeutil import aware

        start, end = aware(run.started_at), aware(run.finished_at) or utcnow()
        return (end - start).total_seconds() if start else None

    def render(self, run: Run, steps: Sequence[RunStep], approvals: Sequence[Approval]) -> Reply:
        subj = subject_of(run)
        took = self._took(run)
        footer = None
        if took is not None:
            verdict = "within" if took <= RUNBOOK_ROLLBACK_TARGET_SECONDS else "OVER"
            footer = (f"*Rollback took {took:.0f}s* — {verdict} the runbook's 15-minute target.\n"
                      "*After the rollback (runbook 8.3):*\n" + "\n".join(f"☐ {item}" for item in
                                                                          POST_ROLLBACK_CHECKLIST))
        return render_run(run, list(steps), list(approvals),
                          title=f"⏪ Rollback {run.environment}: {subj.previous_image} → {subj.version}",
                          footer=footer)

    def success_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        extra = [c.describe() for c in left if not c.key.startswith(("image:", "replicas:"))]
        took = self._took(run)
        timing = (f" in {took:.0f}s ({'within' if took <= RUNBOOK_ROLLBACK_TARGET_SECONDS else 'over'} the "
                  "15-minute target)") if took is not None else ""
        return f"rolled back to {subject_of(run).version}{timing}" + (
            f"; still changed: {'; '.join(extra)}" if extra else "")

    def final_alert(self, run: Run, state: RunState) -> str | None:
        return f"⏪ {self.title(run)}: {run.outcome}. Post-rollback checklist (runbook 8.3) is in the run's message."
