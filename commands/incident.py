"""/incident declare|status|note|timeline|resolve|list, and the Tick / Untick buttons of every checklist.

In an incident's channel the subcommands act on that incident; elsewhere they need `--id INC-N`.
Who may do what: declare, status and resolve need the operator role in the incident's environment;
note and timeline any role there (viewer); list shows the environments the person may see. A
checklist item is ticked by whoever holds the role its checklist names (incidents: viewer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.config import Role
from bot.core import checklists
from bot.core.incidents import IncidentService, parse_id
from bot.core.model import Reply
from bot.errors import CommandError
from bot.ids import ActionId
from commands.deploy import env_of
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.grammar import CommandSpec, Flag, ParseContext, Positional, bounded_int, env_value, int_value, text_value

ACTIONS = ("declare", "status", "note", "timeline", "resolve", "list")
#: what each subcommand takes besides itself: text required / optional / refused, and its flags
_TEXT = {"declare": "required", "status": "required", "note": "required", "resolve": "optional",
         "timeline": "none", "list": "none"}
_FLAGS = {"declare": {"sev", "env"}, "status": {"id"}, "note": {"id"}, "timeline": {"id"}, "resolve": {"id"},
          "list": {"env", "days"}}


def _action(raw: str, _ctx: ParseContext) -> str:
    word = raw.lower()
    if word not in ACTIONS:
        import difflib

        close = difflib.get_close_matches(word, ACTIONS, n=1)
        raise ValueError(f"{raw!r} is not one of {', '.join(ACTIONS)}" + (f" (did you mean {close[0]}?)" if close
                                                                             else ""))
    return word


def _incident_id(raw: str, _ctx: ParseContext) -> int:
    return parse_id(raw)


@dataclass(frozen=True)
class IncidentCmd:
    action: str
    text: str | None = None
    sev: int | None = None
    env: str | None = None
    id: int | None = None
    days: int | None = None


SPEC = CommandSpec(
    name="incident",
    summary="declare an incident (its own channel, on-call invited, checklist), post updates, resolve; MTTR",
    target=IncidentCmd,
    positionals=(Positional("action", _action, "declare, status, note, timeline, resolve or list"),
                 Positional("text", text_value, "the title (declare), the update (status), the note (note) or "
                            "the resolution (resolve); quotes are optional", required=False, greedy=True)),
    flags=(Flag("sev", "declare: severity 1 (worst) to 4, default 2", int_value(1, 4), metavar="N"),
           Flag("env", "declare: the environment (default: the config's default_environment); list: only this one",
                env_value, metavar="ENV"),
           Flag("id", "the incident (INC-12 or 12) when not run in its channel", _incident_id, metavar="ID"),
           Flag("days", "list: the MTTR window in days, 1-365 (default 30)", int_value(1, 365), metavar="N")),
    details=("Subcommands: `declare TITLE [--sev N] [--env ENV]` (operators) · `status TEXT` (operators; posted in "
             "the channel) · `note TEXT` · `timeline` (audited actions in the environment since it began, and the "
             "notes) · `resolve [TEXT]` (operators; records the time to recover) · `list [--env ENV] [--days N]` "
             "(open and recent incidents, MTTR). In an incident's channel they act on it; elsewhere add `--id INC-N`."),
    examples=('/incident declare "fills rejected" --sev 1 --env production', "/incident status rolled back, watching",
              "/incident resolve --id INC-3 bad config reverted", "/incident list"),
)


def _svc(ctx: Ctx) -> IncidentService:
    return IncidentService(ctx.core.config, ctx.core.outbox, ctx.core.authorizer)


def _check_shape(cmd: IncidentCmd) -> None:
    """Each subcommand's own arguments: a usage error names what does not belong."""
    given = {name for name in ("sev", "env", "id", "days") if getattr(cmd, name) is not None}
    extra = sorted(given - _FLAGS[cmd.action])
    if extra:
        raise CommandError(f"/incident {cmd.action} takes no " + ", ".join(f"--{n}" for n in extra),
                           usage=SPEC.usage, hint="`/incident --help` lists what each subcommand takes.")
    if _TEXT[cmd.action] == "required" and not cmd.text:
        what = "a title" if cmd.action == "declare" else "some text"
        raise CommandError(f"/incident {cmd.action} needs {what}", usage=SPEC.usage,
                           hint=f"e.g. `{next(e for e in SPEC.examples if cmd.action in e)}`"
                           if any(cmd.action in e for e in SPEC.examples) else None)
    if _TEXT[cmd.action] == "none" and cmd.text:
        raise CommandError(f"/incident {cmd.action} takes no text (got {cmd.text[:40]!r})", usage=SPEC.usage)


