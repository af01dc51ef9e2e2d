"""Step handlers (runbook 5.2-5.4, 8.2, 8.5, 8.6) and the rollback plan. Every handler is idempotent:
it keeps its progress in `ctx.data`, so a resumed step continues instead of starting over."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from bot.core import halts
from bot.core.analysis import AnalysisTracker, Check, analyse
from bot.core.ports import WorkloadRef
from bot.core.runs.context import Skipped, StepContext, StepFailed
from bot.core.runs.spec import StepSpec
from bot.core.runs.states import TOUCHED_STEP, Phase, StepStatus
from bot.core.workflows.deploy.correlation import analysis_wait
from bot.core.workflows.deploy.plan import plan_steps
from bot.persistence.models import Run, RunStep

POLL = 0.5
#: labels on the canary's pods; the default analysis queries select `version="canary"`
CANARY_LABELS = {"version": "canary", "track": "canary"}


def _ref(ctx: StepContext) -> WorkloadRef:
    t = ctx.plan["target"]
    return WorkloadRef(t["namespace"], t["deployment"], t["container"])


def _image_key(ctx: StepContext) -> tuple[str, str]:
    t = ctx.plan["target"]
    return f"image:{t['namespace']}/{t['deployment']}", f"{t['deployment']} image"


def _record_image(ctx: StepContext, before: str, after: str) -> None:
    key, label = _image_key(ctx)
    ctx.effect(key, label, before, after)


def _variables(ctx: StepContext) -> dict[str, str]:
    t = ctx.plan["target"]
    return {"namespace": t["namespace"], "deployment": t["deployment"], "canary": f"{t['deployment']}-canary",
            "version": ctx.plan["version"]}


def plan_checks(checks: list[dict[str, Any]], *, whole_service: bool = False) -> list[Check]:
    """The plan's checks; `whole_service` drops the canary selector (no canary: judge every version)."""
    out = []
    for c in checks:
        query = c["query"]
        if whole_service:
            query = re.sub(r',\s*version="canary"|version="canary"\s*,?', "", query)
        out.append(Check(c["name"], query, c["op"], float(c["threshold"]), c.get("unit", "")))
    return out


def _checks(ctx: StepContext, *, whole_service: bool = False) -> list[Check]:
    return plan_checks(ctx.plan["checks"], whole_service=whole_service)


def wait_rollout(ctx: StepContext, ref: WorkloadRef, what: str) -> None:
    timeout = float(ctx.plan.get("rollout_timeout", 600))
    waited = 0.0
    while True:
        status = ctx.backends.cluster.rollout_status(ref)
        if status.complete:
            return
        if status.failed:
            raise StepFailed(f"{what}: rollout failed — {status.message or 'progress deadline exceeded'}")
        if waited > timeout:
            raise StepFailed(f"{what}: rollout not complete after {timeout:.0f}s "
                             f"({status.available}/{status.desired} available)")
        ctx.wait(POLL)
        waited += POLL


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
    live = ctx.backends.cluster.current_image(_ref(ctx))
    if live != ctx.plan["previous_image"] and live != ctx.plan["image"]:
        raise StepFailed(f"the live image changed since the plan was made (now {live}); request the deploy again")
    notes = [f"cluster reachable, live image {live}"]
    if any(s.kind.startswith("trading") for s in plan_steps(ctx.plan)):
        status = ctx.backends.trading.status()
        notes.append(f"trading API reachable ({status.active_bots}/{status.total_bots} bots active)")
    return "; ".join(notes)


TRADING, MAINTENANCE = "trading", "maintenance"


def trading_stop(ctx: StepContext) -> str | None:
    ctx.backends.trading.stop(f"deploy {ctx.plan['version']} (run {ctx.run_id})")
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


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in variables.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    return value


