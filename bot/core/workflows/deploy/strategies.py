"""The rollout strategies (runbook 5.3, 8.5, 8.6): rolling, canary and blue-green, each owning how it
applies a new version (`apply`, the rollout step), how it puts traffic back (`restore`, the first half
of the rollback's *Restore* step; the image itself is set back by the caller) and what of it a person
should look at when a run needs one (`inspect`).

Every method is idempotent: progress is kept in the step's data, and each call compares with the
cluster, so a retried or resumed step continues instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from bot.core.ports import Cluster, WorkloadRef
from bot.core.runs.context import StepContext, StepFailed
from bot.core.workflows.deploy.common import CANARY_LABELS, plan, record_image, variables, wait_rollout
from bot.core.workflows.deploy.gate import AnalysisGate, GateLimits, Signal
from bot.core.workflows.deploy.model import DeployPlan
from bot.core.workflows.deploy.traffic import CanaryPlacement, router_for

Inspection = list[tuple[str, Callable[[], str]]]


class Strategy(Protocol):
    def apply(self, ctx: StepContext) -> str:
        """Roll the plan's image out; returns the step's result line."""
        ...

    def restore(self, ctx: StepContext, rollout_data: Mapping[str, Any]) -> list[str]:
        """Undo what `apply` did to traffic and copies (given the rollout step's data); what was done."""
        ...

    def inspect(self, p: DeployPlan, cluster: Cluster) -> Inspection:
        """Live reads of this strategy's parts (label, read) for a run that needs a person."""
        ...


def analysis_signals(ctx: StepContext) -> tuple[Signal, ...]:
    """The workflow's external analysis signals (see `gate`; the deploy workflows' `analysis_signals`)."""
    return tuple(cast("tuple[Signal, ...]", getattr(ctx.workflow, "analysis_signals", ())))


def error_limit(p: DeployPlan) -> int:
    """Prometheus errors in a row before any analysis of this plan fails safe (canary.error_limit)."""
    return p.canary.error_limit if p.canary is not None else GateLimits().error_limit


class Rolling:
    def apply(self, ctx: StepContext) -> str:
        p = plan(ctx)
        ctx.backends.cluster.set_image(p.target.ref, p.image)
        if not ctx.data.get("patched"):
            ctx.audit("kubernetes.set_image", "ok", image=p.image)
            record_image(ctx, p.previous_image, p.image)
            ctx.save(patched=True)
        wait_rollout(ctx, p.target.ref, p.target.deployment)
        return f"`{p.image}` rolled out"

    def restore(self, ctx: StepContext, rollout_data: Mapping[str, Any]) -> list[str]:
        return []

    def inspect(self, p: DeployPlan, cluster: Cluster) -> Inspection:
        return []


class Canary:
    """Runbook 8.6: a copy of the live Deployment with the new image takes a growing share of the traffic
    (through the plan's `TrafficRouter`), each step judged by the analysis gate; then promoted."""

    @staticmethod
    def name(p: DeployPlan) -> str:
        return f"{p.target.deployment}-canary"

    def _placement(self, p: DeployPlan, total: int) -> CanaryPlacement:
        return CanaryPlacement(p.target, self.name(p), p.image, total, dict(CANARY_LABELS))

    def apply(self, ctx: StepContext) -> str:
        p = plan(ctx)
        c = p.canary_plan
        cluster = ctx.backends.cluster
        t = p.target
        router = router_for(c, t)
        if "stable_replicas" not in ctx.data:
            ctx.save(stable_replicas=cluster.replicas(t.namespace, t.deployment))
        placement = self._placement(p, max(1, int(ctx.data["stable_replicas"])))
        checks = p.canary_checks()
        canary_key, canary_label = f"canary:{t.namespace}/{placement.name}", f"canary {placement.name}"
        replicas_key, replicas_label = f"replicas:{t.namespace}/{t.deployment}", f"{t.deployment} replicas"
        for i in range(int(ctx.data.get("step", 0)), len(c.steps)):
            weight = c.steps[i]
            if ctx.data.get("weight") != weight or ctx.data.get("step") != i:
                # the live message keeps the latest verdict (reached at the previous weight) until this
                # weight has one of its own
                ctx.save(step=i, weight=weight, tracker=None,
                         analysis=ctx.data.get("analysis") or "waiting for the first interval")
            router.set_weight(cluster, placement, weight, lambda ref, what: wait_rollout(ctx, ref, what))
            if ctx.data.get("applied") != weight:  # a resumed step re-applies (idempotently) but records once
                ctx.audit("kubernetes.canary_weight", "ok", weight=weight, router=router.name)
                previous = ctx.data.get("applied") or 0
                ctx.effect(canary_key, canary_label, f"{previous}% traffic" if previous else None,
                           f"{weight}% traffic")
                stable = router.stable_replicas(placement, weight)
                if stable != placement.total:
                    ctx.effect(replicas_key, replicas_label, placement.total, stable)
                ctx.save(applied=weight)
            AnalysisGate(ctx=ctx, label=f"Canary {weight}%", failing_as=f"canary analysis at {weight}%",
                         at=f"{weight}%", checks=checks, variables=variables(ctx), interval=c.interval_seconds,
                         limits=GateLimits(failure_limit=c.failure_limit, inconclusive_limit=c.inconclusive_limit,
                                           error_limit=c.error_limit, intervals_required=c.intervals_per_step),
                         audit_args={"weight": weight}, signals=analysis_signals(ctx)).run()
        # promote: the stable Deployment takes the new version at full size, then all traffic, and the
        # canary goes away
        ctx.save(promoting=True, analysis="promoting")
        cluster.set_image(t.ref, p.image)
        cluster.scale(t.namespace, t.deployment, placement.total)
        wait_rollout(ctx, t.ref, t.deployment)
        router.all_to_stable(cluster, placement)
        cluster.delete_deployment(t.namespace, placement.name)
        if not ctx.data.get("promoted"):
            ctx.audit("kubernetes.canary_promote", "ok", image=p.image)
            record_image(ctx, p.previous_image, p.image)
            ctx.effect(canary_key, canary_label, f"{ctx.data.get('applied')}% traffic", None)
            if router.stable_replicas(placement, c.steps[-1] if c.steps else 0) != placement.total:
                ctx.effect(replicas_key, replicas_label, None, placement.total)
            ctx.save(promoted=True, analysis="promoted")
        return f"canary passed {len(c.steps)} step(s); promoted `{p.image}`"

    def restore(self, ctx: StepContext, rollout_data: Mapping[str, Any]) -> list[str]:
        p = plan(ctx)
        c = p.canary_plan
        cluster = ctx.backends.cluster
        t = p.target
        router = router_for(c, t)
        stable = rollout_data.get("stable_replicas")
        total = int(stable) if stable else cluster.replicas(t.namespace, t.deployment)
        placement = self._placement(p, total)
        if router.all_to_stable(cluster, placement):
            ctx.effect(f"replicas:{t.namespace}/{t.deployment}", f"{t.deployment} replicas", None, total)
        cluster.delete_deployment(t.namespace, placement.name)
        if not ctx.data.get("canary_reset"):
            ctx.audit("kubernetes.canary_reset", "rollback", router=router.name)
            if rollout_data.get("applied"):
                ctx.effect(f"canary:{t.namespace}/{placement.name}", f"canary {placement.name}", None, None)
            ctx.save(canary_reset=True)
        return ["canary removed, all traffic on stable"]

    def inspect(self, p: DeployPlan, cluster: Cluster) -> Inspection:
        name = self.name(p)
        return [(f"{name} replicas", lambda: str(cluster.replicas(p.target.namespace, name)))]


class BlueGreen:
    """Runbook 8.5. The live Deployment is "blue"; the new version runs as a "green" copy whose pod labels
    do not match the Service's selector (each selected label gets a `-green` suffix), so it takes no
    traffic until the switch. After the switch blue keeps running for an instant switch back while the
    window is watched; then blue is updated in place, traffic returns to it and green is removed, so the
    live Deployment always carries the live version."""

    @staticmethod
    def service(p: DeployPlan) -> str:
        return p.blue_green_plan.service or p.target.deployment

    @staticmethod
    def green(p: DeployPlan) -> str:
        return f"{p.target.deployment}-green"

    def apply(self, ctx: StepContext) -> str:
        p = plan(ctx)
        bg = p.blue_green_plan
        cluster = ctx.backends.cluster
        t = p.target
        ns, service, name = t.namespace, self.service(p), self.green(p)
        if "original_selector" not in ctx.data:
            selector = cluster.service_selector(ns, service)
            if not selector:
                raise StepFailed(f"Service {service} has no selector; there is no traffic to switch")
            labels = {k: f"{v}-green" for k, v in selector.items()} | {bg.label: "green"}
            ctx.save(original_selector=selector, copy_labels=labels, active="blue", idle="green",
                     replicas=cluster.replicas(ns, t.deployment))
        copy_labels: dict[str, str] = dict(ctx.data["copy_labels"])
        original: dict[str, str] = dict(ctx.data["original_selector"])
        if not ctx.data.get("switched"):
            cluster.ensure_copy(t.ref, name, p.image, int(ctx.data["replicas"]), copy_labels)
            if not ctx.data.get("deployed"):
                ctx.audit("kubernetes.blue_green.deploy", "ok", colour="green", image=p.image)
                ctx.save(deployed=True, analysis="green starting, no traffic yet")
            wait_rollout(ctx, WorkloadRef(ns, name, t.container), name)
            health_step = p.step("health")
            for probe in (health_step.get("probes") if health_step else None) or []:
                probed = ctx.backends.probe.check(probe["url"].replace("{colour}", "green"), probe.get("expect") or {})
                if not probed.ok:
                    raise StepFailed(f"green unhealthy before the switch: {probe['name']}: {probed.detail}")
            cluster.set_service_selector(ns, service, copy_labels)
            ctx.audit("kubernetes.service_switch", "ok", service=service, selector=copy_labels)
            ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", original, copy_labels)
            ctx.save(switched=True, analysis="traffic on green; blue kept for instant switch back")
        window = bg.monitor_seconds
        gate = AnalysisGate(ctx=ctx, label="Green", failing_as="after the switch to green",
                            checks=p.canary_checks(whole_service=True), variables=variables(ctx),
                            interval=10.0, window=window, elapsed_key="watched",
                            limits=GateLimits(failure_limit=1, inconclusive_limit=None, error_limit=error_limit(p),
                                              intervals_required=None),
                            audit_args={"window": "blue-green", "colour": "green"}, signals=analysis_signals(ctx))
        gate.run()
        # promote: blue takes the new version while green serves, then traffic goes home and green goes
        cluster.set_image(t.ref, p.image)
        wait_rollout(ctx, t.ref, t.deployment)
        cluster.set_service_selector(ns, service, original)
        cluster.delete_deployment(ns, name)
        if not ctx.data.get("promoted"):
            ctx.audit("kubernetes.blue_green.promote", "ok", image=p.image)
            ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", copy_labels, original)
            record_image(ctx, p.previous_image, p.image)
            ctx.save(promoted=True, analysis="promoted")
        return (f"served from green for {window:.0f}s{gate.unmeasured()}, then {t.deployment} updated in place "
                "and green removed")

    def restore(self, ctx: StepContext, rollout_data: Mapping[str, Any]) -> list[str]:
        original = rollout_data.get("original_selector")
        if not original:
            return []
        p = plan(ctx)
        cluster = ctx.backends.cluster
        ns, service = p.target.namespace, self.service(p)
        done = []
        before = cluster.service_selector(ns, service)
        if before != original:
            cluster.set_service_selector(ns, service, dict(original))
            ctx.audit("kubernetes.service_switch", "rollback", selector=original)
            ctx.effect(f"selector:{ns}/{service}", f"Service {service} selector", before, original)
            done.append("traffic back on blue")
        cluster.delete_deployment(ns, self.green(p))
        if not ctx.data.get("green_removed"):
            ctx.audit("kubernetes.blue_green.delete", "rollback", colour="green")
            ctx.save(green_removed=True)
        return [*done, "green removed"]

    def inspect(self, p: DeployPlan, cluster: Cluster) -> Inspection:
        ns, service, green = p.target.namespace, self.service(p), self.green(p)
        return [(f"Service {service} selector",
                 lambda: ",".join(f"{k}={v}" for k, v in sorted(cluster.service_selector(ns, service).items()))),
                (f"{green} replicas", lambda: str(cluster.replicas(ns, green)))]


STRATEGIES: dict[str, Strategy] = {"rolling": Rolling(), "canary": Canary(), "blue-green": BlueGreen()}


def strategy_of(p: DeployPlan) -> Strategy:
    return STRATEGIES[p.strategy]


__all__ = ["BlueGreen", "Canary", "Rolling", "Strategy", "strategy_of"]