def _authorize(cmd: IncidentCmd, ctx: Ctx) -> str | None:
    _check_shape(cmd)
    if cmd.action == "declare":
        env = env_of(ctx, cmd.env, SPEC.usage)
        ctx.core.authorizer.require(ctx.actor, Role.operator, env, f"declare an incident in {env}")
        return env
    if cmd.action == "list":
        if cmd.env is not None:
            ctx.core.authorizer.require(ctx.actor, Role.viewer, cmd.env, f"see the incidents of {cmd.env}")
            return cmd.env
        if not ctx.core.authorizer.environments_visible_to(ctx.actor.user_id):
            ctx.core.authorizer.require_anywhere(ctx.actor, Role.viewer, "see incidents")
        return None
    # the others act on an incident found in the database: the handler checks the role in its environment
    return None


_ROLES = {"status": Role.operator, "resolve": Role.operator, "note": Role.viewer, "timeline": Role.viewer}
_WHAT = {"status": "post status updates of", "resolve": "resolve", "note": "add notes to",
         "timeline": "read the timeline of"}


def _run(cmd: IncidentCmd, ctx: Ctx) -> Reply:
    assert ctx.session is not None
    svc = _svc(ctx)
    if cmd.action == "declare":
        env = env_of(ctx, cmd.env, SPEC.usage)
        _incident, reply = svc.declare(ctx.session, actor=ctx.actor, env_name=env, title=cmd.text or "",
                                       severity=cmd.sev, correlation_id=ctx.correlation_id)
        return reply
    if cmd.action == "list":
        envs = [cmd.env] if cmd.env else ctx.core.authorizer.environments_visible_to(ctx.actor.user_id)
        return svc.list(ctx.session, envs, cmd.days or 30)
    incident = svc.find(ctx.session, incident_id=cmd.id, channel_id=ctx.channel_id,
                        for_update=cmd.action == "resolve")
    svc.require(ctx.actor, _ROLES[cmd.action], incident, _WHAT[cmd.action])
    if cmd.action in ("status", "note"):
        return svc.add_note(ctx.session, incident, actor=ctx.actor, kind=cmd.action, text=cmd.text or "",
                            correlation_id=ctx.correlation_id)
    if cmd.action == "timeline":
        return svc.timeline(ctx.session, incident)
    return svc.resolve(ctx.session, incident, actor=ctx.actor, resolution=cmd.text,
                       correlation_id=ctx.correlation_id)


# --- checklist buttons (any checklist: incidents, rollbacks) ----------------------------------------------
MAX_ITEM = checklists.MAX_ITEMS


def _tick_value(value: dict[str, Any], ctx: Ctx) -> tuple[str, str, int, bool]:
    checklist, env = value.get("c"), value.get("e")
    if (not isinstance(checklist, str) or not 0 < len(checklist) <= 64 or not isinstance(env, str)
            or env not in ctx.core.config.environments):
        raise ValueError("malformed checklist button")
    idx = bounded_int(value.get("i"), 0, MAX_ITEM - 1, "checklist item")
    done = bounded_int(value.get("d"), 0, 1, "tick or untick")
    return checklist, env, idx, bool(done)


def _authorize_tick(value: dict[str, Any], ctx: Ctx) -> str | None:
    _checklist, env, _idx, _done = _tick_value(value, ctx)
    ctx.core.authorizer.require(ctx.actor, Role.viewer, env, f"tick checklists in {env}")
    return env  # the handler checks the role the checklist itself names


def _run_tick(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    checklist, env, idx, done = _tick_value(value, ctx)
    return checklists.tick(ctx.session, ctx.core.outbox, ctx.core.authorizer, checklist_id=checklist, idx=idx,
                           done=done, actor=ctx.actor, channel=ctx.channel_id, correlation_id=ctx.correlation_id,
                           environment=env)


def make_entries() -> tuple[list[CommandEntry], list[ActionEntry]]:
    return ([CommandEntry(SPEC, _authorize, _run, needs_db=True)],
            [ActionEntry(ActionId.checklist_tick, _authorize_tick, _run_tick)])
