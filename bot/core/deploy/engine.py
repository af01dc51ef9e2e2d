"""The durable step engine: runs approved deploys step by step, resumes after restarts, rolls back.

Each process runs one `Executor`. It claims a runnable run with a lease (compare-and-set on
`lease_owner/lease_until`), so one replica executes it at a time; a replica that dies stops
renewing and another (or the restarted process) takes over. Each step records `running`
before it acts and `done`/`failed` before the next starts; a step found `running` on takeover
is resumed (its handler is idempotent and keeps its progress in `step.data`) or, where the
procedure says resuming is unsafe, failed into a rollback. Every start, resume, end and
verdict is audited, so the audit log shows that no step ran twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from bot.core.deploy import locks
from bot.core.deploy.plan import describe_duration
from bot.core.deploy.service import DeployService
from bot.core.deploy.states import RunState
from bot.core.model import Reply
from bot.core.ports import EnvBackends
from bot.errors import ChatOpsError
from bot.metrics import Metrics
from bot.persistence.db import Database
from bot.persistence.models import DeployRun, RunStep
from bot.timeutil import aware, utcnow

log = logging.getLogger(__name__)
LEASE_SECONDS = 15.0


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


@dataclass
class StepContext:
    """What a step handler sees: the run's facts, its backends, and durable progress in `data`."""

    executor: Executor
    run_id: str
    environment: str
    plan: dict[str, Any]
    spec: dict[str, Any]
    backends: EnvBackends
    data: dict[str, Any]
    phase: str
    idx: int
    deadline: float
    resumed: bool
    abortable: bool = True
    _last_check: float = field(default=0.0)

    @property
    def svc(self) -> DeployService:
        return self.executor.service

    def save(self, **changes: Any) -> None:
        """Persist progress (weight, tracker state, ...) and refresh the live message."""
        self.data.update(changes)
        with self.executor.db.transaction() as session:
            step = session.get(RunStep, (self.run_id, self.idx, self.phase))
            assert step is not None
            step.data = dict(self.data)
            run = self.svc.load(session, self.run_id)
            self.svc.refresh_message(session, run)

    def note(self, text: str) -> None:
        """A reply in the run's thread."""
        with self.executor.db.transaction() as session:
            run = self.svc.load(session, self.run_id, for_update=False)
            self.svc.thread(session, run, text)

    def audit(self, action: str, outcome: str, **args: Any) -> None:
        with self.executor.db.transaction() as session:
            run = self.svc.load(session, self.run_id, for_update=False)
            self.svc.audit(session, run, None, action, outcome, step=self.spec.get("name"), **args)

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
                    who = session.execute(select(DeployRun.abort_requested_by)
                                          .where(DeployRun.id == self.run_id)).scalar_one()
                if who:
                    raise Aborted(f"aborted by <@{who}>")
        if now > self.deadline:
            raise StepFailed(f"timed out after {describe_duration(self.spec.get('timeout', 0))}")

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
            step = session.get(RunStep, (self.run_id, self.idx, self.phase))
            return dict(step.data or {}) if step else {}


Handler = Callable[[StepContext], str | None]


