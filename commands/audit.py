"""/audit: the audit log for auditors, filtered and paged (ephemeral), with an "Older" button.

A page holds as many of the requested records as fit Slack's limits (sections of at most 3,000
characters, a few of them per page); the Older records button continues from the last row shown,
so no record is ever skipped. Each row names its run and step, and a click row what was clicked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bot import blocks
from bot.blocks import user_text
from bot.config import Role
from bot.core.model import Reply
from bot.errors import CommandError
from bot.ids import ActionId, encode_value
from bot.persistence import audit as audit_log
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.grammar import (
    CommandSpec,
    Flag,
    ParseContext,
    bounded_int,
    env_value,
    int_value,
    user_value,
    when_value,
)

MAX_LINE = 280
MAX_DETAIL = 150  # characters of a row's detail before escaping
PAGE_SECTIONS = 4  # sections per page: 4 x 3,000 characters, far below the 50-block limit
MAX_SEQ = 2**62  # a page marker beyond any real record (and inside a 64-bit column)


def _action_prefix(raw: str, _ctx: ParseContext) -> str:
    if not raw or len(raw) > 100:
        raise ValueError("must be 1 to 100 characters")
    return raw


@dataclass(frozen=True)
class Audit:
    actor: str | None = None
    env: str | None = None
    since: str | None = None
    until: str | None = None
    action: str | None = None
    limit: int = 10


SPEC = CommandSpec(
    name="audit",
    summary="search the audit log (auditors): who did what, when, where, with what result",
    target=Audit,
    flags=(
        Flag("actor", "only this person (name or @mention)", user_value, metavar="USER"),
        Flag("env", "only this environment", env_value, metavar="ENV"),
        Flag("since", "from this time (2026-11-27, 2026-11-27T10:00, or 24h / 7d ago)", when_value, metavar="WHEN"),
        Flag("until", "before this time (same forms)", when_value, metavar="WHEN"),
        Flag("action", "actions starting with this, e.g. command.deploy", _action_prefix, metavar="PREFIX"),
        Flag("limit", "records per page, 1-50 (default 10)", int_value(1, 50), metavar="N"),
    ),
    examples=("/audit", "/audit --env production --since 24h", "/audit --actor alice --action command."),
)


def _require_auditor(ctx: Ctx, env: str | None) -> None:
    authz = ctx.core.authorizer
    if env is None and not authz.has(ctx.actor.user_id, Role.auditor, None):
        # an auditor of one environment may read that environment's records: name them, and only them
        own = [e for e in ctx.core.config.environments if authz.has(ctx.actor.user_id, Role.auditor, e)]
        what = "read the whole audit log"
        if own:
            what += " (you may read " + ", ".join(f"`/audit --env {e}`" for e in own) + ")"
        authz.require(ctx.actor, Role.auditor, None, what)
    authz.require(ctx.actor, Role.auditor, env, "read the audit log")


def _authorize(cmd: Audit, ctx: Ctx) -> str | None:
    _require_auditor(ctx, cmd.env)
    if cmd.since is not None and cmd.until is not None and cmd.since >= cmd.until:
        # both are normalised ISO strings in UTC, so they compare as times
        raise CommandError(f"--since ({cmd.since[:19]}Z) is not before --until ({cmd.until[:19]}Z): no record "
                           "can be in that range",
                           hint="--since is the older end and --until the newer one, e.g. `--since 2h --until 1h` "
                                "(from two hours ago to one hour ago).", usage=SPEC.usage)
    return cmd.env


def _filter(cmd: Audit) -> audit_log.AuditFilter:
    return audit_log.AuditFilter(since=cmd.since, until=cmd.until, actor_ids=(cmd.actor,) if cmd.actor else (),
                                 environment=cmd.env, action_prefix=cmd.action)


_CLICKED: dict[str, str] = {ActionId.audit_page: "Older records", ActionId.deploy_approve: "Approve",
                            ActionId.deploy_abort: "Abort", ActionId.deploy_tick: "Tick"}
#: arguments a row shows in its own words (or not at all: the raw click value, the parsed command)
_OWN_WORDS = {"run", "step", "command", "text", "parsed", "action_id", "value", "message_ts", "plan_hash"}
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clicked(args: dict[str, Any]) -> list[str]:
    """A click row in words: the button's label and what it acted on, not its JSON value."""
    action_id = str(args.get("action_id", ""))
    label = _CLICKED.get(action_id, f"button {action_id}")
    try:
        value = json.loads(args.get("value") or "{}")
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    parts = [f"clicked “{label}”"]
    if isinstance(value.get("run"), str):
        parts.append(f"on run {value['run']}")
    if isinstance(value.get("step"), int):
        parts.append(f"item {value['step'] + 1}")
    if isinstance(value.get("before"), int):
        parts.append(f"(records before #{value['before']})")
    return [" ".join(parts)]


