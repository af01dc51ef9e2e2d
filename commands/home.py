"""The App Home tab: who you are to the bot, per environment, and what you can type."""

from __future__ import annotations

from bot import blocks
from bot.core.context import Core
from commands.dispatch import CommandEntry


def home_view(core: Core, user_id: str, commands: dict[str, CommandEntry]) -> dict[str, object]:
    name = core.config.name_of(user_id)
    lines = []
    for env in core.config.environments:
        roles = sorted(r.value for r in core.authorizer.roles_of(user_id, env))
        lines.append(f"*{env}*: {', '.join(roles) if roles else 'no roles'}")
    usage = "\n".join(f"• `{e.spec.usage}` — {e.spec.summary}" for e in commands.values() if e.listed)
    body = blocks.message(
        blocks.header("swarm-chatops"),
        blocks.section(f"Hello {name or '<@' + user_id + '>'}. Your roles:\n" + "\n".join(lines)),
        blocks.divider(),
        blocks.section(usage),
        blocks.context("Every command and click is recorded in the audit log."),
    )
    return {"type": "home", "blocks": body}
