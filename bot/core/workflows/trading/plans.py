"""The typed plans of `/stop-trading` and `/resume-trading`: frozen, with versioned JSON (what `runs.plan`
holds). Handlers and messages read these, never the stored dict; `from_json` refuses a version it does
not know instead of guessing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from bot.core.ports import StopMode
from bot.core.runs.spec import StepSpec

VERSION = 1


def _version(data: Mapping[str, Any], what: str) -> None:
    if data.get("v") != VERSION:
        raise ValueError(f"unsupported {what} plan version {data.get('v')!r} (this bot reads version {VERSION})")


@dataclass(frozen=True)
class TradingTarget:
    namespace: str
    deployment: str
    container: str

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "deployment": self.deployment, "container": self.container}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TradingTarget:
        return cls(str(data["namespace"]), str(data["deployment"]), str(data["container"]))


@dataclass(frozen=True)
class StopPlan:
    mode: StopMode
    reason: str | None
    requested_by: str
    verify_seconds: float
    target: TradingTarget
    deployments: tuple[str, ...]  # what the kill switch scales to 0
    steps: tuple[StepSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "mode": self.mode, "reason": self.reason, "requested_by": self.requested_by,
                "verify_seconds": self.verify_seconds, "target": self.target.to_json(),
                "deployments": list(self.deployments), "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StopPlan:
        _version(data, "stop-trading")
        mode = str(data["mode"])
        if mode not in ("graceful", "emergency"):
            raise ValueError(f"unknown stop mode {mode!r}")
        return cls(cast(StopMode, mode), data.get("reason"), str(data["requested_by"]), float(data["verify_seconds"]),
                   TradingTarget.from_json(data["target"]), tuple(str(d) for d in data["deployments"]),
                   tuple(StepSpec.from_json(s) for s in data["steps"]))


@dataclass(frozen=True)
class ResumePlan:
    gradual: bool
    fractions: tuple[float, ...]  # of bots trading, stage by stage; the last is 1.0
    window_seconds: float  # KPIs watched between stages (0: none)
    interval_seconds: float
    reason: str | None
    requested_by: str
    target: TradingTarget
    deployments: tuple[str, ...]
    checks: tuple[Mapping[str, Any], ...]  # the KPI checks, as CheckSettings dumps
    steps: tuple[StepSpec, ...]
    restore: Mapping[str, int] = field(default_factory=dict)  # replicas a kill switch took, by Deployment

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "gradual": self.gradual, "fractions": list(self.fractions),
                "window_seconds": self.window_seconds, "interval_seconds": self.interval_seconds,
                "reason": self.reason, "requested_by": self.requested_by, "restore": dict(self.restore),
                "target": self.target.to_json(), "deployments": list(self.deployments), "mode": "graceful",
                "checks": [dict(c) for c in self.checks], "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResumePlan:
        _version(data, "resume-trading")
        fractions = tuple(float(f) for f in data["fractions"])
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"resume fractions must be in (0, 1]: {list(fractions)}")
        return cls(bool(data["gradual"]), fractions, float(data["window_seconds"]), float(data["interval_seconds"]),
                   data.get("reason"), str(data["requested_by"]), TradingTarget.from_json(data["target"]),
                   tuple(str(d) for d in data["deployments"]), tuple(dict(c) for c in data.get("checks") or []),
                   tuple(StepSpec.from_json(s) for s in data["steps"]),
                   {str(k): int(v) for k, v in (data.get("restore") or {}).items()})