def job(ctx: StepContext) -> str | None:
    t = ctx.plan["target"]
    name = re.sub(r"[^a-z0-9-]", "-", f"{ctx.run_id}-{ctx.spec.get('job')}".lower())[:63].strip("-")
    manifest = _substitute(copy.deepcopy(ctx.spec.get("template")), {"version": ctx.plan["version"],
                                                                 "image": ctx.plan["image"], "run": ctx.run_id})
    manifest.setdefault("apiVersion", "batch/v1")
    manifest.setdefault("kind", "Job")
    manifest.setdefault("metadata", {})["name"] = name
    manifest["metadata"].setdefault("labels", {}).update({"swarm-chatops/run": ctx.run_id})
    if not ctx.data.get("created"):
        ctx.backends.cluster.create_job(t["namespace"], manifest)
        ctx.audit("kubernetes.job.create", "ok", job=name)
        ctx.save(created=True, job=name)
    while True:
        status = ctx.backends.cluster.job_status(t["namespace"], name)
        if status.succeeded:
            return f"job {name} succeeded"
        if status.failed:
            tail = ctx.backends.cluster.job_log_tail(t["namespace"], name)
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
    seconds = float(ctx.spec.get("seconds", 900))
    interval = float(ctx.plan.get("canary", {}).get("interval_seconds", 30.0)) if ctx.plan.get("canary") else 30.0
    interval = min(interval, max(1.0, seconds))
    elapsed = float(ctx.data.get("elapsed", 0.0))
    checks = _checks(ctx, whole_service=True)
    while elapsed < seconds:
        analysis_wait(ctx, min(interval, seconds - elapsed))  # an alert fails the window at once
        elapsed += min(interval, seconds - elapsed)
        result = analyse(ctx.backends.metrics, checks, _variables(ctx))
        ctx.audit("deploy.analysis", result.verdict, window="monitor", summary=result.summary())
        ctx.note(f"Monitoring ({elapsed:.0f}/{seconds:.0f}s): *{result.verdict}* — {result.summary()}")
        ctx.save(elapsed=elapsed, analysis=f"{result.verdict} ({result.summary()})"[:200])
        if result.verdict == "fail":
            raise StepFailed(f"monitoring window: {result.summary()}")
    return f"watched {seconds:.0f}s: no check failed"


# --- rollout strategies -----------------------------------------------------------------------------------
def rollout(ctx: StepContext) -> str | None:
    strategy = ctx.plan["strategy"]
    if strategy == "canary":
        return canary(ctx)
    if strategy == "blue-green":
        return blue_green(ctx)
    ref = _ref(ctx)
    ctx.backends.cluster.set_image(ref, ctx.plan["image"])
    if not ctx.data.get("patched"):
        ctx.audit("kubernetes.set_image", "ok", image=ctx.plan["image"])
        _record_image(ctx, ctx.plan["previous_image"], ctx.plan["image"])
        ctx.save(patched=True)
    wait_rollout(ctx, ref, ctx.plan["target"]["deployment"])
    return f"{ctx.plan['image']} rolled out"


def _canary_name(ctx: StepContext) -> str:
    return f"{ctx.plan['target']['deployment']}-canary"