class Executor:
    def __init__(self, db: Database, service: DeployService, handlers: dict[str, Handler],
                 rollback_plan: Callable[[DeployRun, list[RunStep]], list[dict[str, Any]]],
                 *, worker_id: str | None = None, poll_seconds: float = 1.0,
                 lease_seconds: float = LEASE_SECONDS, metrics: Metrics | None = None,
                 max_engine_errors: int = 5) -> None:
        self.db = db
        self.service = service
        self.handlers = handlers
        self.rollback_plan = rollback_plan
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.max_engine_errors = max_engine_errors
        self._engine_errors: dict[str, int] = {}
        self.kick = service.wakeup
        self.stopping = threading.Event()
        self._runners: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._scanner: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._scanner = threading.Thread(target=self._scan_loop, name="chatops-deploy-scan", daemon=True)
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
            return session.execute(select(DeployRun.id).where(
                DeployRun.state.in_([RunState.queued.value, RunState.running.value, RunState.rolling_back.value])
            ).limit(1)).first() is not None

    def _scan_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.scan()
            except Exception:
                log.exception("deploy scan failed; retrying")
            self.kick.wait(self.poll_seconds)
            self.kick.clear()

    def scan(self) -> None:
        self._expire_approvals()
        now = utcnow()
        with self.db.read() as session:
            candidates = session.execute(select(DeployRun.id).where(
                DeployRun.state.in_([RunState.queued.value, RunState.running.value, RunState.rolling_back.value]),
                or_(DeployRun.lease_until.is_(None), DeployRun.lease_until < now,
                    DeployRun.lease_owner == self.worker_id))).scalars().all()
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
            result = session.execute(update(DeployRun).where(
                DeployRun.id == run_id,
                or_(DeployRun.lease_until.is_(None), DeployRun.lease_until < now,
                    DeployRun.lease_owner == self.worker_id)
            ).values(lease_owner=self.worker_id, lease_until=now + timedelta(seconds=self.lease_seconds)))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def renew(self, run_id: str) -> None:
        now = utcnow()
        with self.db.transaction() as session:
            result = session.execute(update(DeployRun).where(
                DeployRun.id == run_id, DeployRun.lease_owner == self.worker_id
            ).values(lease_until=now + timedelta(seconds=self.lease_seconds)))
            if not result.rowcount:  # type: ignore[attr-defined]
                raise LeaseLost(run_id)
            run = session.get(DeployRun, run_id)
            if run is not None:
                locks.extend(session, run.environment, run_id,
                             timedelta(minutes=self.service.env(run.environment).lock_ttl_minutes))

    def _give_up(self, run_id: str, errors: int) -> None:
        """The engine itself keeps failing on this run (a bug, not a failed step): stop retrying, end the run
        as failed so a person looks, and say so loudly. Nothing further is done to the cluster."""
        try:
            with self.db.transaction() as session:
                run = self.service.load(session, run_id)
                state = RunState(run.state)
                if state in (RunState.running, RunState.rolling_back):
                    self.service.transition(session, run, RunState.failed)
                elif state == RunState.queued:
                    self.service.transition(session, run, RunState.aborted)
                else:
                    return
                run.finished_at = utcnow()
                run.outcome = (f"the deploy engine failed {errors} times on this run and stopped; the cluster may "
                               "be mid-change — a person must look (see the logs)")
                locks.release(session, run.environment, run_id=run_id)
                self.service.audit(session, run, None, "deploy.engine_error", run.state, errors=errors)
                self._alert(session, run, f":rotating_light: Deploy {run.version} → {run.environment} STOPPED: "
                                          f"{run.outcome}")
                self.service.refresh_message(session, run)
            if self.metrics is not None:
                self.metrics.deploy_runs.labels(run.environment, run.state).inc()
        except Exception:
            log.exception("run %s: could not record that the engine gave up", run_id)

    def _release_lease(self, run_id: str) -> None:
        with self.db.transaction() as session:
            session.execute(update(DeployRun).where(DeployRun.id == run_id, DeployRun.lease_owner == self.worker_id)
                            .values(lease_owner=None, lease_until=None))

    def _expire_approvals(self) -> None:
        now = utcnow()
        with self.db.transaction() as session:
            stale = session.execute(select(DeployRun).where(
                DeployRun.state == RunState.pending_approval.value, DeployRun.expires_at < now
            ).with_for_update()).scalars().all()
            for run in stale:
                self.service.transition(session, run, RunState.expired)
                run.finished_at = now
                run.outcome = "approvals did not arrive in time; nothing was changed"
                locks.release(session, run.environment, run_id=run.id)
                self.service.audit(session, run, None, "deploy.expired", "expired")
                self.service.refresh_message(session, run)

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
            run = self.service.load(session, run_id)
            if run.state == RunState.queued:
                self.service.transition(session, run, RunState.running)
                run.started_at = utcnow()
                self.service.audit(session, run, None, "deploy.start", "running")
                self.service.refresh_message(session, run)
        while not self.stopping.is_set():
            with self.db.read() as session:
                run = self.service.load(session, run_id, for_update=False)
                steps = self.service.steps(session, run_id)
            state = RunState(run.state)
            if state == RunState.running:
                if run.abort_requested_by:
                    self._start_rollback(run_id, f"aborted by <@{run.abort_requested_by}>")
                    continue
                failed = [s for s in steps if s.phase == "deploy" and s.status == "failed"]
                if failed:  # a failure whose rollback never started (crash or engine error in between)
                    self._start_rollback(run_id, f"“{failed[0].name}” failed: {failed[0].detail}")
                    continue
                pending = [s for s in steps if s.phase == "deploy" and s.status in ("pending", "running")]
                if not pending:
                    self._finish(run_id, RunState.succeeded, "deployed")
                    return
                self._step(run, pending[0])
            elif state == RunState.rolling_back:
                failed = [s for s in steps if s.phase == "rollback" and s.status == "failed"]
                if failed:  # a person must look: do not go on with later rollback steps
                    self._finish(run_id, RunState.failed, f"rollback step “{failed[0].name}” failed: "
                                                          f"{failed[0].detail}")
                    return
                pending = [s for s in steps if s.phase == "rollback" and s.status in ("pending", "running")]
                if not pending:
                    nothing = not any(s.phase == "rollback" for s in steps)
                    self._finish(run_id, RunState.rolled_back,
                                 "stopped before anything in the cluster changed" if nothing
                                 else "rolled back to the previous version")
                    return
                self._step(run, pending[0])
            else:
                return

    def _step(self, run: DeployRun, step: RunStep) -> None:
        plan = run.plan
        spec = plan["steps"][step.idx] if step.phase == "deploy" else step.data.get("spec", {})
        resumed = step.status == "running"
        with self.db.transaction() as session:
            row = session.get(RunStep, (run.id, step.idx, step.phase))
            live = self.service.load(session, run.id)
            assert row is not None
            if resumed:
                if spec.get("on_resume") == "rollback" and step.phase == "deploy":
                    row.status, row.finished_at = "failed", utcnow()
                    row.detail = "interrupted by a restart; resuming this step is unsafe, so the run rolls back"
                    self.service.audit(session, live, None, "deploy.step.interrupted", "failed", step=step.name,
                                       phase=step.phase)
                    self.service.refresh_message(session, live)
                    resumed_unsafe = True
                else:
                    self.service.audit(session, live, None, "deploy.step.resume", "running", step=step.name,
                                       phase=step.phase, attempt=row.attempts)
                    resumed_unsafe = False
            else:
                row.status, row.started_at, row.attempts = "running", utcnow(), row.attempts + 1
                self.service.audit(session, live, None, "deploy.step.start", "running", step=step.name,
                                   phase=step.phase, kind=step.kind)
                self.service.refresh_message(session, live)
                resumed_unsafe = False
            started = aware(row.started_at) or utcnow()
            data = dict(row.data or {})
        if resumed_unsafe:
            self._start_rollback(run.id, f"step “{step.name}” was interrupted by a restart and is unsafe to resume")
            return
        elapsed = (utcnow() - started).total_seconds()
        ctx = StepContext(self, run.id, run.environment, plan, spec, self.service.backends(run.environment), data,
                          step.phase, step.idx, time.monotonic() + float(spec.get("timeout", 300)) - elapsed,
                          resumed, abortable=step.phase == "deploy")
        handler = self.handlers.get(step.kind)
        status, detail, failure = "done", None, None
        try:
            if handler is None:
                raise StepFailed(f"no handler for step kind {step.kind!r}")
            detail = handler(ctx)
        except Skipped as exc:
            status, detail = "skipped", str(exc)
        except StepFailed as exc:
            status, detail, failure = "failed", str(exc), str(exc)
        except Aborted as exc:
            status, detail, failure = "failed", str(exc), str(exc)
        except ChatOpsError as exc:  # keep the hint (e.g. "check deploy/rbac.yaml"): it says what to do
            text = exc.message + (f" — {exc.hint}" if exc.hint else "")
            status, detail, failure = "failed", text, text
        except (LeaseLost, Stopping):
            raise
        except Exception as exc:  # a bug must still end in a rollback, not a stuck run
            log.exception("step %s of run %s crashed", step.name, run.id)
            status, detail, failure = "failed", f"internal error ({type(exc).__name__})", "internal error"
        with self.db.transaction() as session:
            row = session.get(RunStep, (run.id, step.idx, step.phase))
            live = self.service.load(session, run.id)
            assert row is not None
            row.status, row.finished_at, row.detail = status, utcnow(), detail
            row.data = dict(ctx.data)
            if self.metrics is not None:
                took = (row.finished_at - (aware(row.started_at) or row.finished_at)).total_seconds()
                self.metrics.deploy_steps.labels(step.kind, status).observe(took)
            self.service.audit(session, live, None, f"deploy.step.{'end' if status != 'failed' else 'fail'}", status,
                               step=step.name, phase=step.phase, detail=detail)
            self.service.refresh_message(session, live)
        if failure is not None:
            if step.phase == "deploy":
                self._start_rollback(run.id, f"“{step.name}” failed: {failure}")
            # rollback phase: the loop sees the failed step and ends the run as failed

    def _start_rollback(self, run_id: str, reason: str) -> None:
        with self.db.transaction() as session:
            run = self.service.load(session, run_id)
            steps = self.service.steps(session, run_id)
            for step in steps:  # anything not started never will be
                if step.phase == "deploy" and step.status in ("pending", "running"):
                    step.status = "skipped" if step.status == "pending" else "failed"
                    step.finished_at = step.finished_at or utcnow()
            self.service.transition(session, run, RunState.rolling_back)
            run.rollback_reason = reason
            for i, spec in enumerate(self.rollback_plan(run, steps)):
                session.add(RunStep(run_id=run_id, idx=i, phase="rollback", kind=spec["kind"], name=spec["name"],
                                    status="pending", attempts=0, data={"spec": spec}))
            self.service.audit(session, run, None, "deploy.rollback.start", "rolling_back", reason=reason)
            self.service.thread(session, run, f":rewind: Rolling back: {reason}")
            self._alert(session, run, f":rotating_light: Deploy {run.version} → {run.environment} is rolling back: "
                                      f"{reason}")
            self.service.refresh_message(session, run)

    def _alert(self, session: Any, run: DeployRun, text: str) -> None:
        channel = self.service.env(run.environment).channels.incident
        if channel:
            self.service.outbox.alert(session, channel, Reply(text + f" (run `{run.id}`)", ephemeral=False))

    def _finish(self, run_id: str, state: RunState, outcome: str) -> None:
        with self.db.transaction() as session:
            run = self.service.load(session, run_id)
            self.service.transition(session, run, state)
            run.finished_at = utcnow()
            for step in self.service.steps(session, run_id):
                if step.status == "pending":
                    step.status = "skipped"
            notes = []
            steps = self.service.steps(session, run_id)
            done = {s.kind for s in steps if s.phase == "deploy" and s.status == "done"}
            restored = {s.kind for s in steps if s.phase == "rollback" and s.status == "done"}
            if "trading_stop" in done and "trading_resume" not in done and "trading_resume" not in restored:
                notes.append("trading is STOPPED (stopped by this run)")
            if "maintenance_on" in done and "maintenance_off" not in done and "maintenance_off" not in restored:
                notes.append("maintenance mode is ON")
            run.outcome = outcome + (f"; {' and '.join(notes)}" if notes else "")
            locks.release(session, run.environment, run_id=run_id)
            self.service.audit(session, run, None, f"deploy.{state.value}", state.value, result=run.outcome)
            if self.metrics is not None:
                self.metrics.deploy_runs.labels(run.environment, state.value).inc()
            took = describe_duration(((run.finished_at or utcnow()) - (aware(run.started_at) or utcnow()))
                                     .total_seconds())
            icon = {RunState.succeeded: "✅", RunState.rolled_back: "⏪"}.get(state, "🚨")
            self.service.thread(session, run, f"{icon} Finished: {run.outcome} (took {took}).")
            if state == RunState.failed:
                self._alert(session, run, f":rotating_light: Deploy {run.version} → {run.environment} FAILED and "
                                          f"needs a person: {run.outcome}")
            elif state == RunState.rolled_back:
                self._alert(session, run,
                            f"Deploy {run.version} → {run.environment} rolled back: {run.rollback_reason}")
            self.service.refresh_message(session, run)


__all__ = ["Executor", "StepContext", "StepFailed", "Skipped", "Aborted"]
