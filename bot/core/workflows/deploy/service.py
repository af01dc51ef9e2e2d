"""Deploy use cases behind /deploy, the plan's buttons, /lock and /unlock (Slack-free).

Every method runs inside the caller's transaction (the dispatcher's, which also holds the
idempotency claim and the audit record), locks the run's row before changing it, and moves
states only through `states.check_transition` — so double clicks, concurrent clicks on
several replicas and Slack retries can neither double-count nor start a run twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.config import CheckSettings, Config, Environment, Role, StepSettings
from bot.core import locks
from bot.core.model import Actor, Reply
from bot.core.ports import EnvBackends, WorkloadRef
from bot.core.rbac import Authorizer
from bot.core.runs.states import ACTIVE, Phase, RunState, StepStatus
from bot.core.runs.store import RunStore, run_key
from bot.core.workflows.deploy import db_rollback
from bot.core.workflows.deploy.model import Strategy
from bot.core.workflows.deploy.plan import (
    DeploySubject,
    LiftedFreeze,
    build_plan,
    describe_duration,
    plan_hash,
    plan_steps,
    rollback_procedure,
    subject_of,
)
from bot.errors import CommandError, Conflict, NotFound, PermissionDenied
from bot.persistence.models import Approval, Run, RunStep
from bot.timeutil import aware, utcnow

KIND = "deploy"


subject = subject_of


class DeployService:
    def __init__(self, config: Config, authorizer: Authorizer, store: RunStore,
                 default_checks: Callable[[], list[CheckSettings]]) -> None:
        self.config = config
        self.authorizer = authorizer
        self.store = store
        self.outbox = store.outbox
        self.default_checks = default_checks
        self.wakeup = store.wakeup

    # --- helpers ------------------------------------------------------------------------------------
    @property
    def backends(self) -> Callable[[str], EnvBackends]:
        return self.store.backends

    def env(self, name: str) -> Environment:
        return self.config.environments[name]

    def ref(self, env: Environment) -> WorkloadRef:
        return WorkloadRef(env.namespace, env.deployment, env.container)

    def load(self, session: Session, run_id: str, *, for_update: bool = True) -> Run:
        run = self.store.load(session, run_id, for_update=for_update)
        if run.kind != KIND:
            raise NotFound(f"no deploy run {run_id!r}")
        return run

    def steps(self, session: Session, run_id: str) -> list[RunStep]:
        return self.store.steps(session, run_id)

    def approvals(self, session: Session, run_id: str) -> list[Approval]:
        return self.store.approvals(session, run_id)

    def refresh_message(self, session: Session, run: Run) -> None:
        self.store.refresh_message(session, run)

    def thread(self, session: Session, run: Run, text: str) -> None:
        self.store.thread(session, run, text)

    def audit(self, session: Session, run: Run, actor: Actor | None, action: str, outcome: str,
              **args: Any) -> None:
        self.store.audit(session, run, actor, action, outcome, **args)

    def transition(self, session: Session, run: Run, to: RunState) -> None:
        self.store.transition(session, run, to)

    # --- /deploy ------------------------------------------------------------------------------------
    def request(self, session: Session, *, actor: Actor, channel_id: str | None, correlation_id: str,
                env_name: str, version: str, strategy: Strategy, dry_run: bool, reason: str | None,
                force: bool, current_image: str | None = None, kind: str = KIND,
                procedure: list[StepSettings] | None = None, approvals: int | None = None,
                extra_plan: dict[str, Any] | None = None) -> Reply:
        env = self.env(env_name)
        required = env.approvals_required if approvals is None else approvals
        if current_image is None:
            current_image = self.live_image(env_name, version)
        image = f"{env.image}:{version}"
        if current_image == image:
            raise Conflict(f"{env_name} already runs {image}; nothing to deploy")
        checks = env.analysis if env.analysis is not None else self.default_checks()
        plan = build_plan(env_name=env_name, env=env, version=version, strategy=strategy,
                          current_image=current_image, checks=checks, reason=reason, requested_by=actor.user_id,
                          procedure=procedure)
        # extra_plan: e.g. /rollback --with-db's Job: kept in the plan's extra part, hashed, so approvals cover it
        plan = replace(plan, approvals_required=required, extra={**plan.extra, **(extra_plan or {})})
        run_id = "r-" + secrets.token_hex(4)
        now = utcnow()
        if dry_run:
            state = RunState.dry_run
        elif required > 0:
            state = RunState.pending_approval
        else:
            state = RunState.queued
        broke: locks.LockInfo | None = None
        if not dry_run:
            holder = locks.current(session, env_name)
            if holder is not None and holder.kind == "freeze" and force:
                broke = locks.force_release(session, env_name)
                if broke is not None:
                    plan = replace(plan, lifted_freeze=LiftedFreeze(
                        broke.held_by, broke.held_by_name, broke.reason, broke.expires_at.isoformat()))
            ttl = timedelta(minutes=env.approval_ttl_minutes if state == RunState.pending_approval
                            else env.lock_ttl_minutes)
            locks.acquire(session, env_name, kind="run", run_id=run_id, held_by=actor.user_id,
                          held_by_name=actor.name, reason=f"{kind} {version}", ttl=ttl)
        subj = DeploySubject(version, image, current_image, strategy)
        run = Run(id=run_id, kind=kind, environment=env_name, subject=subj.to_json(), dry_run=dry_run, reason=reason,
                  requested_by=actor.user_id, requested_name=actor.name, channel=env.channels.deploy,
                  plan=plan.to_json(),
                  plan_hash=plan_hash(plan), approvals_required=required, state=state.value,
                  version_no=1, created_at=now, correlation_id=correlation_id,
                  expires_at=now + timedelta(minutes=env.approval_ttl_minutes)
                  if state == RunState.pending_approval else None)
        session.add(run)
        for step in plan.steps:
            session.add(RunStep(run_id=run_id, idx=step.idx, phase=Phase.main.value, kind=step.kind, name=step.name,
                                status=StepStatus.pending.value, attempts=0, data={}))
        session.flush()
        self.audit(session, run, actor, f"{kind}.plan", state.value, version=version, strategy=strategy,
                   plan_hash=run.plan_hash, previous_image=current_image, dry_run=dry_run, reason=reason)
        self.outbox.post(session, run.channel, self.store.workflow(run).render(run, self.steps(session, run_id), []),
                         key=run_key(run_id), retry_until=run.expires_at, on_dead="deploy.plan_dead", ref=run_id)
        if broke is not None:
            self.audit(session, run, actor, "lock.break_glass", "forced", broke_lock=broke.describe(markup=False))
            self.outbox.post(session, run.channel, Reply(
                f":rotating_light: *BREAK-GLASS*: {actor.mention} forced a deploy of {version} to {env_name} through "
                f"the freeze ({broke.describe()}).", ephemeral=False))
        if state == RunState.queued:
            self.store.wake_after_commit(session)
        where = "" if channel_id == run.channel else f" in <#{run.channel}>"
        posted_in = f" in <#{run.channel}>"
        if dry_run:
            return Reply(f"Dry run: the plan for {version} → {env_name} is queued{where} (run `{run_id}`). "
                         "Nothing will be changed.",
                         once_posted=(run_key(run_id), f"Dry run: the plan for {version} → {env_name} is now posted"
                                      f"{posted_in} (run `{run_id}`). Nothing will be changed."))
        what = f"{version} → {env_name}" if kind == KIND else f"the rollback of {env_name} to {version}"
        if state == RunState.pending_approval:
            until = f"{run.expires_at:%H:%M} UTC" if run.expires_at else "its window ends"
            return Reply(f"Plan for {what} queued{where} (run `{run_id}`); it needs "
                         f"{required} approval(s) from approvers other than you within "
                         f"{describe_duration(env.approval_ttl_minutes * 60)}.",
                         once_posted=(run_key(run_id), f"Plan for {what} is now posted{posted_in} (run `{run_id}`); it "
                                      f"needs {required} approval(s) from approvers other than you by {until}."))
        if kind != KIND:
            at_once = f" at once, without approval: {plan.extra['immediate']}" if plan.extra.get("immediate") else ""
            return Reply(f"Rolling {env_name} back to {version}{at_once} (run `{run_id}`); "
                         f"follow it{where or ' in the channel'}.")
        return Reply(f"Deploying {version} → {env_name} (run `{run_id}`); follow it{where or ' in the channel'}.")

    # --- /rollback ----------------------------------------------------------------------------------
    def previous_version(self, session: Session, env_name: str, live_image: str) -> str | None:
        """The version before the live one: the newest finished deploy that put the live image there."""
        rows = session.execute(select(Run).where(Run.environment == env_name, Run.kind.in_([KIND, "rollback"]),
                                                 Run.state == RunState.succeeded.value)
                               .order_by(Run.finished_at.desc()).limit(50)).scalars()
        for run in rows:
            subj = subject_of(run)
            if subj.image == live_image and subj.previous_image and ":" in subj.previous_image:
                return subj.previous_image.rsplit(":", 1)[1]
        return None

    def rollback(self, session: Session, *, actor: Actor, channel_id: str | None, correlation_id: str,
                 env_name: str, to: str | None, reason: str | None, current_image: str | None,
                 executor: Any, with_db: bool = False) -> Reply:
        """`/rollback`: continue a run whose rollback could not finish, else roll back to the previous version
        (or `to`) by runbook 8.2; `with_db` adds the database rollback Job (see `db_rollback`)."""
        holder = locks.current(session, env_name)
        if holder is not None and holder.run_id:
            held = self.store.load(session, holder.run_id)
            if held.state == RunState.failed.value:
                executor.continue_rollback(session, held, actor)
                return Reply(f"Continuing the rollback of run `{held.id}` in {env_name}; follow it in "
                             f"<#{held.channel}>.")
        env = self.env(env_name)
        live = current_image or ""
        version = to or self.previous_version(session, env_name, live)
        if version is None:
            raise CommandError(f"no earlier version of {env_name} is known to the bot (the live image is {live})",
                               hint=f"Name it: `/rollback --env {env_name} --to VERSION`.")
        if not env.tag_allowed(version):
            raise CommandError(f"version {version} is not allowed in {env_name}",
                               hint=f"{env_name} accepts tags matching `{env.allowed_tags}`.")
        required = env.rollback_approvals_required
        if required is None:
            required = 1 if env.approvals_required > 0 else 0
        extra = db_rollback.plan_extra(env_name, env, version=version, from_image=live) if with_db else {}
        immediate = None if with_db else db_rollback.immediate_reason(session, env_name, env)
        if with_db:
            required = max(required, 1)  # a database rollback always needs a second person
        elif immediate and required:
            required, extra = 0, {"immediate": immediate}
        return self.request(session, actor=actor, channel_id=channel_id, correlation_id=correlation_id,
                            env_name=env_name, version=version, strategy="rolling", dry_run=False, reason=reason,
                            force=False, current_image=live, kind="rollback",
                            procedure=rollback_procedure(env, with_db=with_db), approvals=required, extra_plan=extra)

    def live_image(self, env_name: str, version: str) -> str:
        """Check the version against the environment's tag pattern, then read the live image (a network
        call: callers make it outside their write transaction)."""
        env = self.env(env_name)
        if not env.tag_allowed(version):
            raise CommandError(f"version {version} is not allowed in {env_name}",
                               hint=f"{env_name} accepts tags matching `{env.allowed_tags}`.")
        return self.backends(env_name).cluster.current_image(self.ref(env))

    # --- buttons --------------------------------------------------------------------------------------
    def approve(self, session: Session, *, actor: Actor, run_id: str, env_name: str, hash_prefix: str) -> Reply:
        """Approve any run waiting for approval (a deploy, a resume of trading, ...), bound to its plan hash."""
        run = self.store.load(session, run_id)
        if run.environment != env_name:
            raise CommandError("this button does not belong to that run")
        workflow = self.store.workflow(run)
        what = "deploys to" if run.kind == KIND else f"{workflow.title(run).lower()} in"
        self.authorizer.require(actor, Role.approver, run.environment, f"approve {what} {run.environment}")
        if actor.user_id == run.requested_by:
            raise PermissionDenied(f"you requested this {'deploy' if run.kind == KIND else 'run'}; someone else "
                                   "must approve it",
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
        self.audit(session, run, actor, f"{workflow.audit_prefix}.approve", "ok", approvals=count,
                   required=run.approvals_required)
        if count >= run.approvals_required:
            self.transition(session, run, RunState.queued)
            ttl = timedelta(minutes=self.env(run.environment).lock_ttl_minutes)
            locks.extend(session, run.environment, run.id, ttl)
            self.audit(session, run, None, f"{workflow.audit_prefix}.approved", "queued", approvals=count)
            self.store.wake_after_commit(session)
        self.refresh_message(session, run)
        left = run.approvals_required - count
        return Reply(f"Approved run {run.id}." + (f" {left} more approval(s) needed." if left > 0 else
                                                  " All approvals are in: starting."))

    def abort(self, session: Session, *, actor: Actor, run_id: str, env_name: str) -> Reply:
        run = self.store.load(session, run_id)
        prefix = self.store.workflow(run).audit_prefix
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
            run.outcome = f"aborted by {actor.mention} before anything changed"
            locks.release(session, run.environment, run_id=run.id)
            self.audit(session, run, actor, f"{prefix}.abort", "aborted", state_before=state.value)
            self.refresh_message(session, run)
            return Reply(f"Run {run.id} aborted; nothing was changed.")
        if state == RunState.running:
            if run.abort_requested_by:
                return Reply(f"Run {run.id} is already being aborted.")
            run.abort_requested_by = actor.user_id
            run.version_no += 1
            self.audit(session, run, actor, f"{prefix}.abort", "rollback_requested", state_before=state.value)
            # the thread hears it once, from the engine: "Rolling back: aborted by … during “<step>”"
            self.refresh_message(session, run)
            self.store.wake_after_commit(session)
            if run.kind != KIND:
                return Reply(f"Aborting run {run.id}: undoing what it did.")
            return Reply(f"Aborting run {run.id}: rolling back to `{subject(run).previous_image}`.")
        raise Conflict(f"run {run.id} is {run.state}; there is nothing to abort")

    def tick(self, session: Session, *, actor: Actor, run_id: str, env_name: str, step_idx: int) -> Reply:
        run = self.load(session, run_id)
        if run.environment != env_name:
            raise CommandError("this button does not belong to that run")
        step = session.get(RunStep, (run.id, step_idx, Phase.main.value))
        if step is None or step.kind != "checklist":
            raise NotFound("no such checklist item")
        spec = plan_steps(run.plan)[step_idx]
        self.authorizer.require(actor, Role(spec.get("role", "deployer")), run.environment,
                                f"tick “{step.name}”")
        if step.status != "running":
            raise Conflict(f"“{step.name}” is {step.status}, not waiting for a tick")
        if step.data.get("ticked_by"):
            return Reply(f"“{step.name}” was already ticked.")
        step.data = {**step.data, "ticked_by": actor.user_id, "ticked_name": actor.name}
        self.audit(session, run, actor, "deploy.checklist_tick", "ok", step=step.name)
        self.store.wake_after_commit(session)
        return Reply(f"Ticked “{step.name}”.")

    # --- /lock /unlock -------------------------------------------------------------------------------
    def freeze(self, session: Session, *, actor: Actor, env_name: str, reason: str, hours: float) -> locks.LockInfo:
        return locks.acquire(session, env_name, kind="freeze", run_id=None, held_by=actor.user_id,
                             held_by_name=actor.name, reason=reason, ttl=timedelta(hours=hours))

    def active_runs(self, session: Session, env_name: str | None = None) -> list[Run]:
        stmt = select(Run).where(Run.state.in_([s.value for s in ACTIVE]))
        if env_name:
            stmt = stmt.where(Run.environment == env_name)
        return list(session.execute(stmt.order_by(Run.created_at)).scalars())
