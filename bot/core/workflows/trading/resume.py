"""`/resume-trading`: turn trading back on, gradually if asked, watching the KPIs (runbook 5.4, 7.3).

Approval where the environment says so (default: one approver wherever deploys need approval). The run:

1. **Restore replicas** a kill switch scaled to 0 (read from the halt's stop run), and wait for them.
2. **Stages** — `--gradual`: 10 / 25 / 50 / 100 % of bots (configurable), with a monitoring window
   between stages (15 minutes by default) that checks the Prometheus KPIs (error rate, p95 latency,
   order success) every interval; without `--gradual`, 100 % at once. Progress is durable: a restart
   mid-window continues the window, it never jumps to 100 %.
3. The halt recorded by `/stop-trading` is lifted when trading is fully back on.

A KPI over its threshold (or an Abort) halts trading again through the compensation step, and the halt
stays recorded.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot import blocks
from bot.config import CheckSettings, Config
from bot.core import halts
from bot.core.analysis import Check, analyse
from bot.core.model import Actor, Reply
from bot.core.ports import EnvBackends, WorkloadRef
from bot.core.runs.context import StepContext, StepFailed, describe_duration
from bot.core.runs.effects import Change
from bot.core.runs.spec import StepSpec
from bot.core.runs.states import ACTIVE, Phase, RunState, StepStatus
from bot.core.runs.store import RunStore, run_key
from bot.core.runs.workflow import Handler
from bot.core.workflows.deploy.plan import plan_hash
from bot.core.workflows.deploy.steps import plan_checks
from bot.core.workflows.trading.base import TradingWorkflow
from bot.core.workflows.trading.plans import ResumePlan, TradingTarget
from bot.errors import Conflict
from bot.ids import ActionId, encode_value
from bot.persistence.models import Approval, Run, RunStep
from bot.timeutil import utcnow

KIND = "resume_trading"
POLL = 0.5


def _plan(ctx: StepContext) -> ResumePlan:
    if not isinstance(ctx.plan, ResumePlan):
        raise TypeError(f"a resume-trading step got a {type(ctx.plan).__name__} plan")
    return ctx.plan


def _checks(ctx: StepContext) -> list[Check]:
    return plan_checks(_plan(ctx).checks, whole_service=True)  # no canary while trading resumes


def restore_replicas(ctx: StepContext) -> str | None:
    previous: dict[str, int] = dict(_plan(ctx).restore)
    if not previous:
        return "nothing to restore: the kill switch was not used"
    t = _plan(ctx).target
    cluster = ctx.backends.cluster
    for name, replicas in previous.items():
        if cluster.replicas(t.namespace, name) != replicas:
            cluster.scale(t.namespace, name, replicas)
        if name not in (ctx.data.get("scaled") or []):
            ctx.audit("kubernetes.kill_switch.restore", "ok", deployment=name, replicas=replicas)
            ctx.effect(f"replicas:{t.namespace}/{name}", f"{name} replicas", 0, replicas)
            ctx.save(scaled=[*(ctx.data.get("scaled") or []), name])
    for name in previous:
        while True:
            status = cluster.rollout_status(WorkloadRef(t.namespace, name, t.container))
            if status.complete:
                break
            if status.failed:
                raise StepFailed(f"{name}: {status.message}")
            ctx.wait(POLL)
    return "restored " + ", ".join(f"{n} to {r} replicas" for n, r in previous.items())


def stages(ctx: StepContext) -> str | None:
    plan = _plan(ctx)
    fractions = list(plan.fractions)
    window = plan.window_seconds
    interval = min(plan.interval_seconds, max(1.0, window))
    checks = _checks(ctx)
    variables = {"namespace": plan.target.namespace, "deployment": plan.target.deployment,
                 "canary": plan.target.deployment, "version": "stable"}
    for i in range(int(ctx.data.get("stage", 0)), len(fractions)):
        fraction = fractions[i]
        if ctx.data.get("started") != i:
            ctx.backends.trading.start(fraction)
            ctx.audit("trading.start", "ok", fraction=fraction)
            if i == 0:
                ctx.effect("trading", "trading", "stopped", "on" if fraction >= 1 else f"partly on ({fraction:.0%})")
            elif fraction >= 1:
                ctx.effect("trading", "trading", None, "on")
            ctx.save(stage=i, started=i, elapsed=0.0, analysis=f"{fraction:.0%} of bots trading")
        if fraction >= 1 or not checks or window <= 0:
            continue
        elapsed = float(ctx.data.get("elapsed", 0.0))
        while elapsed < window:
            step = min(interval, window - elapsed)
            ctx.wait(step)
            elapsed += step
            result = analyse(ctx.backends.metrics, checks, variables)
            ctx.audit("trading.resume.analysis", result.verdict, fraction=fraction, summary=result.summary())
            ctx.save(elapsed=elapsed, analysis=f"{result.verdict} at {fraction:.0%} after "
                                                f"{describe_duration(elapsed)} ({result.summary()})"[:240])
            if result.verdict == "fail":
                raise StepFailed(f"KPIs at {fraction:.0%} of bots: {result.summary()}")
    return "trading resumed: " + " → ".join(f"{f:.0%}" for f in fractions)


def halt_again(ctx: StepContext) -> str | None:
    """The compensation: stop trading again (retried by the engine until it is done, never skipped)."""
    ctx.backends.trading.stop(f"/resume-trading {ctx.run_id} halted again")
    if not ctx.data.get("stopped"):
        ctx.audit("trading.stop", "ok", why="resume halted again")
        ctx.effect("trading", "trading", None, "stopped")
        ctx.save(stopped=True)
    return "trading halted again"


HANDLERS: dict[str, Handler] = {"restore_replicas": restore_replicas, "stages": stages, "halt_again": halt_again}


class ResumeTradingWorkflow(TradingWorkflow):
    kind = KIND
    audit_prefix = "resume_trading"
    icon = "▶️"
    compensates = True  # an abort or a bad KPI halts trading again
    deadline_seconds = 300.0
    handler_table = HANDLERS

    def __init__(self, config: Config, backends: Callable[[str], EnvBackends]) -> None:
        super().__init__(config, backends)
        self.store: RunStore | None = None

    def plan_of(self, run: Run) -> ResumePlan:
        return ResumePlan.from_json(run.plan)

    def compensation(self, run: Run, steps: Sequence[RunStep]) -> list[StepSpec]:
        touched = any(s.kind == "stages" and s.status != StepStatus.pending.value for s in steps)
        return [StepSpec(0, "halt_again", "Halt trading again", timeout=60.0)] if touched else []

    def title(self, run: Run) -> str:
        return f"Resume trading in {run.environment}" + (" (gradual)" if self.plan_of(run).gradual else "")

    def render(self, run: Run, steps: Sequence[RunStep], approvals: Sequence[Approval]) -> Reply:
        state = RunState(run.state)
        plan = self.plan_of(run)
        stages_text = " → ".join(f"{f:.0%}" for f in plan.fractions)
        window = plan.window_seconds
        facts = [("Stages", stages_text + (f", watching KPIs {describe_duration(window)} between stages"
                                           if plan.gradual and window else "")),
                 ("Approvals", f"{len(approvals)}/{run.approvals_required}"
                  + (": " + ", ".join(f"<@{a.user_id}>" for a in approvals) if approvals else ""))]
        value = {"run": run.id, "env": run.environment}
        buttons = []
        if state == RunState.pending_approval:
            buttons.append(blocks.button("Approve", ActionId.deploy_approve,
                                         encode_value({**value, "h": run.plan_hash[:16]}), style="primary"))
        if state in (RunState.pending_approval, RunState.queued, RunState.running) and not run.abort_requested_by:
            buttons.append(blocks.button("Abort", ActionId.deploy_abort, encode_value(value), style="danger",
                                         confirm=("Abort and halt trading again?", "Trading stops again.")
                                         if state == RunState.running else None))
        return self.message(run, steps, facts, undo_title="Halting again", why_undone="Why trading was halted again",
                            buttons=buttons, footer=f"plan `{run.plan_hash[:12]}`")

    def success_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        by = {s.kind: s for s in steps if s.phase == Phase.main.value}
        parts = [by[k].detail or "" for k in ("restore_replicas", "stages") if k in by]
        return "trading is ON: " + "; ".join(p for p in parts if p)

    def rolled_back_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        if not any(s.phase == Phase.rollback.value for s in steps):
            return "stopped before trading was turned on; trading stays halted"
        return "trading HALTED again; the halt stays recorded"

    def inspect(self, run: Run) -> list[str]:
        try:
            st = self.backends(run.environment).trading.status()
            return [f"trading API: {'trading' if st.trading else 'halted'} ({st.active_bots}/{st.total_bots} bots)"]
        except Exception as exc:  # noqa: BLE001 - a report
            return [f"trading API: unknown ({exc})"]

    def finished(self, session: Session, run: Run, state: RunState, left: Sequence[Change]) -> None:
        if state == RunState.succeeded:
            halts.lift(session, run.environment)
        elif halts.current(session, run.environment) is None:  # halted again without an earlier /stop-trading
            halts.record(session, run.environment, run_id=run.id, halted_by=run.requested_by,
                         halted_by_name=run.requested_name,
                         reason=f"halted again: {run.rollback_reason or run.outcome}", mode="graceful")


class ResumeTradingService:
    def __init__(self, config: Config, store: RunStore, default_checks: Callable[[], list[CheckSettings]]) -> None:
        self.config = config
        self.store = store
        self.default_checks = default_checks

    def request(self, session: Session, *, actor: Actor, channel_id: str | None, correlation_id: str,
                env_name: str, reason: str | None, gradual: bool) -> Reply:
        env = self.config.environments[env_name]
        active = session.execute(select(Run).where(Run.kind.in_([KIND, "stop_trading"]),
                                                   Run.environment == env_name,
                                                   Run.state.in_([s.value for s in ACTIVE]))).scalars().first()
        if active is not None:
            raise Conflict(f"run `{active.id}` ({active.kind.replace('_', ' ')}) is still active in {env_name}",
                           hint="Wait for it to finish, or abort it first.")
        halt = halts.current(session, env_name)
        restore: dict[str, int] = {}
        if halt is not None:
            stop_step = session.execute(select(RunStep).where(RunStep.run_id == halt.run_id,
                                                              RunStep.kind == "kill_switch")).scalar_one_or_none()
            if stop_step is not None and stop_step.status == StepStatus.done.value:
                restore = {k: int(v) for k, v in ((stop_step.data or {}).get("previous") or {}).items()}
        required = env.resume_approvals_required
        if required is None:
            required = 1 if env.approvals_required > 0 else 0
        fractions = list(env.resume_fractions) if gradual else [1.0]
        checks = env.analysis if env.analysis is not None else self.default_checks()
        window = float(env.resume_window_seconds) if gradual else 0.0
        interval = float(env.canary.interval_seconds)
        steps = [StepSpec(0, "restore_replicas", "Restore the replicas the kill switch scaled down", timeout=600.0),
                 StepSpec(1, "stages", "Resume trading " + " → ".join(f"{f:.0%}" for f in fractions)
                          + (f" (KPIs watched {describe_duration(window)} between stages)" if window else ""),
                          timeout=window * len(fractions) + 600.0, estimate=window * max(0, len(fractions) - 1))]
        plan = ResumePlan(gradual, tuple(fractions), window, interval, reason, actor.user_id,
                          TradingTarget(env.namespace, env.deployment, env.container),
                          tuple(env.trading_deployments or [env.deployment]),
                          tuple(c.model_dump() for c in checks), tuple(steps), restore).to_json()
        run_id = "r-" + secrets.token_hex(4)
        now = utcnow()
        state = RunState.pending_approval if required > 0 else RunState.queued
        run = Run(id=run_id, kind=KIND, environment=env_name, subject={"v": 1, "gradual": gradual}, dry_run=False,
                  reason=reason, requested_by=actor.user_id, requested_name=actor.name, channel=env.channels.deploy,
                  plan=plan, plan_hash=plan_hash(plan), approvals_required=required, state=state.value,
                  version_no=1, created_at=now, correlation_id=correlation_id,
                  expires_at=now + timedelta(minutes=env.approval_ttl_minutes) if required else None)
        session.add(run)
        for s in steps:
            session.add(RunStep(run_id=run_id, idx=s.idx, phase=Phase.main.value, kind=s.kind, name=s.name,
                                status=StepStatus.pending.value, attempts=0, data={}))
        session.flush()
        self.store.audit(session, run, actor, "trading.resume.requested", state.value, gradual=gradual,
                         reason=reason, approvals_required=required, halt=halt.describe() if halt else None)
        self.store.outbox.post(session, run.channel, self.store.workflow(run).render(
            run, self.store.steps(session, run_id), []), key=run_key(run_id))
        if state == RunState.queued:
            self.store.wake_after_commit(session)
        where = "" if channel_id == run.channel else f" in <#{run.channel}>"
        if required:
            return Reply(f"Resume of trading in {env_name} planned{where} (run `{run_id}`); it needs {required} "
                         f"approval(s) from approvers other than you.")
        return Reply(f"Resuming trading in {env_name} (run `{run_id}`): "
                     + " → ".join(f"{f:.0%}" for f in fractions) + f". Follow it{where or ' here'}.")


__all__ = ["ResumeTradingService", "ResumeTradingWorkflow"]
