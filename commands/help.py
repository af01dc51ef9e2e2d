"""/help [COMMAND]: what the bot can do, or one command's full usage."""

from __future__ import annotations

from dataclasses import dataclass

from bot import blocks
from bot.blocks import user_text
from bot.core.model import Reply
from bot.errors import UnknownCommand
from commands.dispatch import CommandEntry, Ctx
from commands.grammar import CommandSpec, ParseContext, Positional


def _command_name(raw: str, _ctx: ParseContext) -> str:
    return raw.lstrip("/").lower()


@dataclass(frozen=True)
class Help:
    command: str | None = None


SPEC = CommandSpec(
    name="help",
    summary="list the commands, or show one command's usage",
    target=Help,
    positionals=(Positional("command", _command_name, "a command name, e.g. deploy", required=False),),
    examples=("/help", "/help status"),
)


def _authorize(_cmd: Help, _ctx: Ctx) -> str | None:
    return None  # help is for everyone


def make_entry(registry: dict[str, CommandEntry]) -> CommandEntry:
    def run(cmd: Help, ctx: Ctx) -> Reply:
        listed = [e for e in registry.values() if e.listed]
        if cmd.command:
            name = next((n for n, e in registry.items() if e.spec.slack_name == cmd.command), cmd.command)
            entry = registry.get(name)
            if entry is None or not entry.listed:
                raise UnknownCommand(f"there is no /{user_text(cmd.command[:40])} command",
                                     hint="Commands: " + ", ".join(f"/{e.spec.name}" for e in listed))
            text = entry.spec.help_text(ctx.core.config)  # with this config's details (e.g. canary steps)
            return Reply(text, blocks.message(blocks.section(text)))
        lines = [f"• `{e.spec.usage}` — {e.spec.summary}"
                 + (f" (in Slack: `/{e.spec.slack_name}`)" if e.spec.slack_name else "") for e in listed]
        text = "*swarm-chatops* operates the Trading Bot Swarm by its runbook.\n" + "\n".join(lines)
        footer = "Add `--help` to any command for details. Every action is recorded in the audit log."
        return Reply(text + "\n" + footer,
                     blocks.message(blocks.header("swarm-chatops commands"), blocks.section("\n".join(lines)),
                                    blocks.context(footer)))

    return CommandEntry(SPEC, _authorize, run, needs_db=False)