def canary(ctx: StepContext) -> str | None:
    c = ctx.plan["canary"]
    cluster = ctx.backends.cluster
    ref = _ref(ctx)
    t = ctx.plan["target"]
    name = _canary_name(ctx)
    if "stable_replicas" not in ctx.data:
        ctx.save(stable_replicas=cluster.replicas(t["namespace"], t["deployment"]))
    total = max(1, int(ctx.data["stable_replicas"]))
    checks = _checks(ctx)
    weights: list[int] = c["steps"]
    for i in range(int(ctx.data.get("step", 0)), len(weights)):
        weight = weights[i]
        if ctx.data.get("weight") != weight or ctx.data.get("step") != i:
            ctx.save(step=i, weight=weight, analysis="starting", tracker=None)
        canary_ref = WorkloadRef(t["namespace"], name, t["container"])
        if c["router"] == "istio":
            cluster.ensure_copy(ref, name, ctx.plan["image"], total, CANARY_LABELS)
            wait_rollout(ctx, canary_ref, name)
            cluster.set_virtual_service_weights(t["namespace"], c.get("virtual_service") or t["deployment"],
                                                c.get("host") or t["deployment"], c["stable_subset"],
                                                c["canary_subset"], weight)
        else:
            canary_n = max(1, math.ceil(total * weight / 100))
            cluster.ensure_copy(ref, name, ctx.plan["image"], canary_n, CANARY_LABELS)
            cluster.scale(t["namespace"], t["deployment"], max(0, total - canary_n))
            wait_rollout(ctx, canary_ref, name)
        if ctx.data.get("applied") != weight:  # a resumed step re-applies (idempotently) but records once
            ctx.audit("kubernetes.canary_weight", "ok", weight=weight, router=c["router"])
            previous = ctx.data.get("applied") or 0
            ctx.effect(f"canary:{t['namespace']}/{name}", f"canary {name}", f"{previous}% traffic" if previous
                       else None, f"{weight}% traffic")
            if c["router"] != "istio":
                ctx.effect(f"replicas:{t['namespace']}/{t['deployment']}", f"{t['deployment']} replicas", total,
                           max(0, total - max(1, math.ceil(total * weight / 100))))
            ctx.save(applied=weight)
        tracker = (AnalysisTracker.from_dict(ctx.data["tracker"]) if ctx.data.get("tracker") else
                   AnalysisTracker(failure_limit=c["failure_limit"], inconclusive_limit=c["inconclusive_limit"],
                                   intervals_required=c["intervals_per_step"], error_limit=c.get("error_limit", 4)))
        while not tracker.decided:
            analysis_wait(ctx, float(c["interval_seconds"]))  # an alert fails the analysis at once
            result = analyse(ctx.backends.metrics, checks, _variables(ctx))
            down = result.unreachable
            if down is not None:  # no metric could be read: an error, counted apart (consecutive limit)
                decision = tracker.record_error(down)
                ctx.audit("deploy.analysis", "error", weight=weight, decision=decision, cause=down,
                          consecutive=tracker.consecutive_errors)
                ctx.note(f"Canary {weight}%: *no analysis* — {down} ({tracker.consecutive_errors} of "
                         f"{tracker.error_limit} in a row)")
                ctx.save(tracker=tracker.to_dict(), analysis=f"no analysis at {weight}%: {down}"[:240])
                if decision == "rollback":
                    raise StepFailed(f"{tracker.reason} → rolled back (at {weight}%)")
                continue
            decision = tracker.record(result)
            ctx.audit("deploy.analysis", result.verdict, weight=weight, decision=decision, summary=result.summary())
            ctx.note(f"Canary {weight}%: *{result.verdict}* — {result.summary()}")
            ctx.save(tracker=tracker.to_dict(), analysis=f"{result.verdict} at {weight}% ({result.summary()})"[:240])
            if decision == "rollback":
                raise StepFailed(f"canary analysis at {weight}%: {tracker.reason} — {result.summary()}")
    # promote: the stable Deployment takes the new version, the canary goes away
    ctx.save(promoting=True, analysis="promoting")
    cluster.set_image(ref, ctx.plan["image"])
    cluster.scale(t["namespace"], t["deployment"], total)
    wait_rollout(ctx, ref, t["deployment"])
    if c["router"] == "istio":
        cluster.set_virtual_service_weights(t["namespace"], c.get("virtual_service") or t["deployment"],
                                            c.get("host") or t["deployment"], c["stable_subset"], c["canary_subset"], 0)
    cluster.delete_deployment(t["namespace"], name)
    if not ctx.data.get("promoted"):
        ctx.audit("kubernetes.canary_promote", "ok", image=ctx.plan["image"])
        _record_image(ctx, ctx.plan["previous_image"], ctx.plan["image"])
        ctx.effect(f"canary:{t['namespace']}/{name}", f"canary {name}", f"{ctx.data.get('applied')}% traffic", None)
        if c["router"] != "istio":
            ctx.effect(f"replicas:{t['namespace']}/{t['deployment']}", f"{t['deployment']} replicas", None, total)
        ctx.save(promoted=True, analysis="promoted")
    return f"canary passed {len(weights)} step(s); promoted {ctx.plan['image']}"


