"""What a run changed, as recorded by its steps — the only source for "what it left behind".

A step records an `Effect` right after a backend call that changed something succeeded (trading
stopped, maintenance on, an image set, replicas scaled, a selector switched). Effects are kept in the
step's durable data, main steps and rollback steps alike, in the order they happened. Folding them
gives, per thing touched, its state before the run and its state now as far as the run knows; what
differs is what the run left behind. No step names are matched by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EFFECTS_KEY = "effects"


@dataclass(frozen=True)
class Effect:
    key: str  # what was touched: "trading", "maintenance", "image:ns/name", "replicas:ns/name", ...
    label: str  # how people call it: "trading", "maintenance mode", "production/trading-bot-swarm image"
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "before": self.before, "after": self.after}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Effect:
        return cls(str(data["key"]), str(data.get("label") or data["key"]), data.get("before"), data.get("after"))


def show(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "{}"
    return str(value)


@dataclass(frozen=True)
class Change:
    key: str
    label: str
    before: Any
    now: Any

    def describe(self) -> str:
        if self.key.startswith("image:"):  # a code span: Slack would turn `registry.example.com/…` into a link
            def shown(v: Any) -> str:
                return f"`{v}`" if v is not None else show(v)
            return f"{self.label}: {shown(self.now)} (was {shown(self.before)})"
        return f"{self.label}: {show(self.now)} (was {show(self.before)})"


def fold(effects: Iterable[Effect]) -> dict[str, Change]:
    """Per key: the state before the first effect and after the last one."""
    out: dict[str, Change] = {}
    for effect in effects:
        first = out.get(effect.key)
        before = first.before if first is not None else effect.before
        out[effect.key] = Change(effect.key, effect.label, before, effect.after)
    return out


def left_changed(effects: Iterable[Effect]) -> list[Change]:
    return [c for c in fold(effects).values() if c.now != c.before]


def from_steps(datas: Sequence[Mapping[str, Any] | None]) -> list[Effect]:
    """The effects recorded in step data, in the order given (main steps, then rollback steps)."""
    out: list[Effect] = []
    for data in datas:
        for item in (data or {}).get(EFFECTS_KEY) or []:
            out.append(Effect.from_json(item))
    return out
