"""Extension points of the alert intake: events other features hang their work on, and the root's buttons.

Hooks run inside the intake's transaction (`Work`: the session and `audit()`), so whatever they
write (a PagerDuty page through the outbox, an incident, a failed canary) commits or rolls back
with the alert state that caused it. Events:

* `opened`   a group's first notification in a channel (a new root message);
* `reopened` a resolved group fires again within the reopen window (same thread);
* `firing`   alerts newly firing in a group (also on `opened` / `reopened`), `alerts` lists them;
* `alert_resolved` alerts newly resolved, while others may still fire;
* `resolved` every alert of the group resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.core.alerts.payload import Alert, Notification
from bot.core.unit_of_work import Work
from bot.persistence.models import AlertGroup

EVENTS = ("opened", "reopened", "firing", "alert_resolved", "resolved")


@dataclass(frozen=True)
class AlertEvent:
    kind: str
    group: AlertGroup
    alerts: tuple[Alert, ...]
    notification: Notification


Hook = Callable[[Work, AlertEvent], None]
#: the action blocks (Block Kit) shown on a group's root message
ActionsProvider = Callable[[AlertGroup], list[dict[str, Any]]]


def root_actions(group: AlertGroup) -> list[dict[str, Any]]:
    """No buttons yet: the actions feature replaces this with `AlertIntake.actions = its provider`."""
    return []


class AlertHooks:
    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {kind: [] for kind in EVENTS}

    def on(self, kind: str, hook: Hook) -> None:
        """Call `hook(work, event)` for every event of `kind` (one of `EVENTS`), in registration order."""
        if kind not in self._hooks:
            raise ValueError(f"unknown alert event {kind!r}; one of {', '.join(EVENTS)}")
        self._hooks[kind].append(hook)

    def emit(self, work: Work, event: AlertEvent) -> None:
        for hook in self._hooks[event.kind]:
            hook(work, event)
