"""The plan of a deployment: its steps, rollback target, strategy, checks and ETA, and its hash.

Approvals are bound to the hash: if anything in the plan changed, old approvals do not count.
The default procedure mirrors runbook 5.1-5.4; an environment may configure its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from bot.config import CheckSettings, Environment, StepSettings
from bot.core.runs.context import describe_duration
from bot.core.runs.spec import OnResume, StepSpec

PLAN_VERSION = 1

DEFAULT_TIMEOUTS = {"checklist": 1800.0, "precheck": 60.0, "trading_stop": 60.0, "maintenance_on": 60.0,
                    "maintenance_off": 60.0, "health": 120.0}


def default_procedure(env: Environment) -> list[StepSettings]:
    steps = [StepSettings(kind="checklist", name="Stakeholders notified",
                          text="Stakeholders notified of the deployment window (runbook 1.4 / 5.1)"),
             StepSettings(kind="precheck", name="Pre-checks")]
    if env.stop_trading:
        steps += [StepSettings(kind="trading_stop", name="Stop trading gracefully",
                               strategies=["rolling", "blue-green"]),
                  StepSettings(kind="maintenance_on", name="Maintenance mode on", strategies=["rolling", "blue-green"])]
    steps += [StepSettings(kind="job", name=f"Database {job.name}", job=job.name) for job in env.jobs]
    steps.append(StepSettings(kind="rollout", name="Roll out"))
    steps.append(StepSettings(kind="health", name="Health checks and smoke tests"))
    if env.stop_trading:
        steps += [StepSettings(kind="maintenance_off", name="Maintenance mode off",
                               strategies=["rolling", "blue-green"]),
                  StepSettings(kind="trading_resume", name="Resume trading gradually",
                               strategies=["rolling", "blue-green"])]
    if env.monitor_seconds > 0:
        steps.append(StepSettings(kind="monitor", name="Monitoring window", seconds=env.monitor_seconds))
    return steps


def rollback_procedure(env: Environment, *, with_db: bool = False) -> list[StepSettings]:
    """Runbook 8.2: stop trading, maintenance on, roll the application back, (with_db) roll the database
    back, verify, maintenance off, resume trading gradually (the incident channel is told when the run
    starts and ends)."""
    steps = [StepSettings(kind="precheck", name="Pre-checks")]
    if env.stop_trading:
        steps += [StepSettings(kind="trading_stop", name="Stop trading (runbook 8.2 step 1)"),
                  StepSettings(kind="maintenance_on", name="Maintenance mode on")]
    steps.append(StepSettings(kind="rollout", name="Roll the application back (runbook 8.2 step 2)"))
    if with_db:
        from bot.core.workflows.deploy.db_rollback import procedure_step

        steps.append(procedure_step(env))
    steps.append(StepSettings(kind="health", name="Verify: health checks and smoke tests (runbook 8.2 step 4)"))
    if env.stop_trading:
        resume = next((s for s in env.procedure or default_procedure(env) if s.kind == "trading_resume"), None)
        steps += [StepSettings(kind="maintenance_off", name="Maintenance mode off"),
                  StepSettings(kind="trading_resume", name="Resume trading gradually (runbook 8.2 step 5)",
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


def build_plan(*, env_name: str, env: Environment, version: str, strategy: str, current_image: str,
               checks: list[CheckSettings], reason: str | None, requested_by: str,
               procedure: list[StepSettings] | None = None) -> dict[str, Any]:
    image = f"{env.image}:{version}"
    jobs = {j.name: j for j in env.jobs}
    steps: list[dict[str, Any]] = []
    for spec in procedure or env.procedure or default_procedure(env):
        if spec.strategies and strategy not in spec.strategies:
            continue
        kind = spec.kind
        step: dict[str, Any] = {}
        if kind == "checklist":
            step.update(text=spec.text, role=spec.role.value, blocking=spec.blocking)
            estimate = 60.0 if spec.blocking else 0.0
        elif kind == "job":
            job = jobs[spec.job or ""]
            step.update(job=job.name, template=job.template)
            step["timeout"] = spec.timeout_seconds or job.timeout_seconds
            estimate = min(60.0, job.timeout_seconds / 10)
        elif kind == "rollout":
            step["strategy"] = strategy
            estimate = _rollout_estimate(env, strategy)
            step["timeout"] = spec.timeout_seconds or estimate * 2 + env.rollout_timeout_seconds
        elif kind == "health":
            step["probes"] = [p.model_dump() for p in env.probes]
            estimate = 15.0
        elif kind == "trading_resume":
            step.update(fractions=spec.fractions, pause_seconds=spec.pause_seconds)
            estimate = spec.pause_seconds * max(0, len(spec.fractions) - 1) + 5
            step["timeout"] = spec.timeout_seconds or estimate + 120
        elif kind == "monitor":
            step["seconds"] = spec.seconds
            estimate = spec.seconds
            step["timeout"] = spec.timeout_seconds or spec.seconds + 120
        else:
            estimate = 5.0
        timeout = step.pop("timeout", None) or spec.timeout_seconds or DEFAULT_TIMEOUTS.get(kind, 300.0)
        steps.append(StepSpec(idx=len(steps), kind=kind, name=spec.name or kind.replace("_", " "),
                              timeout=float(timeout), estimate=float(estimate),
                              on_resume=OnResume(spec.on_resume or OnResume.proceed.value), params=step))
    plan: dict[str, Any] = {
        "v": PLAN_VERSION,
        "environment": env_name,
        "version": version,
        "image": image,
        "previous_image": current_image,
        "strategy": strategy,
        "target": {"namespace": env.namespace, "deployment": env.deployment, "container": env.container},
        "approvals_required": env.approvals_required,
        "requested_by": requested_by,
        "reason": reason,
        "steps": [st.to_json() for st in steps],
        "checks": [c.model_dump() for c in checks],
        "eta_seconds": math.ceil(sum(st.estimate for st in steps)),
        "rollout_timeout": env.rollout_timeout_seconds,
    }
    if strategy == "canary":
        plan["canary"] = env.canary.model_dump()
    if strategy == "blue-green":
        plan["blue_green"] = env.blue_green.model_dump()
    return plan


def plan_hash(plan: dict[str, Any]) -> str:
    blob = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_steps(plan: dict[str, Any]) -> list[StepSpec]:
    """The plan's steps, typed (plans stored before version 1 hold unversioned step dicts)."""
    return [StepSpec.from_json(raw, idx=i) for i, raw in enumerate(plan.get("steps") or [])]


__all__ = ["build_plan", "default_procedure", "describe_duration", "plan_hash", "plan_steps"]


@dataclass(frozen=True)
class DeploySubject:
    """What a deploy run is about (stored as `runs.subject`, versioned JSON)."""

    VERSION = 1

    version: str
    image: str
    previous_image: str | None
    strategy: str

    def to_json(self) -> dict[str, Any]:
        return {"v": self.VERSION, "version": self.version, "image": self.image,
                "previous_image": self.previous_image, "strategy": self.strategy}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeploySubject:
        if data.get("v") != cls.VERSION:
            raise ValueError(f"unsupported deploy subject version {data.get('v')!r}")
        return cls(str(data["version"]), str(data["image"]), data.get("previous_image"), str(data["strategy"]))


def subject_of(run: Any) -> DeploySubject:
    """The typed subject of a deploy run (a `bot.persistence.models.Run`)."""
    return DeploySubject.from_json(run.subject)
