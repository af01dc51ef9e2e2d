"""Typed, versioned step specs and retry policies (frozen dataclasses with to/from JSON).

A plan is stored as JSON in the run's row; every workflow reads it back through these types, so a
field added later gets a default and an old row still loads (`from_json` accepts the unversioned
dicts runs were stored with before version 1).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_SPEC_KEYS = ("idx", "kind", "name", "timeout", "estimate", "on_resume")


class OnResume(StrEnum):
    proceed = "continue"  # the handler is idempotent: pick the step up where it was
    rollback = "rollback"  # resuming is unsafe (e.g. a migration Job): fail the step into the rollback


@dataclass(frozen=True)
class StepSpec:
    """One step of a plan: what runs (`kind` names the handler), for how long at most, with what."""

    VERSION = 1

    idx: int
    kind: str
    name: str
    timeout: float = 300.0
    estimate: float = 5.0
    on_resume: OnResume = OnResume.proceed
    params: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"v": self.VERSION, "idx": self.idx, "kind": self.kind, "name": self.name,
                "timeout": self.timeout, "estimate": self.estimate, "on_resume": self.on_resume.value,
                "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, idx: int | None = None) -> StepSpec:
        version = data.get("v")
        if version is None:  # stored before specs were versioned: known keys at the top, the rest params
            params = {k: v for k, v in data.items() if k not in _SPEC_KEYS}
        elif version == cls.VERSION:
            params = dict(data.get("params") or {})
        else:
            raise ValueError(f"unsupported step spec version {version!r}")
        return cls(idx=int(data.get("idx", idx if idx is not None else 0)), kind=str(data["kind"]),
                   name=str(data.get("name") or data["kind"]), timeout=float(data.get("timeout", 300.0)),
                   estimate=float(data.get("estimate", 5.0)),
                   on_resume=OnResume(data.get("on_resume") or OnResume.proceed.value), params=params)


@dataclass(frozen=True)
class RetryPolicy:
    """Temporal-style: capped exponential backoff with jitter for transient faults, within a deadline.

    `BackendUnavailable` (connection errors, timeouts, 5xx, 429) is retried; anything else fails at once.
    `max_attempts=None` retries until the step's deadline; the deadline always wins.
    """

    initial_seconds: float = 0.5
    backoff: float = 2.0
    max_seconds: float = 10.0
    jitter: float = 0.2  # +/- this fraction of the delay
    max_attempts: int | None = None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry)."""
        base = min(self.max_seconds, self.initial_seconds * self.backoff ** max(0, attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))

    def allows(self, attempt: int) -> bool:
        return self.max_attempts is None or attempt < self.max_attempts

    def to_json(self) -> dict[str, Any]:
        return {"initial_seconds": self.initial_seconds, "backoff": self.backoff, "max_seconds": self.max_seconds,
                "jitter": self.jitter, "max_attempts": self.max_attempts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetryPolicy:
        return cls(**{k: data[k] for k in ("initial_seconds", "backoff", "max_seconds", "jitter", "max_attempts")
                      if k in data})
