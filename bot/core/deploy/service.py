"""Deploy use cases behind /deploy, the plan's buttons, /lock and /unlock (Slack-free).

Every method runs inside the caller's transaction (the dispatcher's, which also holds the
idempotency claim and the audit record), locks the run's row before changing it, and moves
states only through `states.check_transition` — so double clicks, concurrent clicks on
several replicas and Slack retries can neither double-count nor start a run twice.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.config import CheckSettings, Config, Environment, Role
from bot.core.deploy import locks
from bot.core.deploy.messages import render_run
from bot.core.deploy.plan import build_plan, describe_duration, plan_hash
from bot.core.deploy.states import ACTIVE, RunState, check_transition
from bot.core.model import Actor, Reply
from bot.core.ports import EnvBackends, WorkloadRef
from bot.core.rbac import Authorizer
from bot.errors import CommandError, Conflict, NotFound, PermissionDenied
from bot.outbox import Outbox
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import Approval, DeployRun, RunStep
from bot.timeutil import aware, utcnow


def run_key(run_id: str) -> str:
    return f"run:{run_id}"


class DeployService:
    def __init__(self, config: Config, authorizer: Authorizer, outbox: Outbox,
                 backends: Callable[[str], EnvBackends], default_checks: Callable[[], list[CheckSettings]]) -> None:
        self.config = config
        self.authorizer = authorizer
        self.outbox = outbox
        self.backends = backends
        self.default_checks = default_checks
        self.wakeup = threading.Event()  # set after a run becomes runnable or an abort is requested

    # --- helpers ------------------------------------------------------------------------------------
    def env(self, name: str) -> Environment:
        return self.config.environments[name]

    def ref(self, env: Environment) -> WorkloadRef:
        return WorkloadRef(env.namespace, env.deployment, env.container)

    def load(self, session: Session, run_id: str, *, for_update: bool = True) -> DeployRun:
        stmt = select(DeployRun).where(DeployRun.id == run_id)
        if for_update:
            stmt = stmt.with_for_update()
        run = session.execute(stmt).scalar_one_or_none()
        if run is None:
            raise NotFound(f"no deploy run {run_id!r}")
        return run

    def steps(self, session: Session, run_id: str) -> list[RunStep]:
        return list(session.execute(select(RunStep).where(RunStep.run_id == run_id)
                                    .order_by(RunStep.phase.desc(), RunStep.idx)).scalars())

    def approvals(self, session: Session, run_id: str) -> list[Approval]:
        return list(session.execute(select(Approval).where(Approval.run_id == run_id)
                                    .order_by(Approval.created_at)).scalars())

    def refresh_message(self, session: Session, run: DeployRun) -> None:
        session.flush()
        self.outbox.update(session, run_key(run.id), render_run(run, self.steps(session, run.id),
                                                                self.approvals(session, run.id)))

    def thread(self, session: Session, run: DeployRun, text: str) -> None:
        self.outbox.post(session, run.channel, Reply(text, ephemeral=False), thread_key=run_key(run.id))

    def audit(self, session: Session, run: DeployRun, actor: Actor | None, action: str, outcome: str,
              **args: Any) -> None:
        append(session, AuditEntry(actor_id=actor.user_id if actor else "bot",
                                   actor_name=actor.name if actor else "swarm-chatops", channel=run.channel,
                                   environment=run.environment, action=action, outcome=outcome,
                                   correlation_id=run.correlation_id, args={"run": run.id, **args}))

    def transition(self, session: Session, run: DeployRun, to: RunState) -> None:
        check_transition(run.state, to)
        run.state = to.value
        run.version_no += 1

    # --- /deploy ------------------------------------------------------------------------------------
    def request(self, session: Session, *, actor: Actor, channel_id: str | None, correlation_id: str,
                env_name: str, version: str, strategy: str, dry_run: bool, reason: str | None,
                force: bool, current_image: str | None = None) -> Reply:
        env = self.env(env_name)
        if current_image is None:
            current_image = self.live_image(env_name, version)
        image = f"{env.image}:{version}"
        if current_image == image:
            raise Conflict(f"{env_name} already runs {image}; nothing to deploy")
        checks = env.analysis if env.analysis is not None else self.default_checks()
        plan = build_plan(env_name=env_name, env=env, version=version, strategy=strategy,
                          current_image=current_image, checks=checks, reason=reason, requested_by=actor.user_id)
        run_id = "r-" + secrets.token_hex(4)
        now = utcnow()
        if dry_run:
            state = RunState.dry_run
        elif env.approvals_required > 0:
            state = RunState.pending_approval
        else:
            state = RunState.queued
        broke: locks.LockInfo | None = None
        if not dry_run:
            holder = locks.current(session, env_name)
            if holder is not None and holder.kind == "freeze" and force:
                broke = locks.force_release(session, env_name)
            ttl = timedelta(minutes=env.approval_ttl_minutes if state == RunState.pending_approval
                            else env.lock_ttl_minutes)
            locks.acquire(session, env_name, kind="run", run_id=run_id, held_by=actor.user_id,
                          held_by_name=actor.name, reason=f"deploy {version}", ttl=ttl)
        run = DeployRun(id=run_id, environment=env_name, version=version, image=image, previous_image=current_image,
                        strategy=strategy, dry_run=dry_run, reason=reason, requested_by=actor.user_id,
                        requested_name=actor.name, channel=env.channels.deploy, plan=plan, plan_hash=plan_hash(plan),
                        approvals_required=env.approvals_required, state=state.value, version_no=1,
                        created_at=now, correlation_id=correlation_id,
                        expires_at=now + timedelta(minutes=env.approval_ttl_minutes)
                        if state == RunState.pending_approval else None)
        session.add(run)
        for step in plan["steps"]:
            session.add(RunStep(run_id=run_id, idx=step["idx"], phase="deploy", kind=step["kind"], name=step["name"],
                                status="pending", attempts=0, data={}))
        session.flush()
        self.audit(session, run, actor, "deploy.plan", state.value, version=version, strategy=strategy,
                   plan_hash=run.plan_hash, previous_image=current_image, dry_run=dry_run, reason=reason)
        self.outbox.post(session, run.channel, render_run(run, self.steps(session, run_id), []), key=run_key(run_id),
                         retry_until=run.expires_at, on_dead="deploy.plan_dead", ref=run_id)
        if broke is not None:
            self.audit(session, run, actor, "lock.break_glass", "forced", broke_lock=broke.describe())
            self.outbox.post(session, run.channel, Reply(
                f":rotating_light: *BREAK-GLASS*: {actor.label} forced a deploy of {version} to {env_name} through "
                f"the freeze ({broke.describe()}).", ephemeral=False))
        if state == RunState.queued:
            self._wake_after_commit(session)
        where = "" if channel_id == run.channel else f" in <#{run.channel}>"
        if dry_run:
            return Reply(f"Dry run: the plan for {version} → {env_name} is queued{where} (run `{run_id}`). "
                         "Nothing will be changed.")
        if state == RunState.pending_approval:
            return Reply(f"Plan for {version} → {env_name} queued{where} (run `{run_id}`); it needs "
                         f"{env.approvals_required} approval(s) from approvers other than you within "
                         f"{describe_duration(env.approval_ttl_minutes * 60)}.")
        return Reply(f"Deploying {version} → {env_name} (run `{run_id}`); follow it{where or ' in the channel'}.")

    def live_image(self, env_name: str, version: str) -> str:
        """Check the version against the environment's tag pattern, then read the live image (a network
        call: callers make it outside their write transaction)."""
        env = self.env(env_name)
        if not env.tag_allowed(version):
            raise CommandError(f"version {version} is not allowed in {env_name}",
                               hint=f"{env_name} accepts tags matching `{env.allowed_tags}`.")
        return self.backends(env_name).cluster.current_image(self.ref(env))

    def _wake_after_commit(self, session: Session) -> None:
        from sqlalchemy import event

        event.listen(session, "after_commit", lambda _s: self.wakeup.set(), once=True)

    # --- buttons --------------------------------------------------------------------------------------
    def approve(self, session: Session, *, actor: Actor, run_id: str, env_name: str, hash_prefix: str) -> Reply:
        run = self.load(session, run_id)
        if run.environment != env_name:
            raise CommandError("this button does not belong to that run")
        self.authorizer.require(actor, Role.approver, run.environment, f"approve deploys to {run.environment}")
        if actor.user_id == run.requested_by:
            raise PermissionDenied("you requested this deploy; someone else must approve it",
                                   role="approver (not the requester)", environment=run.environment)
        if run.state != RunState.pending_approval:
            raise Conflict(f"run {run.id} is {run.state}; approvals are closed")
        expires = aware(run.expires_at)
        if expires is not None and expires <= utcnow():
            raise Conflict(f"the approval window of run {run.id} has expired; request the deploy again")
        if not run.plan_hash.startswith(hash_prefix) or len(hash_prefix) < 12:
            raise Conflict("this approval was for a different plan; look at the current plan and approve that")
        already = session.get(Approval, (run.id, actor.user_id))
        if already is not None:
            return Reply(f"You already approved run {run.id}.")
        session.add(Approval(run_id=run.id, user_id=actor.user_id, user_name=actor.name, plan_hash=run.plan_hash,
                             created_at=utcnow()))
        session.flush()
        count = session.execute(select(func.count()).select_from(Approval)
                                .where(Approval.run_id == run.id, Approval.plan_hash == run.plan_hash)).scalar_one()
        self.audit(session, run, actor, "deploy.approve", "ok", approvals=count, required=run.approvals_required)
        if count >= run.approvals_required:
            self.transition(session, run, RunState.queued)
            ttl = timedelta(minutes=self.env(run.environment).lock_ttl_minutes)
            locks.extend(session, run.environment, run.id, ttl)
            self.audit(session, run, None, "deploy.approved", "queued", approvals=count)
            self._wake_after_commit(session)
        self.refresh_message(session, run)
        left = run.approvals_required - count
        return Reply(f"Approved run {run.id}." + (f" {left} more approval(s) needed." if left > 0 else
                                                  " All approvals are in: starting."))

    def abort(self, session: Session, *, actor: Actor, run_id: str, env_name: str) -> Reply:
        run = self.load(session, run_id)
        if run.environment != env_name:
            raise CommandError("this button does not belong to that run")
        allowed = (actor.user_id == run.requested_by
                   or self.authorizer.has(actor.user_id, Role.approver, run.environment)
                   or self.authorizer.has(actor.user_id, Role.admin, run.environment))
        if not allowed:
            raise PermissionDenied(f"{actor.label} may not abort run {run.id}", role="approver or admin",
                                   environment=run.environment)
        state = RunState(run.state)
        if state in (RunState.pending_approval, RunState.queued):
            self.transition(session, run, RunState.aborted)
            run.abort_requested_by = actor.user_id
            run.finished_at = utcnow()
            run.outcome = f"aborted by {actor.label} before anything changed"
            locks.release(session, run.environment, run_id=run.id)
            self.audit(session, run, actor, "deploy.abort", "aborted", state_before=state.value)
            self.refresh_message(session, run)
            return Reply(f"Run {run.id} aborted; nothing was changed.")
        if state == RunState.running:
            if run.abort_requested_by:
                return Reply(f"Run {run.id} is already being aborted.")
            run.abort_requested_by = actor.user_id
            run.version_no += 1
            self.audit(session, run, actor, "deploy.abort", "rollback_requested", state_before=state.value)
            self.thread(session, run, f":octagonal_sign: {actor.label} aborted the run: rolling back.")
            self.refresh_message(session, run)
            self._wake_after_commit(session)
            return Reply(f"Aborting run {run.id}: rolling back to {run.previous_image}.")
        raise Conflict(f"run {run.id} is {run.state}; there is nothing to abort")

    def tick(self, session: Session, *, actor: Actor, run_id: str, env_name: str, step_idx: int) -> Reply:
        run = self.load(session, run_id)
        if run.environment != env_name:
            raise CommandError("this button does not belong to that run")
        step = session.get(RunStep, (run.id, step_idx, "deploy"))
        if step is None or step.kind != "checklist":
            raise NotFound("no such checklist item")
        spec = run.plan["steps"][step_idx]
        self.authorizer.require(actor, Role(spec.get("role", "deployer")), run.environment,
                                f"tick “{step.name}”")
        if step.status != "running":
            raise Conflict(f"“{step.name}” is {step.status}, not waiting for a tick")
        if step.data.get("ticked_by"):
            return Reply(f"“{step.name}” was already ticked.")
        step.data = {**step.data, "ticked_by": actor.user_id, "ticked_name": actor.name}
        self.audit(session, run, actor, "deploy.checklist_tick", "ok", step=step.name)
        self._wake_after_commit(session)
        return Reply(f"Ticked “{step.name}”.")

    # --- /lock /unlock -------------------------------------------------------------------------------
    def freeze(self, session: Session, *, actor: Actor, env_name: str, reason: str, hours: float) -> locks.LockInfo:
        return locks.acquire(session, env_name, kind="freeze", run_id=None, held_by=actor.user_id,
                             held_by_name=actor.name, reason=reason, ttl=timedelta(hours=hours))

    def active_runs(self, session: Session, env_name: str | None = None) -> list[DeployRun]:
        stmt = select(DeployRun).where(DeployRun.state.in_([s.value for s in ACTIVE]))
        if env_name:
            stmt = stmt.where(DeployRun.environment == env_name)
        return list(session.execute(stmt.order_by(DeployRun.created_at)).scalars())
