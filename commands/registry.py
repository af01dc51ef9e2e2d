"""The one table of commands and button actions every front end dispatches through."""

from __future__ import annotations

from commands import alerts, audit, deploy, help, home, incident, status, trading
from commands.dispatch import ActionEntry, CommandEntry


def build() -> tuple[dict[str, CommandEntry], dict[str, ActionEntry]]:
    commands: dict[str, CommandEntry] = {}
    actions: dict[str, ActionEntry] = {}
    commands["help"] = help.make_entry(commands)
    commands["status"] = status.make_entry()
    audit_cmd, audit_page = audit.make_entries()
    commands["audit"] = audit_cmd
    actions[audit_page.action_id] = audit_page
    deploy_commands, deploy_actions = deploy.make_entries()
    for entry in deploy_commands:
        commands[entry.spec.name] = entry
    for action in deploy_actions:
        actions[action.action_id] = action
    for entry in trading.make_entries():
        commands[entry.spec.name] = entry
    incident_commands, incident_actions = incident.make_entries()
    for entry in incident_commands:
        commands[entry.spec.name] = entry
    for action in incident_actions:  # checklist Tick / Untick (incidents, rollbacks)
        actions[action.action_id] = action
    for action in home.make_actions():  # App Home buttons
        actions[action.action_id] = action
    for action in alerts.make_actions():  # an alert group's root
        actions[action.action_id] = action
    return commands, actions
