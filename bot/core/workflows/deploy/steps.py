"""Step handlers (runbook 5.2-5.4, 8.2, 8.5, 8.6) and the rollback plan. Every handler is idempotent:
it keeps its progress in `ctx.data`, so a resumed step continues instead of starting over."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bot.core import halts
from bot.core.analysis import Check
from bot.core.runs.context import Skipped, StepContext, StepFailed
from bot.core.runs.spec import StepSpec
from bot.core.runs.states import TOUCHED_STEP, Phase, StepStatus
from bot.core.workflows.deploy.common import POLL, plan, record_image, variables, wait_rollout
from bot.core.workflows.deploy.gate import AnalysisGate, GateLimits
from bot.core.workflows.deploy.model import CheckSpec
from bot.core.workflows.deploy.plan import plan_of
from bot.core.workflows.deploy.strategies import analysis_signals, error_limit, strategy_of
from bot.persistence.models import Run, RunStep


def plan_checks(checks: Sequence[Mapping[str, Any] | CheckSpec], *, whole_service: bool = False) -> list[Check]:
    """Checks stored as JSON (or typed) made runnable; `whole_service` drops the canary selector."""
    return [(c if isinstance(c, CheckSpec) else CheckSpec.from_json(c)).check(whole_service=whole_service)
            for c in checks]


# --- deploy steps --------------------------------------------------------------------------------------
def checklist(ctx: StepContext) -> str | None:
    if not ctx.spec.get("blocking", True):
        raise Skipped("reminder only (not blocking)")
    while True:
        data = ctx.fresh_data()
        if data.get("ticked_by"):
            ctx.data.update(data)
            return f"ticked by {data.get('ticked_name') or data['ticked_by']}"
        ctx.wait(1.0)


def precheck(ctx: StepContext) -> str | None:
    p = plan(ctx)
    live = ctx.backends.cluster.current_image(p.target.ref)
    if live != p.previous_image and live != p.image:
        raise StepFailed(f"the live image changed since the plan was made (now `{live}`); request the deploy again")
    notes = [f"cluster reachable, live image `{live}`"]
    if any(s.kind.startswith("trading") for s in p.steps):
        status = ctx.backends.trading.status()
        notes.append(f"trading API reachable ({status.active_bots}/{status.total_bots} bots active)")
    return "; ".join(notes)


TRADING, MAINTENANCE = "trading", "maintenance"


def trading_stop(ctx: StepContext) -> str | None:
    ctx.backends.trading.stop(f"deploy {plan(ctx).version} (run {ctx.run_id})")
    if not ctx.data.get("stopped"):
        ctx.audit("trading.stop", "ok")
        ctx.effect(TRADING, "trading", "on", "stopped")
        ctx.save(stopped=True)
    return "trading stopped"


def _maintenance(ctx: StepContext, on: bool) -> str:
    ctx.backends.trading.maintenance(on)
    if ctx.data.get("set") != on:
        ctx.audit("trading.maintenance", "on" if on else "off")
        ctx.effect(MAINTENANCE, "maintenance mode", not on, on)
        ctx.save(set=on)
    return f"maintenance mode {'on' if on else 'off'}"


def maintenance_on(ctx: StepContext) -> str | None:
    return _maintenance(ctx, True)


def maintenance_off(ctx: StepContext) -> str | None:
    return _maintenance(ctx, False)


def trading_resume(ctx: StepContext) -> str | None:
    with ctx.executor.db.read() as session:
        halt = halts.current(session, ctx.environment)
    if halt is not None:
        raise Skipped(f"trading stays halted: {halt.describe()}; `/resume-trading` lifts the halt")
    fractions = ctx.spec.get("fractions") or [1.0]
    for i in range(ctx.data.get("next", 0), len(fractions)):
        if i > 0:
            ctx.wait(float(ctx.spec.get("pause_seconds", 60)))
        ctx.backends.trading.start(float(fractions[i]))
        ctx.audit("trading.start", "ok", fraction=fractions[i])
        ctx.save(next=i + 1, fraction=fractions[i])
        if float(fractions[i]) >= 1.0:
            ctx.effect(TRADING, "trading", "stopped", "on")
        elif i == 0:
            ctx.effect(TRADING, "trading", "stopped", f"partly on ({float(fractions[i]):.0%})")
    return f"trading resumed ({' → '.join(f'{f:.0%}' for f in fractions)})"


def _substitute(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in values.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def job(ctx: StepContext) -> str | None:
    p = plan(ctx)
    ns = p.target.namespace
    name = re.sub(r"[^a-z0-9-]", "-", f"{ctx.run_id}-{ctx.spec.get('job')}".lower())[:63].strip("-")
    manifest = _substitute(copy.deepcopy(ctx.spec.get("template")), {"version": p.version, "image": p.image,
                                                                     "run": ctx.run_id})
    manifest.setdefault("apiVersion", "batch/v1")
    manifest.setdefault("kind", "Job")
    manifest.setdefault("metadata", {})["name"] = name
    manifest["metadata"].setdefault("labels", {}).update({"swarm-chatops/run": ctx.run_id})
    if not ctx.data.get("created"):
        ctx.backends.cluster.create_job(ns, manifest)
        ctx.audit("kubernetes.job.create", "ok", job=name)
        ctx.save(created=True, job=name)
    while True:
        status = ctx.backends.cluster.job_status(ns, name)
        if status.succeeded:
            return f"job {name} succeeded"
        if status.failed:
            tail = ctx.backends.cluster.job_log_tail(ns, name)
            ctx.note(f":x: Job `{name}` failed: {status.message}\n```{tail[-2500:]}```")
            why = status.message or "see the log in the thread"
            raise StepFailed(why if name in why else f"job {name} failed: {why}")
        ctx.wait(POLL)


def health(ctx: StepContext) -> str | None:
    probes = ctx.spec.get("probes") or []
    if not probes:
        return "no HTTP probes configured; Kubernetes readiness only"
    passed = []
    for probe in probes:
        while True:
            result = ctx.backends.probe.check(probe["url"], probe.get("expect") or {})
            if result.ok:
                passed.append(probe["name"])
                break
            ctx.data["last_probe_failure"] = f"{probe['name']}: {result.detail}"
            try:
                ctx.wait(2.0)
            except StepFailed:
                raise StepFailed(f"{probe['name']} ({probe['url']}): {result.detail}") from None
    return "healthy: " + ", ".join(passed)


def monitor(ctx: StepContext) -> str | None:
    """Runbook 5.4: watch the whole service for the window; a failed interval rolls back."""
    p = plan(ctx)
    seconds = float(ctx.spec.get("seconds", 900))
    interval = min(p.canary.interval_seconds if p.canary is not None else 30.0, max(1.0, seconds))
    gate = AnalysisGate(ctx=ctx, label="Monitoring", failing_as="monitoring window",
                        checks=p.canary_checks(whole_service=True), variables=variables(ctx), interval=interval,
                        window=seconds, limits=GateLimits(failure_limit=1, inconclusive_limit=None,
                                                          error_limit=error_limit(p), intervals_required=None),
                        audit_args={"window": "monitor"}, signals=analysis_signals(ctx))
    gate.run()
    return f"watched {seconds:.0f}s: no check failed{gate.unmeasured()}"


# --- rollout ----------------------------------------------------------------------------------------------
def rollout(ctx: StepContext) -> str | None:
    """Runbook 5.3: the plan's strategy rolls the new version out (see `strategies`)."""
    return strategy_of(plan(ctx)).apply(ctx)


