"""The durable runs engine: executes every workflow's runs step by step, resumes, retries, compensates.

Each process runs one `Executor`. It claims a runnable run with a lease (compare-and-set on
`lease_owner/lease_until`), so one replica executes it at a time; a replica that dies stops renewing
and another (or the restarted process) takes over. Each step records `running` before it acts and
`done`/`failed` before the next starts; a step found `running` on takeover is resumed (its handler is
idempotent and keeps its progress in `step.data`) or, where the plan says resuming is unsafe, failed
into a rollback. Every start, resume, retry, end and verdict is audited.

Faults: a handler that raises `BackendUnavailable` (connection error, timeout, 5xx, 429) is called
again after a capped, jittered backoff while its step's deadline allows (`RetryPolicy`); any other
error fails the step at once. A failed main step starts the workflow's compensation plan; rollback
steps retry transient faults until their own long deadline. A run whose rollback cannot finish ends
`failed` and keeps the environment locked, with an alert saying what is left behind, until a person
continues it (`continue_rollback`, behind `/rollback`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from bot.core import locks
from bot.core.model import Actor
from bot.core.runs.context import Aborted, LeaseLost, Skipped, StepContext, StepFailed, Stopping, describe_duration
from bot.core.runs.effects import Change, from_steps, left_changed
from bot.core.runs.spec import OnResume, StepSpec
from bot.core.runs.states import EXECUTING, OPEN_STEP, Phase, RunState, StepStatus
from bot.core.runs.store import RunStore
from bot.core.runs.workflow import Workflow, spec_of_row
from bot.errors import BackendUnavailable, ChatOpsError, Conflict
from bot.metrics import Metrics
from bot.persistence.db import Database
from bot.persistence.models import Run, RunStep
from bot.timeutil import aware, utcnow

log = logging.getLogger(__name__)
LEASE_SECONDS = 15.0
#: how long a lock stays held by a run whose rollback could not finish (until a person continues it)
HELD_FOR_A_PERSON = timedelta(days=30)
_EXECUTING = [s.value for s in EXECUTING]


def effects_of(steps: Sequence[RunStep]) -> list[Change]:
    return left_changed(from_steps([s.data for s in steps]))


class Executor:
    def __init__(self, db: Database, store: RunStore, *, worker_id: str | None = None,
                 poll_seconds: float = 1.0, lease_seconds: float = LEASE_SECONDS, metrics: Metrics | None = None,
                 max_engine_errors: int = 5) -> None:
        self.db = db
        self.store = store
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.max_engine_errors = max_engine_errors
        self._engine_errors: dict[str, int] = {}
        self.kick = store.wakeup
        self.stopping = threading.Event()
        self._runners: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._scanner: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._scanner = threading.Thread(target=self._scan_loop, name="chatops-runs-scan", daemon=True)
        self._scanner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking runs; running ones pause at their next check and hand their lease back."""
        self.stopping.set()
        self.kick.set()
        with self._lock:
            runners = list(self._runners.values())
        for thread in runners:
            thread.join(timeout)
        if self._scanner:
            self._scanner.join(timeout)

    def busy(self) -> bool:
        with self._lock:
            if any(t.is_alive() for t in self._runners.values()):
                return True
        with self.db.read() as session:
            return session.execute(select(Run.id).where(Run.state.in_(_EXECUTING)).limit(1)).first() is not None

    def _scan_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.scan()
            except Exception:
                log.exception("run scan failed; retrying")
            self.kick.wait(self.poll_seconds)
            self.kick.clear()

    def scan(self) -> None:
        self._expire_approvals()
        now = utcnow()
        with self.db.read() as session:
            candidates = session.execute(select(Run.id).where(
                Run.state.in_(_EXECUTING),
                or_(Run.lease_until.is_(None), Run.lease_until < now, Run.lease_owner == self.worker_id))
            ).scalars().all()
        for run_id in candidates:
            with self._lock:
                alive = run_id in self._runners and self._runners[run_id].is_alive()
            if alive or not self._claim(run_id):
                continue
            thread = threading.Thread(target=self._run_guarded, args=(run_id,), name=f"chatops-run-{run_id}",
                                      daemon=True)
            with self._lock:
                self._runners[run_id] = thread
            thread.start()

    def _claim(self, run_id: str) -> bool:
        now = utcnow()
        with self.db.transaction() as session:
            result = session.execute(update(Run).where(
                Run.id == run_id,
                or_(Run.lease_until.is_(None), Run.lease_until < now, Run.lease_owner == self.worker_id)
            ).values(lease_owner=self.worker_id, lease_until=now + timedelta(seconds=self.lease_seconds)))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def renew(self, run_id: str) -> None:
        now = utcnow()
        with self.db.transaction() as session:
            result = session.execute(update(Run).where(Run.id == run_id, Run.lease_owner == self.worker_id)
                                     .values(lease_until=now + timedelta(seconds=self.lease_seconds)))
            if not result.rowcount:  # type: ignore[attr-defined]
                raise LeaseLost(run_id)
            run = session.get(Run, run_id)
            if run is not None:
                locks.extend(session, run.environment, run_id,
                             timedelta(minutes=self.store.env(run.environment).lock_ttl_minutes))

    def _release_lease(self, run_id: str) -> None:
        with self.db.transaction() as session:
            session.execute(update(Run).where(Run.id == run_id, Run.lease_owner == self.worker_id)
                            .values(lease_owner=None, lease_until=None))

    def _expire_approvals(self) -> None:
        now = utcnow()
        with self.db.transaction() as session:
            stale = session.execute(select(Run).where(
                Run.state == RunState.pending_approval.value, Run.expires_at < now
            ).with_for_update()).scalars().all()
            for run in stale:
                workflow = self.store.workflow(run)
                self.store.transition(session, run, RunState.expired)
                run.finished_at = now
                run.outcome = "approvals did not arrive in time; nothing was changed"
                locks.release(session, run.environment, run_id=run.id)
                self.store.audit(session, run, None, f"{workflow.audit_prefix}.expired", "expired")
                workflow.finished(session, run, RunState.expired, [])
                self.store.refresh_message(session, run)

    # --- a person continues a rollback that could not finish ----------------------------------------
    def continue_rollback(self, session: Any, run: Run, actor: Actor) -> None:
        """`failed` -> `rolling_back`: the failed rollback steps (and the ones after them) run again."""
        if RunState(run.state) != RunState.failed:
            raise Conflict(f"run {run.id} is {run.state}; only a failed run's rollback can be continued")
        steps = self.store.steps(session, run.id)
        rollback = [s for s in steps if s.phase == Phase.rollback.value]
        workflow = self.store.workflow(run)
        if not rollback and workflow.compensates and workflow.undo_refused(run, steps):
            self._continue_forward(session, run, steps, actor)
            return
        if not rollback:
            raise Conflict(f"run {run.id} has no rollback to continue")
        for step in rollback:
            if step.status in (StepStatus.failed.value, StepStatus.skipped.value, StepStatus.running.value):
                step.status, step.finished_at = StepStatus.pending.value, None
        self.store.transition(session, run, RunState.rolling_back)
        run.finished_at = None
        run.lease_owner = run.lease_until = None
        locks.extend(session, run.environment, run.id,
                     timedelta(minutes=self.store.env(run.environment).lock_ttl_minutes))
        workflow = self.store.workflow(run)
        self.store.audit(session, run, actor, f"{workflow.audit_prefix}.rollback.continue", "rolling_back")
        self.store.thread(session, run, f":repeat: {actor.mention} continues the rollback.")
        self.store.refresh_message(session, run)
        self.store.wake_after_commit(session)

    def _continue_forward(self, session: Any, run: Run, steps: Sequence[RunStep], actor: Actor) -> None:
        """`failed` -> `running` for a run that must not be undone: its failed step and the ones after it
        run again (a rollback whose health check failed is retried, never reversed)."""
        for step in steps:
            if step.phase == Phase.main.value and step.status in (StepStatus.failed.value, StepStatus.skipped.value,
                                                                   StepStatus.running.value):
                step.status, step.finished_at = StepStatus.pending.value, None
        self.store.transition(session, run, RunState.running)
        run.finished_at = None
        run.outcome = None
        run.abort_requested_by = None
        run.lease_owner = run.lease_until = None
        locks.extend(session, run.environment, run.id,
                     timedelta(minutes=self.store.env(run.environment).lock_ttl_minutes))
        workflow = self.store.workflow(run)
        self.store.audit(session, run, actor, f"{workflow.audit_prefix}.continue", "running")
        self.store.thread(session, run, f":repeat: {actor.mention} continues the run from its failed step.")
        self.store.refresh_message(session, run)
        self.store.wake_after_commit(session)

    # --- running a run --------------------------------------------------------------------------------
    def _run_guarded(self, run_id: str) -> None:
        try:
            self._run(run_id)
        except (LeaseLost, Stopping):
            log.info("run %s left for another owner", run_id)
        except Exception:
            errors = self._engine_errors.get(run_id, 0) + 1
            self._engine_errors[run_id] = errors
            if self.metrics is not None:
                self.metrics.deploy_executor_errors.inc()
            log.exception("run %s: engine error %d of %d", run_id, errors, self.max_engine_errors)
            if errors >= self.max_engine_errors:
                self._give_up(run_id, errors)
            else:
                time.sleep(1)
        finally:
            try:
                self._release_lease(run_id)
            except Exception:
                log.warning("could not release the lease of run %s; it expires in %ss", run_id, self.lease_seconds)
            self.kick.set()

    def _run(self, run_id: str) -> None:
        with self.db.transaction() as session:
            run = self.store.load(session, run_id)
            if run.state == RunState.queued:
                workflow = self.store.workflow(run)
                self.store.transition(session, run, RunState.running)
                run.started_at = utcnow()
                self.store.audit(session, run, None, f"{workflow.audit_prefix}.start", "running")
                self.store.refresh_message(session, run)
        while not self.stopping.is_set():
            with self.db.read() as session:
                run = self.store.load(session, run_id, for_update=False)
                steps = self.store.steps(session, run_id)
            state = RunState(run.state)
            main = [s for s in steps if s.phase == Phase.main.value]
            rollback = [s for s in steps if s.phase == Phase.rollback.value]
            if state == RunState.running:
                workflow = self.store.workflow(run)
                failed = [s for s in main if s.status == StepStatus.failed.value]
                cause = (f"aborted by <@{run.abort_requested_by}>" if run.abort_requested_by
                         else f"“{failed[0].name}” failed: {failed[0].detail}" if failed else None)
                if failed and not run.abort_requested_by and not workflow.compensates:
                    self._finish(run_id, RunState.failed, cause)
                    return
                if cause is not None:  # also a failure whose rollback never started (crash in between)
                    self._undo(run_id, cause)
                    continue
                pending = [s for s in main if s.status in OPEN_STEP]
                if not pending:
                    self._finish(run_id, RunState.succeeded, None)
                    return
                self._step(run, pending[0])
            elif state == RunState.rolling_back:
                failed = [s for s in rollback if s.status == StepStatus.failed.value]
                if failed:  # a person must look: do not go on with later rollback steps
                    self._finish(run_id, RunState.failed,
                                 f"rollback step “{failed[0].name}” could not finish: {failed[0].detail}")
                    return
                pending = [s for s in rollback if s.status in OPEN_STEP]
                if not pending:
                    self._finish(run_id, RunState.rolled_back, None)
                    return
                self._step(run, pending[0])
            else:
                return

    def _spec(self, workflow: Workflow, run: Run, step: RunStep) -> StepSpec:
        if step.phase == Phase.main.value:
            return workflow.main_spec(run, step.idx)
        return spec_of_row(step.data)

    def _step(self, run: Run, step: RunStep) -> None:
        workflow = self.store.workflow(run)
        prefix = workflow.audit_prefix
        phase = Phase(step.phase)
        spec = self._spec(workflow, run, step)
        resumed = step.status == StepStatus.running.value
        resumed_unsafe = False
        with self.db.transaction() as session:
            row = session.get(RunStep, (run.id, step.idx, step.phase))
            live = self.store.load(session, run.id)
            assert row is not None
            if resumed:
                if spec.on_resume == OnResume.rollback and phase == Phase.main:
                    row.status, row.finished_at = StepStatus.failed.value, utcnow()
                    row.detail = "interrupted by a restart; resuming this step is unsafe, so the run rolls back"
                    self.store.audit(session, live, None, f"{prefix}.step.interrupted", "failed", step=step.name,
                                     phase=step.phase)
                    self.store.refresh_message(session, live)
                    resumed_unsafe = True
                else:
                    self.store.audit(session, live, None, f"{prefix}.step.resume", "running", step=step.name,
                                     phase=step.phase, attempt=row.attempts)
            else:
                row.status, row.started_at, row.attempts = StepStatus.running.value, utcnow(), row.attempts + 1
                self.store.audit(session, live, None, f"{prefix}.step.start", "running", step=step.name,
                                 phase=step.phase, kind=step.kind)
                self.store.refresh_message(session, live)
            started = aware(row.started_at) or utcnow()
            data = dict(row.data or {})
        if resumed_unsafe:
            self._undo(run.id, f"step “{step.name}” was interrupted by a restart and is unsafe to resume")
            return
        elapsed = (utcnow() - started).total_seconds()
        timeout = workflow.rollback_deadline(run) if phase == Phase.rollback else spec.timeout
        ctx = StepContext(self, workflow, run.id, run.environment, workflow.plan_of(run), spec,
                          self.store.backends(run.environment), data, phase, step.idx,
                          time.monotonic() + timeout - elapsed, resumed, abortable=phase == Phase.main)
        status, detail, failure = self._call(ctx, workflow, run, step)
        with self.db.transaction() as session:
            row = session.get(RunStep, (run.id, step.idx, step.phase))
            live = self.store.load(session, run.id)
            assert row is not None
            row.status, row.finished_at, row.detail = status.value, utcnow(), detail
            row.data = dict(ctx.data)
            if self.metrics is not None:
                took = (row.finished_at - (aware(row.started_at) or row.finished_at)).total_seconds()
                self.metrics.deploy_steps.labels(step.kind, status.value).observe(took)
            ending = "fail" if status == StepStatus.failed else "end"
            self.store.audit(session, live, None, f"{prefix}.step.{ending}", status.value, step=step.name,
                             phase=step.phase, detail=detail)
            self.store.refresh_message(session, live)
        if failure is not None and phase == Phase.main:
            # an operator's abort is an abort, not a failure of the step it interrupted
            reason = (f"{failure} during “{step.name}”" if (detail or "").startswith("interrupted: ")
                      else f"“{step.name}” failed: {failure}")
            if workflow.compensates:
                self._undo(run.id, reason)
            else:  # nothing to undo (a safety action): the run failed, and says what it could not do
                self._finish(run.id, RunState.failed, reason)
        # rollback phase: the loop sees the failed step and ends the run as failed

    def _call(self, ctx: StepContext, workflow: Workflow, run: Run,
              step: RunStep) -> tuple[StepStatus, str | None, str | None]:
        """Run the handler, retrying transient faults per the workflow's policy within the deadline."""
        handler = workflow.handlers.get(step.kind)
        if handler is None:
            text = f"no handler for step kind {step.kind!r}"
            return StepStatus.failed, text, text
        policy = workflow.retry_policy(run, ctx.spec, ctx.phase)
        attempt = 0
        while True:
            try:
                return StepStatus.done, handler(ctx), None
            except Skipped as exc:
                return StepStatus.skipped, str(exc), None
            except BackendUnavailable as exc:
                attempt += 1
                delay = policy.delay(attempt)
                cause = exc.message
                if policy.allows(attempt) and ctx.left() > delay:
                    log.warning("run %s step %r: %s; retry %d in %.1fs", run.id, step.name, cause, attempt, delay)
                    self._retry_note(ctx, step, attempt, delay, cause)
                    try:
                        ctx.wait(delay)
                    except StepFailed as timed_out:
                        text = f"{cause} — {timed_out}, after {attempt} attempt(s)"
                        return self._gave_up(ctx, step, text)
                    except Aborted as aborted:
                        return StepStatus.failed, f"interrupted: {aborted}", str(aborted)
                    ctx.resumed = True
                    continue
                why = "out of time" if policy.allows(attempt) else "no attempts left"
                return self._gave_up(ctx, step, f"{cause} — gave up after {attempt} attempt(s) ({why})")
            except StepFailed as exc:
                return StepStatus.failed, str(exc), str(exc)
            except Aborted as exc:
                return StepStatus.failed, f"interrupted: {exc}", str(exc)
            except ChatOpsError as exc:  # keep the hint (e.g. "check deploy/rbac.yaml"): it says what to do
                text = exc.message + (f" — {exc.hint}" if exc.hint else "")
                return StepStatus.failed, text, text
            except (LeaseLost, Stopping):
                raise
            except Exception as exc:  # a bug must still end in a rollback, not a stuck run
                log.exception("step %s of run %s crashed", step.name, run.id)
                return StepStatus.failed, f"internal error ({type(exc).__name__})", "internal error"

    def _retry_note(self, ctx: StepContext, step: RunStep, attempt: int, delay: float, cause: str) -> None:
        try:
            ctx.audit(f"{ctx.workflow.audit_prefix}.step.retry", "retrying", phase=step.phase, attempt=attempt,
                      cause=cause, delay_seconds=round(delay, 2))
            ctx.note(f":warning: “{step.name}”: {cause} — retry {attempt} in {delay:.1f}s")
        except ChatOpsError:  # the database itself is down: the log line above still says it
            log.warning("run %s: could not record retry %d of step %r", ctx.run_id, attempt, step.name)

    def _gave_up(self, ctx: StepContext, step: RunStep, text: str) -> tuple[StepStatus, str, str]:
        log.warning("run %s step %r: giving up: %s", ctx.run_id, step.name, text)
        try:
            ctx.audit(f"{ctx.workflow.audit_prefix}.step.give_up", "failed", phase=step.phase, cause=text)
            ctx.note(f":x: “{step.name}”: giving up — {text}")
        except ChatOpsError:
            log.warning("run %s: could not record giving up step %r", ctx.run_id, step.name)
        return StepStatus.failed, text, text

    def _undo(self, run_id: str, reason: str) -> None:
        """Compensate — unless the workflow says this run must not be undone: then it ends failed where it is,
        holding its lock, for a person to continue forward."""
        with self.db.read() as session:
            run = self.store.load(session, run_id, for_update=False)
            refused = self.store.workflow(run).undo_refused(run, self.store.steps(session, run_id))
        if refused:
            log.warning("run %s: %s; not undone: %s", run_id, reason, refused)
            self._finish(run_id, RunState.failed, f"{reason}; {refused}")
        else:
            self._start_rollback(run_id, reason)

    def _start_rollback(self, run_id: str, reason: str) -> None:
        with self.db.transaction() as session:
            run = self.store.load(session, run_id)
            workflow = self.store.workflow(run)
            steps = self.store.steps(session, run_id)
            for step in steps:  # anything not started never will be
                if step.phase == Phase.main.value and step.status in OPEN_STEP:
                    step.status = (StepStatus.skipped if step.status == StepStatus.pending.value
                                   else StepStatus.failed).value
                    step.finished_at = step.finished_at or utcnow()
            self.store.transition(session, run, RunState.rolling_back)
            run.rollback_reason = reason
            for i, spec in enumerate(workflow.compensation(run, steps)):
                session.add(RunStep(run_id=run_id, idx=i, phase=Phase.rollback.value, kind=spec.kind,
                                    name=spec.name, status=StepStatus.pending.value, attempts=0,
                                    data={"spec": spec.to_json()}))
            self.store.audit(session, run, None, f"{workflow.audit_prefix}.rollback.start", "rolling_back",
                             reason=reason)
            self.store.thread(session, run, f":rewind: Rolling back: {reason}")
            self.store.alert(session, run, f":rotating_light: {workflow.title(run)} is rolling back: {reason}")
            self.store.refresh_message(session, run)

    def _give_up(self, run_id: str, errors: int) -> None:
        """The engine itself keeps failing on this run (a bug, not a failed step): stop retrying, end the run
        as failed so a person looks, and say so loudly. Nothing further is done to the backends."""
        try:
            with self.db.transaction() as session:
                run = self.store.load(session, run_id)
                workflow = self.store.workflow(run)
                state = RunState(run.state)
                if state in (RunState.running, RunState.rolling_back):
                    self.store.transition(session, run, RunState.failed)
                elif state == RunState.queued:
                    self.store.transition(session, run, RunState.aborted)
                else:
                    return
                run.finished_at = utcnow()
                run.outcome = (f"the runs engine failed {errors} times on this run and stopped; the backends may "
                               "be mid-change — a person must look (see the logs)")
                if run.state == RunState.failed.value:
                    locks.hold(session, run.environment, run.id, HELD_FOR_A_PERSON,
                               reason=f"run {run.id} stopped mid-change; a person must look")
                else:
                    locks.release(session, run.environment, run_id=run_id)
                self.store.audit(session, run, None, f"{workflow.audit_prefix}.engine_error", run.state,
                                 errors=errors)
                self.store.alert(session, run, f":rotating_light: {workflow.title(run)} STOPPED: {run.outcome}")
                self.store.refresh_message(session, run)
            if self.metrics is not None:
                self.metrics.deploy_runs.labels(run.environment, run.state).inc()
        except Exception:
            log.exception("run %s: could not record that the engine gave up", run_id)

    def _finish(self, run_id: str, state: RunState, cause: str | None) -> None:
        seen: list[str] = []
        if state == RunState.failed:  # a live look, made outside the transaction (network calls)
            with self.db.read() as session:
                snapshot = self.store.load(session, run_id, for_update=False)
                session.expunge(snapshot)
            seen = self.store.workflow(snapshot).inspect(snapshot)
        with self.db.transaction() as session:
            run = self.store.load(session, run_id)
            workflow = self.store.workflow(run)
            steps = self.store.steps(session, run_id)
            for step in steps:
                if step.status == StepStatus.pending.value:
                    step.status = StepStatus.skipped.value
            left = effects_of(steps)
            if state == RunState.succeeded:
                outcome = workflow.success_outcome(run, steps, left)
            elif state == RunState.rolled_back:
                outcome = workflow.rolled_back_outcome(run, steps, left)
            else:
                outcome = (cause or "failed") + ("; left behind: " + "; ".join(c.describe() for c in left)
                                                 if left else "")
            self.store.transition(session, run, state)
            run.finished_at = utcnow()
            run.outcome = outcome
            if state == RunState.failed and workflow.takes_lock:
                locks.hold(session, run.environment, run.id, HELD_FOR_A_PERSON,
                           reason=f"rollback of run {run.id} could not finish; `/rollback --env {run.environment}` "
                                  "continues it")
            else:
                locks.release(session, run.environment, run_id=run_id)
            self.store.audit(session, run, None, f"{workflow.audit_prefix}.{state.value}", state.value,
                             result=outcome, left_behind=[c.describe() for c in left])
            workflow.finished(session, run, state, left)
            if self.metrics is not None:
                self.metrics.deploy_runs.labels(run.environment, state.value).inc()
            took = describe_duration(((run.finished_at or utcnow()) - (aware(run.started_at) or utcnow()))
                                     .total_seconds())
            icon = {RunState.succeeded: "✅", RunState.rolled_back: "⏪"}.get(state, "🚨")
            self.store.thread(session, run, f"{icon} Finished: {outcome} (took {took}).")
            if state == RunState.failed:
                now = "\nWhat the backends show now:\n• " + "\n• ".join(seen) if seen else ""
                after = (f"\nThe environment stays locked; `/rollback --env {run.environment}` continues the "
                         "rollback." if workflow.takes_lock else "")
                self.store.alert(session, run, f":rotating_light: {workflow.title(run)} FAILED and needs a person: "
                                               f"{outcome}{now}{after}")
            elif state == RunState.rolled_back:  # why was said when the rollback started: said once
                self.store.alert(session, run, f"⏪ {workflow.title(run)}: {outcome} (took {took}).")
            else:
                workflow_alert = workflow.final_alert(run, state)
                if workflow_alert:
                    self.store.alert(session, run, workflow_alert)
            self.store.refresh_message(session, run)
