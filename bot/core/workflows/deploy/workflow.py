"""The deploy workflow as the runs engine sees it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from bot.config import Config, Role
from bot.core import checklists, locks
from bot.core.model import Reply
from bot.core.ports import EnvBackends
from bot.core.runs.effects import Change, from_steps, left_changed
from bot.core.runs.spec import RetryPolicy, StepSpec
from bot.core.runs.states import Phase, RunState, StepStatus
from bot.core.runs.store import RunStore, run_key
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

    def undo_refused(self, run: Run, steps: Sequence[RunStep]) -> str | None:
        return None  # a failed deploy is always rolled back to where it started

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


#: runbook 8.3, posted as a tickable checklist (bot.core.checklists) in the thread of a finished rollback
POST_ROLLBACK_CHECKLIST = checklists.RUNBOOK_POST_ROLLBACK
#: effects that mean the application itself moved (a rollback past them is never reversed)
APPLICATION_KEYS = ("image:", "canary:", "selector:", "replicas:")
RUNBOOK_ROLLBACK_TARGET_SECONDS = 900.0  # runbook 9.2 / 8.2: a rollback within 15 minutes


class RollbackWorkflow(DeployWorkflow):
    """`/rollback`: runbook 8.2 as a durable run — the deploy machinery pointed at the previous version."""

    kind = "rollback"
    audit_prefix = "rollback"

    def __init__(self, config: Config, backends: Callable[[str], EnvBackends]) -> None:
        super().__init__(config, backends)
        from bot.core.workflows.deploy import db_rollback

        self.handlers = {**self.handlers, **db_rollback.HANDLERS}  # --with-db (runbook 8.2 step 3)

    def undo_refused(self, run: Run, steps: Sequence[RunStep]) -> str | None:
        """Once the application (or the database) is on its rollback target, undoing this rollback would
        redeploy the release it is rolling back from: the run stops where it is, holding the lock, and
        `/rollback` continues it forward from the failed step. Before that, an abort or a failure undoes
        what was done (trading, maintenance) as a deploy would."""
        from bot.core.workflows.deploy import db_rollback

        main = [s for s in steps if s.phase == Phase.main.value]
        moved = [c for c in left_changed(from_steps([s.data for s in main])) if c.key.startswith(APPLICATION_KEYS)]
        database = any(s.kind == db_rollback.KIND and s.status != StepStatus.pending.value for s in main)
        if not moved and not database:
            return None
        return ("nothing is undone: the application is already on its rollback target and undoing would redeploy "
                "the release being rolled back; trading and maintenance stay as they are. `/rollback --env "
                f"{run.environment}` retries from the failed step")

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
                      "*After the rollback (runbook 8.3):* the checklist to tick is in this message's thread.")
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

    def finished(self, session: Session, run: Run, state: RunState, left: Sequence[Change]) -> None:
        """Also post runbook 8.3's post-rollback checklist, tickable, in the thread of the run's message."""
        super().finished(session, run, state, left)
        if state == RunState.succeeded and self.store is not None:
            checklists.create(session, self.store.outbox, checklist_id=f"rollback:{run.id}",
                              title=f"After the rollback of {run.environment} (runbook 8.3)",
                              items=POST_ROLLBACK_CHECKLIST, environment=run.environment, channel=run.channel,
                              correlation_id=run.correlation_id, role=Role.deployer, thread_key=run_key(run.id))

    def final_alert(self, run: Run, state: RunState) -> str | None:
        return f"⏪ {self.title(run)}: {run.outcome}. Post-rollback checklist (runbook 8.3) is in the run's thread."
