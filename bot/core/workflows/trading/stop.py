"""`/stop-trading`: halt trading now, verify it, and fall back to the kill switch (runbook 5.1, 8.2).

No approval and no environment lock — a safety action must not wait for anyone or anything. The run:

1. **Ask the trading API to stop** — graceful (stop opening positions, cancel resting orders, keep
   positions: freqtrade's stopentry + cancel) or `--emergency` (halt everything). Transient faults are
   retried for a few seconds; if the API still fails the step is skipped and the kill switch takes over.
2. **Verify** — poll the API's status until no bot trades and no order is open, within the environment's
   `stop_verify_seconds`. An API that claims success but keeps trading fails verification.
3. **Kill switch** — only when the halt is not verified: scale the environment's trading Deployments to
   0 through Kubernetes, recording the previous replica counts (a resume restores them), and wait until
   no pod is left.

A halt is recorded for the environment as soon as the stop is requested, so no other workflow turns
trading back on behind the operator's back; `/resume-trading` lifts it. A second `/stop-trading` while
one runs joins it. The final message says exactly what was done, what was verified and what was not.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot import blocks
from bot.config import Config
from bot.core import halts
from bot.core.model import Actor, Reply
from bot.core.ports import StopMode, TradingStatus, WorkloadRef
from bot.core.runs.context import Skipped, StepContext, describe_duration
from bot.core.runs.effects import Change
from bot.core.runs.spec import RetryPolicy, StepSpec
from bot.core.runs.states import ACTIVE, Phase, RunState, StepStatus
from bot.core.runs.store import RunStore, run_key
from bot.core.runs.workflow import Handler
from bot.core.workflows.trading.base import TradingWorkflow
from bot.core.workflows.trading.plans import StopPlan, TradingTarget
from bot.errors import BackendUnavailable, ChatOpsError
from bot.persistence.models import Approval, Run, RunStep
from bot.timeutil import utcnow

KIND = "stop_trading"
POLL = 0.5
API_STOP_SECONDS = 10.0  # how long the API call itself is retried before the kill switch takes over
#: retry fast: every second counts while trading is not halted
STOP_RETRY = RetryPolicy(initial_seconds=0.2, backoff=2.0, max_seconds=2.0, jitter=0.2)


@dataclass(frozen=True)
class StopSubject:
    VERSION = 1

    mode: str  # graceful | emergency

    def to_json(self) -> dict[str, Any]:
        return {"v": self.VERSION, "mode": self.mode}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StopSubject:
        if data.get("v") != cls.VERSION:
            raise ValueError(f"unsupported stop subject version {data.get('v')!r}")
        return cls(str(data["mode"]))


def _plan(ctx: StepContext) -> StopPlan:
    if not isinstance(ctx.plan, StopPlan):
        raise TypeError(f"a stop-trading step got a {type(ctx.plan).__name__} plan")
    return ctx.plan


def halted(status: TradingStatus) -> tuple[bool, str]:
    """Is trading verifiably halted? (no bot trading, no open order), and what the API shows."""
    orders = status.open_orders if status.open_orders is not None else status.detail.get("open_orders")
    shown = (f"{status.active_bots}/{status.total_bots} bots trading"
             + (f", {orders} open orders" if orders is not None else ", open orders not reported"))
    ok = not status.trading and status.active_bots == 0 and (orders is None or int(orders) == 0)
    return ok, shown


def _main_data(ctx: StepContext, kind: str) -> dict[str, Any]:
    with ctx.executor.db.read() as session:
        row = session.execute(select(RunStep).where(RunStep.run_id == ctx.run_id, RunStep.kind == kind,
                                                    RunStep.phase == Phase.main.value)).scalar_one_or_none()
        return dict(row.data or {}) if row is not None else {}


# --- steps ------------------------------------------------------------------------------------------------
def api_stop(ctx: StepContext) -> str | None:
    plan = _plan(ctx)
    mode = plan.mode
    reason = f"/stop-trading by {plan.requested_by} (run {ctx.run_id})" + (f": {plan.reason}" if plan.reason else "")
    trading = ctx.backends.trading
    attempt = 0
    while True:  # retried here, not by the engine: when time is up the kill switch must still run
        try:
            trading.stop(reason, mode=mode)
            break
        except BackendUnavailable as exc:
            attempt += 1
            delay = STOP_RETRY.delay(attempt)
            if ctx.left() <= delay + 1.0:
                ctx.save(api_error=exc.message)
                raise Skipped(f"the trading API did not answer ({exc.message}, {attempt} attempt(s)); the kill "
                              "switch takes over") from None
            ctx.note(f":warning: trading API: {exc.message} — retry {attempt} in {delay:.1f}s")
            ctx.wait(delay)
        except ChatOpsError as exc:
            ctx.save(api_error=exc.message)
            raise Skipped(f"the trading API refused ({exc.message}); the kill switch takes over") from None
    if not ctx.data.get("asked"):
        ctx.audit("trading.stop", "ok", mode=mode)
        ctx.effect("trading", "trading", "on", "stopped")
        ctx.save(asked=True)
    return f"the trading API accepted the {mode} stop"


def verify(ctx: StepContext) -> str | None:
    seconds = _plan(ctx).verify_seconds
    end = time.monotonic() + max(0.0, seconds - float(ctx.data.get("waited", 0.0)))
    shown, last_error = "no answer", None
    while True:
        try:
            ok, shown = halted(ctx.backends.trading.status())
            last_error = None
            if ok:
                ctx.save(verified=True, shown=shown)
                ctx.audit("trading.stop.verified", "ok", shown=shown)
                return f"verified: {shown}"
        except ChatOpsError as exc:
            last_error = exc.message
        if time.monotonic() >= end:
            why = f"the trading API is unreachable ({last_error})" if last_error else f"the API still shows {shown}"
            ctx.save(verified=False, shown=shown, why=why)
            ctx.audit("trading.stop.verified", "failed", why=why)
            raise Skipped(f"not verified after {describe_duration(seconds)}: {why}; the kill switch takes over")
        ctx.wait(POLL)


def kill_switch(ctx: StepContext) -> str | None:
    if _main_data(ctx, "verify").get("verified"):
        raise Skipped("not needed: the trading API shows the halt")
    plan = _plan(ctx)
    t = plan.target
    ns, cluster = t.namespace, ctx.backends.cluster
    previous: dict[str, int] = dict(ctx.data.get("previous") or {})
    for name in plan.deployments:
        if name not in previous:
            previous[name] = cluster.replicas(ns, name)
            ctx.save(previous=previous)
        if cluster.replicas(ns, name) != 0:
            cluster.scale(ns, name, 0)
        if name not in (ctx.data.get("scaled") or []):
            ctx.audit("kubernetes.kill_switch.scale", "ok", deployment=name, previous=previous[name])
            ctx.effect(f"replicas:{ns}/{name}", f"{name} replicas", previous[name], 0)
            ctx.save(scaled=[*(ctx.data.get("scaled") or []), name])
    while True:  # no pod may be left running
        left = {}
        for name in plan.deployments:
            status = cluster.rollout_status(WorkloadRef(ns, name, t.container))
            if status.available or status.desired:
                left[name] = status.available
        if not left:
            break
        ctx.wait(POLL)
    ctx.audit("kubernetes.kill_switch", "ok", previous=previous)
    return "kill switch: " + ", ".join(f"{n} scaled {previous[n]} → 0" for n in plan.deployments)


HANDLERS: dict[str, Handler] = {"api_stop": api_stop, "verify": verify, "kill_switch": kill_switch}


# --- the workflow -----------------------------------------------------------------------------------------
class StopTradingWorkflow(TradingWorkflow):
    kind = KIND
    audit_prefix = "stop_trading"
    icon = "🛑"
    compensates = False
    deadline_seconds = 60.0
    handler_table = HANDLERS

    def plan_of(self, run: Run) -> StopPlan:
        return StopPlan.from_json(run.plan)

    def compensation(self, run: Run, steps: Sequence[RunStep]) -> list[StepSpec]:
        return []  # a stop is never undone by the engine: /resume-trading does that, deliberately

    def retry_policy(self, run: Run, spec: StepSpec, phase: Phase) -> RetryPolicy:
        return STOP_RETRY

    def title(self, run: Run) -> str:
        mode = StopSubject.from_json(run.subject).mode
        return f"Stop trading in {run.environment}" + (" (EMERGENCY)" if mode == "emergency" else "")

    def render(self, run: Run, steps: Sequence[RunStep], approvals: Sequence[Approval]) -> Reply:
        return self.message(run, steps, [("Mode", StopSubject.from_json(run.subject).mode)],
                            footer=f"`/resume-trading --env {run.environment}` resumes trading")

    def _by_kind(self, steps: Sequence[RunStep]) -> dict[str, RunStep]:
        return {s.kind: s for s in steps if s.phase == Phase.main.value}

    def success_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        by = self._by_kind(steps)
        api, check, kill = by.get("api_stop"), by.get("verify"), by.get("kill_switch")
        parts = []
        if api is not None and api.status == StepStatus.done.value:
            parts.append("the trading API accepted the stop")
        elif api is not None:
            parts.append(f"the trading API could not stop trading ({api.detail})")
        if check is not None and (check.data or {}).get("verified"):
            parts.append(f"halt verified by the trading API ({(check.data or {}).get('shown')})")
            return "trading HALTED: " + "; ".join(parts)
        if check is not None:
            parts.append(f"halt NOT verified by the API ({(check.data or {}).get('why') or check.detail})")
        if kill is not None and kill.status == StepStatus.done.value:
            parts.append(f"{kill.detail}; no trading pod is running")
            return "trading HALTED by the kill switch: " + "; ".join(parts)
        return "trading state UNKNOWN: " + "; ".join(parts)

    def rolled_back_outcome(self, run: Run, steps: Sequence[RunStep], left: Sequence[Change]) -> str:
        return "stopped"  # never compensated

    def inspect(self, run: Run) -> list[str]:
        out = []
        backends = self.backends(run.environment)
        try:
            ok, shown = halted(backends.trading.status())
            out.append(f"trading API: {'halted' if ok else 'NOT halted'} ({shown})")
        except ChatOpsError as exc:
            out.append(f"trading API: unknown ({exc.message})")
        plan = self.plan_of(run)
        t = plan.target
        for name in plan.deployments:
            try:
                out.append(f"{name} replicas: {backends.cluster.replicas(t.namespace, name)}")
            except ChatOpsError as exc:
                out.append(f"{name} replicas: unknown ({exc.message})")
        return out

    def finished(self, session: Session, run: Run, state: RunState, left: Sequence[Change]) -> None:
        return None  # the halt stays until /resume-trading


class StopTradingService:
    def __init__(self, config: Config, store: RunStore) -> None:
        self.config = config
        self.store = store

    def active(self, session: Session, env_name: str) -> Run | None:
        return session.execute(select(Run).where(Run.kind == KIND, Run.environment == env_name,
                                                 Run.state.in_([s.value for s in ACTIVE]))
                               .order_by(Run.created_at)).scalars().first()

    def request(self, session: Session, *, actor: Actor, channel_id: str | None, correlation_id: str,
                env_name: str, reason: str | None, emergency: bool) -> Reply:
        env = self.config.environments[env_name]
        running = self.active(session, env_name)
        if running is not None:
            self.store.audit(session, running, actor, "trading.stop.joined", "joined")
            self.store.thread(session, running, f"{actor.mention} asked to stop trading too; joined this run.")
            return Reply(f"A stop of trading in {env_name} is already running (run `{running.id}`); you joined it. "
                         f"Follow it in <#{running.channel}>.")
        mode: StopMode = "emergency" if emergency else "graceful"
        run_id = "r-" + secrets.token_hex(4)
        verify_timeout = float(env.stop_verify_seconds)
        steps = [StepSpec(0, "api_stop", f"Stop trading ({mode}) through the trading API", timeout=API_STOP_SECONDS,
                          estimate=1.0),
                 StepSpec(1, "verify", "Verify: no bot trading, no open orders", timeout=verify_timeout + 30,
                          estimate=2.0),
                 StepSpec(2, "kill_switch", "Kill switch: scale trading to 0 if not verified", timeout=300.0,
                          estimate=0.0)]
        plan = StopPlan(mode, reason, actor.user_id, verify_timeout,
                        TradingTarget(env.namespace, env.deployment, env.container),
                        tuple(env.trading_deployments or [env.deployment]), tuple(steps)).to_json()
        now = utcnow()
        run = Run(id=run_id, kind=KIND, environment=env_name, subject=StopSubject(mode).to_json(), dry_run=False,
                  reason=reason, requested_by=actor.user_id, requested_name=actor.name, channel=env.channels.deploy,
                  plan=plan, plan_hash="-", approvals_required=0, state=RunState.queued.value, version_no=1,
                  created_at=now, correlation_id=correlation_id, expires_at=None)
        session.add(run)
        for s in steps:
            session.add(RunStep(run_id=run_id, idx=s.idx, phase=Phase.main.value, kind=s.kind, name=s.name,
                                status=StepStatus.pending.value, attempts=0, data={}))
        halts.record(session, env_name, run_id=run_id, halted_by=actor.user_id, halted_by_name=actor.name,
                     reason=reason, mode=mode)
        session.flush()
        self.store.audit(session, run, actor, "trading.stop.requested", "queued", mode=mode, reason=reason)
        self.store.outbox.post(session, run.channel, self.store.workflow(run).render(run, self.store.steps(
            session, run_id), []), key=run_key(run_id))
        self.store.alert(session, run, f"🛑 {actor.mention} is stopping trading in {env_name} ({mode})"
                                       + (f": {blocks.user_text(reason)}" if reason else ""))
        self.store.wake_after_commit(session)
        where = "" if channel_id == run.channel else f" in <#{run.channel}>"
        return Reply(f"Stopping trading in {env_name} ({mode}), run `{run_id}`: the API is asked now, then the halt "
                     f"is verified (kill switch if it is not). Follow it{where or ' here'}.")


__all__ = ["StopTradingService", "StopTradingWorkflow", "halted"]
