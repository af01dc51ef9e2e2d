"""The one table of commands and button actions every front end dispatches through."""

from __future__ import annotations

from bot.core.dispatch import ActionEntry, CommandEntry
from commands import audit, help, status


def build() -> tuple[dict[str, CommandEntry], dict[str, ActionEntry]]:
    commands: dict[str, CommandEntry] = {}
    actions: dict[str, ActionEntry] = {}
    commands["help"] = help.make_entry(commands)
    commands["status"] = status.make_entry()
    audit_cmd, audit_page = audit.make_entries()
    commands["audit"] = audit_cmd
    actions[audit_page.action_id] = audit_page
    return commands, actions