def _detail(args: dict[str, Any]) -> str:
    """What a row is about, in the order a reader looks for it: run, step, what was typed or clicked,
    then the other arguments (raw text: the caller escapes it)."""
    parts: list[str] = []
    if args.get("run"):
        parts.append(f"run {args['run']}")
    if args.get("step") not in (None, ""):
        parts.append(f"step “{args['step']}”")
    if "action_id" in args:
        parts += _clicked(args)
    elif args.get("text"):
        parts.append(f"{args.get('command', '')} {args['text']}".strip())
    parts += [f"{k}={_short(v)}" for k, v in args.items()
              if k not in _OWN_WORDS and v not in (None, "", [], {})]
    detail = " · ".join(parts)
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…"


def _line(rec: Any) -> str:
    """One row; every stored value is shown through user_text (people typed much of it)."""
    who = user_text(rec.actor_name or rec.actor_id)
    where = " ".join(x for x in (f"env={user_text(rec.environment)}" if rec.environment else "",
                                 f"<#{rec.channel}>" if rec.channel and re.fullmatch(r"[CG][A-Z0-9]+", rec.channel)
                                 else "") if x)
    try:
        args = json.loads(rec.args)
    except ValueError:
        args = {}
    detail = _detail(args) if isinstance(args, dict) else ""
    line = (f"`#{rec.seq}` {rec.ts[:19].replace('T', ' ')}Z *{who}* `{user_text(rec.action)}` → "
            f"*{user_text(rec.outcome)}* {where}").rstrip()
    if detail:
        line += f" — {user_text(detail)}"
    if len(line) > MAX_LINE:  # cut, without leaving half an escape behind
        line = _PARTIAL_ENTITY.sub("", line[: MAX_LINE - 1]) + "…"
    return line


def _fit(lines: list[str]) -> list[list[str]]:
    """Pack rows, in order, into at most PAGE_SECTIONS sections of at most MAX_SECTION characters;
    the rows that do not fit are left for the next page."""
    sections: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if sections[-1] and size + 1 + len(line) > blocks.MAX_SECTION:
            if len(sections) == PAGE_SECTIONS:
                break
            sections.append([])
            size = 0
        size += len(line) + (1 if len(sections[-1]) else 0)
        sections[-1].append(line)
    return sections


def _page(cmd: Audit, ctx: Ctx, before: int | None, replace: bool) -> Reply:
    assert ctx.session is not None
    records = audit_log.page(ctx.session, _filter(cmd), before_seq=before, limit=cmd.limit + 1)
    if not records:
        text = "No audit records match." if before is None else "No older records match."
        return Reply(text, replace_original=replace)
    sections = _fit([_line(r) for r in records[: cmd.limit]])
    shown = records[: sum(len(s) for s in sections)]
    more = len(records) > len(shown)
    filters = ", ".join(f"{k}={user_text(str(v))}" for k, v in vars(cmd).items()
                        if v is not None and k != "limit") or "none"
    note = f"records #{shown[-1].seq}–#{shown[0].seq}, newest first"
    if len(shown) < min(cmd.limit, len(records)):
        note += f" ({len(shown)} of the {cmd.limit} asked for fit on this page; Older records continues)"
    body = [blocks.section("\n".join(s)) for s in sections]
    body.append(blocks.context(f"Filters: {filters} · {note}"))
    if more:
        value = encode_value({**{k: v for k, v in vars(cmd).items() if v is not None}, "before": shown[-1].seq})
        body.append(blocks.actions(blocks.button("Older records", ActionId.audit_page, value)))
    text = "Audit log:\n" + "\n".join(line for s in sections for line in s)
    return Reply(text, blocks.message(*body), replace_original=replace)


def _run(cmd: Audit, ctx: Ctx) -> Reply:
    return _page(cmd, ctx, None, replace=False)


def _from_value(value: dict[str, Any]) -> tuple[Audit, int | None]:
    before = value.get("before")
    fields = {k: value[k] for k in ("actor", "env", "since", "until", "action", "limit") if k in value}
    if before is not None:
        before = bounded_int(before, 1, MAX_SEQ, "page marker")
    types = {"actor": str, "env": str, "since": str, "until": str, "action": str, "limit": int}
    if any(not isinstance(v, types[k]) or isinstance(v, bool) for k, v in fields.items()):
        raise ValueError("malformed audit page button")
    bounded_int(fields.get("limit", 10), 1, 50, "limit")
    try:
        return Audit(**fields), before
    except TypeError:
        raise ValueError("malformed audit page button") from None


def _authorize_page(value: dict[str, Any], ctx: Ctx) -> str | None:
    cmd, _ = _from_value(value)
    if cmd.env is not None and cmd.env not in ctx.core.config.environments:
        raise ValueError("that environment no longer exists")
    _require_auditor(ctx, cmd.env)  # whoever clicks must be an auditor too
    return cmd.env


def _run_page(value: dict[str, Any], ctx: Ctx) -> Reply:
    cmd, before = _from_value(value)
    return _page(cmd, ctx, before, replace=True)


def make_entries() -> tuple[CommandEntry, ActionEntry]:
    return (CommandEntry(SPEC, _authorize, _run, needs_db=True),
            ActionEntry(ActionId.audit_page, _authorize_page, _run_page))
