"""Alert intake: Alertmanager notifications become alert groups with a living root message and thread.

The API other features build on: `AlertIntake` (`accept`, `ingest`, `refresh_root`, its `hooks` and
`actions`), `group()`, `group_by_message()`, `root_message()`, `firing_instances()`, `route()`, and
the payload models. Tables: `alert_groups`, `alert_instances` (bot/persistence/models.py).
"""

from bot.core.alerts.hooks import EVENTS, ActionsProvider, AlertEvent, AlertHooks, root_actions
from bot.core.alerts.intake import (
    AlertIntake,
    IngestResult,
    firing_instances,
    group,
    group_by_message,
    group_hash,
    root_message,
)
from bot.core.alerts.payload import Alert, MalformedNotification, Notification, parse_notification
from bot.core.alerts.routing import Route, route

__all__ = ["EVENTS", "ActionsProvider", "Alert", "AlertEvent", "AlertHooks", "AlertIntake", "IngestResult",
           "MalformedNotification", "Notification", "Route", "firing_instances", "group", "group_by_message",
           "group_hash", "parse_notification", "root_actions", "root_message", "route"]