def blue_green(ctx: StepContext) -> str | None:
    """Runbook 8.5. The live Deployment is "blue"; the new version runs as a "green" copy whose pod labels
    do not match the Service's selector (each selected label gets a `-green` suffix), so it takes no
    traffic until the switch. After the switch blue keeps running for an instant switch back while the
    window is watched; then blue is updated in place, traffic returns to it and green is removed, so the
    live Deployment always carries the live version."""
    bg = ctx.plan["blue_green"]
    cluster = ctx.backends.cluster
    t = ctx.plan["target"]
    ns, service = t["namespace"], bg.get("service") or t["deployment"]
    if "original_selector" not in ctx.data:
        selector = cluster.service_selector(ns, service)
        if not selector:
            raise StepFailed(f"Service {service} has no selector; there is no traffic to switch")
        copy_labels = {k: f"{v}-green" for k, v in selector.items()} | {bg["label"]: "green"}
        ctx.save(original_selector=selector, copy_labels=copy_labels, active="blue", idle="green",
                 replicas=cluster.replicas(ns, t["deployment"]))
    name = f"{t['deployment']}-green"
    copy_labels: dict[str, str] = ctx.data["copy_labels"]
    if not ctx.data.get("switched"):
        cluster.ensure_copy(_ref(ctx), name, ctx.plan["image"], int(ctx.data["replicas"]), copy_labels)
        if not ctx.data.get("deployed"):
            ctx.audit("kubernetes.blue_green.deploy", "ok", colour="green", image=ctx.plan["image"])
            ctx.save(deployed=True, analysis="green starting, no traffic yet")
        wait_rollout(ctx, WorkloadRef(ns, name, t["container"]), name)
        health_step = next((s for s in plan_steps(ctx.plan) if s.kind == "health"), None)
        for probe in (health_step.get("probes") if health_step else None) or []:
            probed = ctx.backends.probe.check(probe["url"].replace("{colour}", "green"), probe.get("expect") or {})
            if not probed.ok:
                raise StepFailed(f"green unhealthy before the switch: {probe['name']}: {probed.detail}")
        cluster.set_service_selector(ns, service, copy_labels)
        ctx.audit("kubernetes.service_switch", "ok", service=service, selector=copy_labels)
        ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", ctx.data["original_selector"],
                   copy_labels)
        ctx.save(switched=True, analysis="traffic on green; blue kept for instant switch back")
    watched = float(ctx.data.get("watched", 0.0))
    window = float(bg.get("monitor_seconds", 300))
    checks = _checks(ctx, whole_service=True)
    while watched < window:
        step = min(10.0, window - watched)
        analysis_wait(ctx, step)  # an alert fails the watch at once
        watched += step
        result = analyse(ctx.backends.metrics, checks, _variables(ctx))
        ctx.audit("deploy.analysis", result.verdict, window="blue-green", colour="green", summary=result.summary())
        ctx.save(watched=watched, analysis=f"{result.verdict} after switch ({result.summary()})"[:240])
        if result.verdict == "fail":
            raise StepFailed(f"after the switch to green: {result.summary()}")
    # promote: blue takes the new version while green serves, then traffic goes home and green goes
    ref = _ref(ctx)
    cluster.set_image(ref, ctx.plan["image"])
    wait_rollout(ctx, ref, t["deployment"])
    cluster.set_service_selector(ns, service, ctx.data["original_selector"])
    cluster.delete_deployment(ns, name)
    if not ctx.data.get("promoted"):
        ctx.audit("kubernetes.blue_green.promote", "ok", image=ctx.plan["image"])
        ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", copy_labels,
                   ctx.data["original_selector"])
        _record_image(ctx, ctx.plan["previous_image"], ctx.plan["image"])
        ctx.save(promoted=True, analysis="promoted")
    return f"served from green for {window:.0f}s, then {t['deployment']} updated in place and green removed"


HANDLERS = {"checklist": checklist, "precheck": precheck, "trading_stop": trading_stop,
            "maintenance_on": maintenance_on, "maintenance_off": maintenance_off, "trading_resume": trading_resume,
            "job": job, "rollout": rollout, "health": health, "monitor": monitor}


