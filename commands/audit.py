"""/audit: the audit log for auditors, filtered and paged (ephemeral), with an "Older" button."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot import blocks
from bot.config import Role
from bot.core.model import Reply
from bot.ids import ActionId, encode_value
from bot.persistence import audit as audit_log
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.grammar import CommandSpec, Flag, ParseContext, env_value, int_value, user_value, when_value

MAX_LINE = 280


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
    if env is None and not ctx.core.authorizer.has(ctx.actor.user_id, Role.auditor, None):
        # an auditor of one environment may read that environment's records
        ctx.core.authorizer.require(ctx.actor, Role.auditor, None, "read the whole audit log (try --env ENV)")
    ctx.core.authorizer.require(ctx.actor, Role.auditor, env, "read the audit log")


def _authorize(cmd: Audit, ctx: Ctx) -> str | None:
    _require_auditor(ctx, cmd.env)
    return cmd.env


def _filter(cmd: Audit) -> audit_log.AuditFilter:
    return audit_log.AuditFilter(since=cmd.since, until=cmd.until, actor_ids=(cmd.actor,) if cmd.actor else (),
                                 environment=cmd.env, action_prefix=cmd.action)


def _line(rec: Any) -> str:
    who = rec.actor_name or rec.actor_id
    where = " ".join(x for x in (f"env={rec.environment}" if rec.environment else "",
                                 f"<#{rec.channel}>" if rec.channel and rec.channel[:1] in "CG" else "") if x)
    args = json.loads(rec.args)
    detail = args.get("text") or args.get("value") or ""
    line = f"`#{rec.seq}` {rec.ts[:19].replace('T', ' ')}Z *{who}* `{rec.action}` → *{rec.outcome}* {where}"
    if detail:
        line += f" — {str(detail)[:120]}"
    return line[:MAX_LINE]


def _page(cmd: Audit, ctx: Ctx, before: int | None, replace: bool) -> Reply:
    assert ctx.session is not None
    records = audit_log.page(ctx.session, _filter(cmd), before_seq=before, limit=cmd.limit + 1)
    more = len(records) > cmd.limit
    records = records[: cmd.limit]
    if not records:
        text = "No audit records match." if before is None else "No older records match."
        return Reply(text, replace_original=replace)
    lines = [_line(r) for r in records]
    filters = ", ".join(f"{k}={v}" for k, v in vars(cmd).items() if v is not None and k != "limit") or "none"
    body = [blocks.section("\n".join(lines)),
            blocks.context(f"Filters: {filters} · records #{records[-1].seq}–#{records[0].seq}, newest first")]
    if more:
        value = encode_value({**{k: v for k, v in vars(cmd).items() if v is not None}, "before": records[-1].seq})
        body.append(blocks.actions(blocks.button("Older records", ActionId.audit_page, value)))
    return Reply("Audit log:\n" + "\n".join(lines), blocks.message(*body), replace_original=replace)


def _run(cmd: Audit, ctx: Ctx) -> Reply:
    return _page(cmd, ctx, None, replace=False)


def _from_value(value: dict[str, Any]) -> tuple[Audit, int | None]:
    before = value.get("before")
    fields = {k: value[k] for k in ("actor", "env", "since", "until", "action", "limit") if k in value}
    if before is not None and (not isinstance(before, int) or isinstance(before, bool)):
        raise ValueError("malformed page marker")
    types = {"actor": str, "env": str, "since": str, "until": str, "action": str, "limit": int}
    if any(not isinstance(v, types[k]) or isinstance(v, bool) for k, v in fields.items()):
        raise ValueError("malformed audit page button")
    if not 1 <= fields.get("limit", 10) <= 50:
        raise ValueError("malformed audit page button (limit)")
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