HANDLERS = {"checklist": checklist, "precheck": precheck, "trading_stop": trading_stop,
            "maintenance_on": maintenance_on, "maintenance_off": maintenance_off, "trading_resume": trading_resume,
            "job": job, "rollout": rollout, "health": health, "monitor": monitor}


# --- rollback --------------------------------------------------------------------------------------------
def restore(ctx: StepContext) -> str | None:
    """Put the workload back as it was before the run (runbook 8.2 step 2, 8.5 switch back, 8.6 0 %): the
    strategy puts traffic back, then the previous image is set again if it is not live. Idempotent: every
    call compares with the cluster, so a retried or resumed restore continues."""
    p = plan(ctx)
    cluster = ctx.backends.cluster
    rollout_data: dict[str, Any] = dict(ctx.spec.get("rollout_data") or {})
    done = strategy_of(p).restore(ctx, rollout_data)
    live = cluster.current_image(p.target.ref)
    if live != p.previous_image:
        cluster.set_image(p.target.ref, p.previous_image)
        ctx.audit("kubernetes.set_image", "rollback", image=p.previous_image)
        record_image(ctx, live, p.previous_image)
        done.append(f"{p.target.deployment} set back to `{p.previous_image}`")
    wait_rollout(ctx, p.target.ref, p.target.deployment)
    return "; ".join(done) or "nothing had changed in the cluster"


ROLLBACK_HANDLERS = {"restore": restore, "rb_health": health, "rb_maintenance_off": maintenance_off,
                     "rb_trading_resume": trading_resume}


def rollback_plan(run: Run, steps: list[RunStep]) -> list[StepSpec]:
    """The compensation plan: undo, in reverse order of doing, what the recorded main steps did."""
    main = [st for st in steps if st.phase == Phase.main.value]
    by_kind = {st.kind: st for st in main}
    touched = {st.kind for st in main if st.status in TOUCHED_STEP}
    finished = {st.kind for st in main if st.status == StepStatus.done.value}
    p = plan_of(run)
    specs_in_plan = p.steps
    timeout = p.rollout_timeout + 60
    out: list[StepSpec] = []

    def add(kind: str, name: str, timeout: float, **params: Any) -> None:
        out.append(StepSpec(idx=len(out), kind=kind, name=name, timeout=timeout, params=params))

    rollout_step = by_kind.get("rollout")
    if "rollout" in touched or "job" in touched:
        add("restore", f"Restore `{p.previous_image}`", timeout,
            rollout_data=dict(rollout_step.data or {}) if rollout_step else {})
        health = next((sp for sp in specs_in_plan if sp.kind == "health"), None)
        add("rb_health", "Verify health after rollback", 180.0,
            probes=list(health.get("probes") or []) if health else [])
    # only undo what this run did and has not undone itself: trading already fully resumed stays as it is
    if "maintenance_on" in finished and "maintenance_off" not in finished:
        add("rb_maintenance_off", "Maintenance mode off", 60.0)
    if "trading_stop" in finished and "trading_resume" not in finished:
        resume = next((sp for sp in specs_in_plan if sp.kind == "trading_resume"), None)
        add("rb_trading_resume", "Resume trading gradually (runbook 8.2 step 5)", 3600.0,
            fractions=list(resume.get("fractions", [0.25, 0.5, 1.0]) if resume else [0.25, 0.5, 1.0]),
            pause_seconds=resume.get("pause_seconds", 60) if resume else 60)
    return out
