"""The typed deploy plan (`DeployPlan` and its parts) and subject, with versioned to/from JSON.

A plan is stored as JSON in `runs.plan`; `dict[str, Any]` exists only at that boundary (`to_json` /
`from_json`). `from_json` reads every shape a plan was ever stored in: version 1 (steps as versioned
`StepSpec` JSON), and the unversioned plans of the 0002 era that migration 0003 moved into `runs`
(steps flat, some fields missing: they get the defaults the code of that time used).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from bot.core.analysis import Check, Op
from bot.core.ports import WorkloadRef
from bot.core.runs.spec import StepSpec

Strategy = Literal["rolling", "canary", "blue-green"]
RouterKind = Literal["replicas", "istio"]
STRATEGIES: tuple[Strategy, ...] = ("rolling", "canary", "blue-green")
_CANARY_SELECTOR = re.compile(r',\s*version="canary"|version="canary"\s*,?')


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _strategy(value: Any) -> Strategy:
    if value not in STRATEGIES:
        raise ValueError(f"unknown deploy strategy {value!r}")
    return cast(Strategy, value)


@dataclass(frozen=True)
class Target:
    """The Deployment (and its container) a plan changes."""

    namespace: str
    deployment: str
    container: str

    @property
    def ref(self) -> WorkloadRef:
        return WorkloadRef(self.namespace, self.deployment, self.container)

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "deployment": self.deployment, "container": self.container}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        return cls(str(data["namespace"]), str(data["deployment"]), str(data["container"]))


@dataclass(frozen=True)
class CheckSpec:
    """One analysis check as the plan fixed it (a PromQL template and its threshold)."""

    name: str
    query: str
    op: Op
    threshold: float
    unit: str = ""

    def check(self, *, whole_service: bool = False) -> Check:
        """The runnable check; `whole_service` drops the canary selector (no canary: judge every version)."""
        query = _CANARY_SELECTOR.sub("", self.query) if whole_service else self.query
        return Check(self.name, query, self.op, float(self.threshold), self.unit)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "query": self.query, "op": self.op, "threshold": self.threshold,
                "unit": self.unit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckSpec:
        op = str(data["op"])
        if op not in ("<", ">", "<=", ">="):
            raise ValueError(f"check {data.get('name')!r}: unknown operator {op!r}")
        return cls(str(data["name"]), str(data["query"]), cast(Op, op), float(data["threshold"]),
                   str(data.get("unit") or ""))


@dataclass(frozen=True)
class CanaryPlan:
    """The canary's steps, router and analysis limits (from the environment's `canary` settings)."""

    router: RouterKind = "replicas"
    steps: tuple[int, ...] = (10, 25, 50, 75, 100)
    virtual_service: str | None = None
    host: str | None = None
    stable_subset: str = "stable"
    canary_subset: str = "canary"
    interval_seconds: float = 60.0
    intervals_per_step: int = 1
    failure_limit: int = 1
    inconclusive_limit: int = 3
    error_limit: int = 4  # added after the first plans were stored: older plans get the default

    def to_json(self) -> dict[str, Any]:
        return {"router": self.router, "steps": list(self.steps), "virtual_service": self.virtual_service,
                "host": self.host, "stable_subset": self.stable_subset, "canary_subset": self.canary_subset,
                "interval_seconds": self.interval_seconds, "intervals_per_step": self.intervals_per_step,
                "failure_limit": self.failure_limit, "inconclusive_limit": self.inconclusive_limit,
                "error_limit": self.error_limit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanaryPlan:
        d = cls()
        router = data.get("router") or d.router
        if router not in ("replicas", "istio"):
            raise ValueError(f"unknown canary router {router!r}")
        return cls(router=cast(RouterKind, router), steps=tuple(int(w) for w in data.get("steps") or d.steps),
                   virtual_service=_str_or_none(data.get("virtual_service")), host=_str_or_none(data.get("host")),
                   stable_subset=str(data.get("stable_subset") or d.stable_subset),
                   canary_subset=str(data.get("canary_subset") or d.canary_subset),
                   interval_seconds=float(data.get("interval_seconds", d.interval_seconds)),
                   intervals_per_step=int(data.get("intervals_per_step", d.intervals_per_step)),
                   failure_limit=int(data.get("failure_limit", d.failure_limit)),
                   inconclusive_limit=int(data.get("inconclusive_limit", d.inconclusive_limit)),
                   error_limit=int(data.get("error_limit", d.error_limit)))


@dataclass(frozen=True)
class BlueGreenPlan:
    service: str | None = None  # the Service whose selector switches (default: the deployment's name)
    label: str = "colour"
    monitor_seconds: float = 300.0

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "label": self.label, "monitor_seconds": self.monitor_seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlueGreenPlan:
        return cls(_str_or_none(data.get("service")), str(data.get("label") or "colour"),
                   float(data.get("monitor_seconds", 300.0)))


@dataclass(frozen=True)
class LiftedFreeze:
    """The freeze a forced deploy lifted (restored when the run ends, if it has not expired)."""

    held_by: str | None
    held_by_name: str | None
    reason: str | None
    expires_at: str | None  # ISO 8601

    def to_json(self) -> dict[str, Any]:
        return {"held_by": self.held_by, "held_by_name": self.held_by_name, "reason": self.reason,
                "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiftedFreeze:
        return cls(*(_str_or_none(data.get(k)) for k in ("held_by", "held_by_name", "reason", "expires_at")))


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy (or `/rollback`) run will do; approvals are bound to the hash of its JSON."""

    VERSION = 1

    environment: str
    version: str
    image: str
    previous_image: str
    strategy: Strategy
    target: Target
    steps: tuple[StepSpec, ...]
    approvals_required: int = 0
    requested_by: str = ""
    reason: str | None = None
    checks: tuple[CheckSpec, ...] = ()
    eta_seconds: int = 0
    rollout_timeout: float = 600.0
    canary: CanaryPlan | None = None
    blue_green: BlueGreenPlan | None = None
    lifted_freeze: LiftedFreeze | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a newer version wrote: kept, not used

    def step(self, kind: str) -> StepSpec | None:
        """The first step of this kind (None: the plan has none)."""
        return next((s for s in self.steps if s.kind == kind), None)

    def canary_checks(self, *, whole_service: bool = False) -> list[Check]:
        return [c.check(whole_service=whole_service) for c in self.checks]

    @property
    def canary_plan(self) -> CanaryPlan:
        """The canary settings of a canary plan (a plan of another strategy has none: an error)."""
        if self.canary is None:
            raise ValueError(f"a {self.strategy} plan has no canary settings")
        return self.canary

    @property
    def blue_green_plan(self) -> BlueGreenPlan:
        return self.blue_green if self.blue_green is not None else BlueGreenPlan()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "v": self.VERSION, "environment": self.environment, "version": self.version, "image": self.image,
            "previous_image": self.previous_image, "strategy": self.strategy, "target": self.target.to_json(),
            "approvals_required": self.approvals_required, "requested_by": self.requested_by,
            "reason": self.reason, "steps": [s.to_json() for s in self.steps],
            "checks": [c.to_json() for c in self.checks], "eta_seconds": self.eta_seconds,
            "rollout_timeout": self.rollout_timeout,
        }
        if self.canary is not None:
            out["canary"] = self.canary.to_json()
        if self.blue_green is not None:
            out["blue_green"] = self.blue_green.to_json()
        if self.lifted_freeze is not None:
            out["lifted_freeze"] = self.lifted_freeze.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeployPlan:
        version = data.get("v")
        if version not in (None, cls.VERSION):
            raise ValueError(f"unsupported deploy plan version {version!r}")
        known = {"v", "environment", "version", "image", "previous_image", "strategy", "target",
                 "approvals_required", "requested_by", "reason", "steps", "checks", "eta_seconds",
                 "rollout_timeout", "canary", "blue_green", "lifted_freeze"}
        steps: Sequence[Mapping[str, Any]] = data.get("steps") or []
        canary, blue_green, lifted = data.get("canary"), data.get("blue_green"), data.get("lifted_freeze")
        return cls(
            environment=str(data["environment"]), version=str(data["version"]), image=str(data["image"]),
            previous_image=str(data["previous_image"]), strategy=_strategy(data["strategy"]),
            target=Target.from_json(data["target"]),
            steps=tuple(StepSpec.from_json(raw, idx=i) for i, raw in enumerate(steps)),
            approvals_required=int(data.get("approvals_required") or 0),
            requested_by=str(data.get("requested_by") or ""), reason=_str_or_none(data.get("reason")),
            checks=tuple(CheckSpec.from_json(c) for c in data.get("checks") or []),
            eta_seconds=int(data.get("eta_seconds") or 0),
            rollout_timeout=float(data.get("rollout_timeout") or 600.0),
            canary=CanaryPlan.from_json(canary) if canary else None,
            blue_green=BlueGreenPlan.from_json(blue_green) if blue_green else None,
            lifted_freeze=LiftedFreeze.from_json(lifted) if lifted else None,
            extra={k: v for k, v in data.items() if k not in known},
        )


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
    def from_json(cls, data: Mapping[str, Any]) -> DeploySubject:
        if data.get("v") != cls.VERSION:
            raise ValueError(f"unsupported deploy subject version {data.get('v')!r}")
        return cls(str(data["version"]), str(data["image"]), _str_or_none(data.get("previous_image")),
                   str(data["strategy"]))
