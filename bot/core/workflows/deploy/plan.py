"""The plan of a deployment: its steps, rollback target, strategy, checks and ETA, and its hash.

Approvals are bound to the hash: if anything in the plan changed, old approvals do not count.
The default procedure mirrors runbook 5.1-5.4; an environment may configure its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from bot.config import CheckSettings, Environment, StepSettings
from bot.core.runs.context import describe_duration
from bot.core.runs.spec import OnResume, StepSpec
from bot.core.workflows.deploy.model import (
    BlueGreenPlan,
    CanaryPlan,
    CheckSpec,
    DeployPlan,
    DeploySubject,
    LiftedFreeze,
    Strategy,
    Target,
)

PLAN_VERSION = 1

DEFAULT_TIMEOUTS = {"checklist": 1800.0, "precheck": 60.0, "trading_stop": 60.0, "maintenance_on": 60.0,
                    "maintenance_off": 60.0, "health": 120.0}


def _step(**fields: Any) -> StepSettings:
    """A procedure step, validated like one read from the config."""
    return StepSettings.model_validate(fields)


def default_procedure(env: Environment) -> list[StepSettings]:
    steps = [_step(kind="checklist", name="Stakeholders notified",
                          text="Stakeholders notified of the deployment window (runbook 1.4 / 5.1)"),
             _step(kind="precheck", name="Pre-checks")]
    if env.stop_trading:
        steps += [_step(kind="trading_stop", name="Stop trading gracefully",
                               strategies=["rolling", "blue-green"]),
                  _step(kind="maintenance_on", name="Maintenance mode on", strategies=["rolling", "blue-green"])]
    steps += [_step(kind="job", name=f"Database {job.name}", job=job.name) for job in env.jobs]
    steps.append(_step(kind="rollout", name="Roll out"))
    steps.append(_step(kind="health", name="Health checks and smoke tests"))
    if env.stop_trading:
        steps += [_step(kind="maintenance_off", name="Maintenance mode off",
                               strategies=["rolling", "blue-green"]),
                  _step(kind="trading_resume", name="Resume trading gradually",
                               strategies=["rolling", "blue-green"])]
    if env.monitor_seconds > 0:
        steps.append(_step(kind="monitor", name="Monitoring window", seconds=env.monitor_seconds))
    return steps


def rollback_procedure(env: Environment, *, with_db: bool = False) -> list[StepSettings]:
    """Runbook 8.2: stop trading, maintenance on, roll the application back, (with_db) roll the database
    back, verify, maintenance off, resume trading gradually (the incident channel is told when the run
    starts and ends)."""
    steps = [_step(kind="precheck", name="Pre-checks")]
    if env.stop_trading:
        steps += [_step(kind="trading_stop", name="Stop trading (runbook 8.2 step 1)"),
                  _step(kind="maintenance_on", name="Maintenance mode on")]
    steps.append(_step(kind="rollout", name="Roll the application back (runbook 8.2 step 2)"))
    if with_db:
        from bot.core.workflows.deploy.db_rollback import procedure_step

        steps.append(procedure_step(env))
    steps.append(_step(kind="health", name="Verify: health checks and smoke tests (runbook 8.2 step 4)"))
    if env.stop_trading:
        resume = next((s for s in env.procedure or default_procedure(env) if s.kind == "trading_resume"), None)
        steps += [_step(kind="maintenance_off", name="Maintenance mode off"),
                  _step(kind="trading_resume", name="Resume trading gradually (runbook 8.2 step 5)",
                               fractions=resume.fractions if resume else [0.25, 0.5, 1.0],
                               pause_seconds=resume.pause_seconds if resume else 60.0)]
    return steps


def _rollout_estimate(env: Environment, strategy: str) -> float:
    if strategy == "canary":
        c = env.canary
        return len(c.steps) * (c.intervals_per_step * c.interval_seconds + 15) + 60
    if strategy == "blue-green":
        return 90 + env.blue_green.monitor_seconds
    return 90


def _step_spec(idx: int, spec: StepSettings, env: Environment, strategy: str) -> StepSpec:
    """One procedure step as the plan fixes it: its parameters, timeout and estimate."""
    kind = spec.kind
    params: dict[str, Any] = {}
    timeout: float | None = None
    estimate = 5.0
    if kind == "checklist":
        params.update(text=spec.text, role=spec.role.value, blocking=spec.blocking)
        estimate = 60.0 if spec.blocking else 0.0
    elif kind == "job":
        job = {j.name: j for j in env.jobs}[spec.job or ""]
        params.update(job=job.name, template=job.template)
        timeout = spec.timeout_seconds or job.timeout_seconds
        estimate = min(60.0, job.timeout_seconds / 10)
    elif kind == "rollout":
        params["strategy"] = strategy
        estimate = _rollout_estimate(env, strategy)
        timeout = spec.timeout_seconds or estimate * 2 + env.rollout_timeout_seconds
    elif kind == "health":
        params["probes"] = [p.model_dump() for p in env.probes]
        estimate = 15.0
    elif kind == "trading_resume":
        params.update(fractions=spec.fractions, pause_seconds=spec.pause_seconds)
        estimate = spec.pause_seconds * max(0, len(spec.fractions) - 1) + 5
        timeout = spec.timeout_seconds or estimate + 120
    elif kind == "monitor":
        params["seconds"] = spec.seconds
        estimate = spec.seconds
        timeout = spec.timeout_seconds or spec.seconds + 120
    timeout = timeout or spec.timeout_seconds or DEFAULT_TIMEOUTS.get(kind, 300.0)
    return StepSpec(idx=idx, kind=kind, name=spec.name or kind.replace("_", " "), timeout=float(timeout),
                    estimate=float(estimate), on_resume=OnResume(spec.on_resume or OnResume.proceed.value),
                    params=params)


def build_plan(*, env_name: str, env: Environment, version: str, strategy: Strategy, current_image: str,
               checks: list[CheckSettings], reason: str | None, requested_by: str,
               procedure: list[StepSettings] | None = None) -> DeployPlan:
    steps: list[StepSpec] = []
    for spec in procedure or env.procedure or default_procedure(env):
        if not spec.strategies or strategy in spec.strategies:
            steps.append(_step_spec(len(steps), spec, env, strategy))
    c, bg = env.canary, env.blue_green
    return DeployPlan(
        environment=env_name, version=version, image=f"{env.image}:{version}", previous_image=current_image,
        strategy=strategy, target=Target(env.namespace, env.deployment, env.container), steps=tuple(steps),
        approvals_required=env.approvals_required, requested_by=requested_by, reason=reason,
        checks=tuple(CheckSpec(k.name, k.query, k.op, k.threshold, k.unit) for k in checks),
        eta_seconds=math.ceil(sum(st.estimate for st in steps)), rollout_timeout=env.rollout_timeout_seconds,
        canary=CanaryPlan(router=c.router, steps=tuple(c.steps), virtual_service=c.virtual_service, host=c.host,
                          stable_subset=c.stable_subset, canary_subset=c.canary_subset,
                          interval_seconds=c.interval_seconds, intervals_per_step=c.intervals_per_step,
                          failure_limit=c.failure_limit, inconclusive_limit=c.inconclusive_limit,
                          error_limit=c.error_limit) if strategy == "canary" else None,
        blue_green=BlueGreenPlan(bg.service, bg.label, bg.monitor_seconds) if strategy == "blue-green" else None,
    )


def plan_hash(plan: DeployPlan | Mapping[str, Any]) -> str:
    """The hash approvals are bound to: of the plan's stored JSON (any workflow's plan)."""
    data = plan.to_json() if isinstance(plan, DeployPlan) else plan
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_of(run: Any) -> DeployPlan:
    """The typed plan of a deploy or rollback run (a `bot.persistence.models.Run`; its `plan` is JSON)."""
    return DeployPlan.from_json(run.plan)


def plan_steps(plan: DeployPlan | Mapping[str, Any]) -> list[StepSpec]:
    """The plan's steps, typed (plans stored before version 1 hold unversioned step dicts)."""
    return list((plan if isinstance(plan, DeployPlan) else DeployPlan.from_json(plan)).steps)


def subject_of(run: Any) -> DeploySubject:
    """The typed subject of a deploy run (a `bot.persistence.models.Run`)."""
    return DeploySubject.from_json(run.subject)


__all__ = ["BlueGreenPlan", "CanaryPlan", "CheckSpec", "DeployPlan", "DeploySubject", "LiftedFreeze", "Target",
           "build_plan", "default_procedure", "describe_duration", "plan_hash", "plan_of", "plan_steps",
           "rollback_procedure", "subject_of"]