# --- rollback --------------------------------------------------------------------------------------------
def restore(ctx: StepContext) -> str | None:
    """Put the workload back as it was before the run (runbook 8.2 step 2, 8.5 switch back, 8.6 0 %).
    Idempotent: every call compares with the cluster, so a retried or resumed restore continues."""
    plan = ctx.plan
    cluster = ctx.backends.cluster
    ref = _ref(ctx)
    t = plan["target"]
    ns = t["namespace"]
    rollout_data: dict[str, Any] = ctx.spec.get("rollout_data") or {}
    done = []
    if plan["strategy"] == "blue-green" and rollout_data.get("original_selector"):
        service = plan["blue_green"].get("service") or t["deployment"]
        original = rollout_data["original_selector"]
        if cluster.service_selector(ns, service) != original:
            before = cluster.service_selector(ns, service)
            cluster.set_service_selector(ns, service, original)
            ctx.audit("kubernetes.service_switch", "rollback", selector=original)
            ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", before, original)
            done.append("traffic back on blue")
        cluster.delete_deployment(ns, f"{t['deployment']}-green")
        if not ctx.data.get("green_removed"):
            ctx.audit("kubernetes.blue_green.delete", "rollback", colour="green")
            ctx.save(green_removed=True)
        done.append("green removed")
    if plan["strategy"] == "canary":
        c = plan["canary"]
        name = _canary_name(ctx)
        if c["router"] == "istio":
            cluster.set_virtual_service_weights(ns, c.get("virtual_service") or t["deployment"],
                                                c.get("host") or t["deployment"], c["stable_subset"],
                                                c["canary_subset"], 0)
        stable = rollout_data.get("stable_replicas")
        if stable and cluster.replicas(ns, t["deployment"]) != int(stable):
            cluster.scale(ns, t["deployment"], int(stable))
            ctx.effect(f"replicas:{ns}/{t['deployment']}", f"{t['deployment']} replicas", None, int(stable))
        cluster.delete_deployment(ns, name)
        if not ctx.data.get("canary_reset"):
            ctx.audit("kubernetes.canary_reset", "rollback", router=c["router"])
            if rollout_data.get("applied"):
                ctx.effect(f"canary:{ns}/{name}", f"canary {name}", None, None)
            ctx.save(canary_reset=True)
        done.append("canary removed, all traffic on stable")
    live = cluster.current_image(ref)
    if live != plan["previous_image"]:
        cluster.set_image(ref, plan["previous_image"])
        ctx.audit("kubernetes.set_image", "rollback", image=plan["previous_image"])
        _record_image(ctx, live, plan["previous_image"])
        done.append(f"{t['deployment']} set back to {plan['previous_image']}")
    wait_rollout(ctx, ref, t["deployment"])
    return "; ".join(done) or "nothing had changed in the cluster"


ROLLBACK_HANDLERS = {"restore": restore, "rb_health": health, "rb_maintenance_off": maintenance_off,
                     "rb_trading_resume": trading_resume}


def rollback_plan(run: Run, steps: list[RunStep]) -> list[StepSpec]:
    """The compensation plan: undo, in reverse order of doing, what the recorded main steps did."""
    main = [st for st in steps if st.phase == Phase.main.value]
    by_kind = {st.kind: st for st in main}
    touched = {st.kind for st in main if st.status in TOUCHED_STEP}
    finished = {st.kind for st in main if st.status == StepStatus.done.value}
    specs_in_plan = plan_steps(run.plan)
    timeout = float(run.plan.get("rollout_timeout", 600)) + 60
    out: list[StepSpec] = []

    def add(kind: str, name: str, timeout: float, **params: Any) -> None:
        out.append(StepSpec(idx=len(out), kind=kind, name=name, timeout=timeout, params=params))

    rollout_step = by_kind.get("rollout")
    if "rollout" in touched or "job" in touched:
        add("restore", f"Restore {run.plan.get('previous_image')}", timeout,
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
