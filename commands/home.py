"""The App Home tab: the live status of every environment the viewer may see, with the buttons for what
they may do there, then their roles and the commands.

Published when the tab is opened (`app_home_opened`, `prepare_home_opened`) and by `refresh_home(core,
user_ids)`, which the run engine can call when a run changes state. The live reads (`bot.core.status`)
happen before the publishing transaction opens, so no write lock is held while a backend is slow.
"""

from __future__ import annotations

import logging
from typing import Any

from bot import blocks
from bot.config import Role
from bot.core.context import Core
from bot.core.model import Reply
from bot.core.status import EnvStatus, environment_statuses
from bot.ids import ActionId, encode_value
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.status import footer, render_env

log = logging.getLogger(__name__)


def visible_statuses(core: Core, envs: list[str]) -> dict[str, EnvStatus]:
    """The live status of `envs`, every backend asked at once (see `bot.core.status`)."""
    if not envs:
        return {}
    return {st.name: st for st in environment_statuses(core, envs)}


def _buttons(core: Core, user_id: str, env: str) -> list[dict[str, Any]]:
    """What the viewer may start from here: stop trading (operator), roll back (deployer)."""
    value = encode_value({"env": env})
    out = []
    if core.authorizer.has(user_id, Role.operator, env):
        out.append(blocks.button("Stop trading", ActionId.stop_trading, value, style="danger", confirm=(
            f"Stop trading in {env}?",
            "Bots stop opening positions and resting orders are cancelled; open positions are kept.")))
    if core.authorizer.has(user_id, Role.deployer, env):
        out.append(blocks.button("Roll back", ActionId.rollback, value, confirm=(
            f"Roll {env} back?", "Starts the runbook 8.2 rollback to the previous version.")))
    return out


def home_view(core: Core, user_id: str, commands: dict[str, CommandEntry],
              statuses: dict[str, EnvStatus] | None = None) -> dict[str, object]:
    """The view for `user_id`; `statuses` (from `visible_statuses`) is read now when not given."""
    name = core.config.name_of(user_id)
    visible = core.authorizer.environments_visible_to(user_id)
    if statuses is None:
        statuses = visible_statuses(core, visible)
    body: list[blocks.Block] = [blocks.header("swarm-chatops")]
    role_lines = []
    for env in core.config.environments:
        roles = sorted(r.value for r in core.authorizer.roles_of(user_id, env))
        role_lines.append(f"*{env}*: {', '.join(roles) if roles else 'no roles'}")
    body.append(blocks.section(f"Hello {name or '<@' + user_id + '>'}. Your roles:\n" + "\n".join(role_lines)))
    shown = [statuses[env] for env in visible if env in statuses]
    for st in shown:
        body += [blocks.divider(), blocks.section(render_env(st, details=False))]
        buttons = _buttons(core, user_id, st.name)
        if buttons:
            body.append(blocks.actions(*buttons, block_id=f"home:{st.name}"))
    if shown:
        body.append(blocks.context(footer(shown)))
    usage = "\n".join(f"• `{e.spec.usage}` — {e.spec.summary}" for e in commands.values() if e.listed)
    body += [blocks.divider(), blocks.section(usage),
             blocks.context("Every command and click is recorded in the audit log.")]
    return {"type": "home", "blocks": blocks.message(*body)}


def refresh_home(core: Core, user_ids: list[str], commands: dict[str, CommandEntry] | None = None) -> int:
    """Publish a fresh Home tab to each of `user_ids` (e.g. when a run changes state); the number queued.
    The environments are read once for everyone, before the publishing transaction. Call it outside any
    transaction (it opens its own) and off latency-critical paths: it takes up to `status.timeout_seconds`."""
    if not user_ids:
        return 0
    if commands is None:
        from commands import registry

        commands = registry.build()[0]
    envs = sorted({env for uid in user_ids for env in core.authorizer.environments_visible_to(uid)})
    statuses = visible_statuses(core, envs)
    views = {uid: home_view(core, uid, commands, statuses) for uid in dict.fromkeys(user_ids)}
    with core.db.transaction() as session:
        for uid, view in views.items():
            core.outbox.home(session, uid, view)
    return len(views)


# -- the Home tab's buttons ------------------------------------------------------------------------------

def _env_of(value: dict[str, Any], ctx: Ctx, role: Role, what: str) -> str:
    from bot.errors import CommandError

    env = value.get("env")
    if not isinstance(env, str) or env not in ctx.core.config.environments:
        raise CommandError("this button names no known environment; reopen the Home tab")
    ctx.core.authorizer.require(ctx.actor, role, env, f"{what} in {env}")
    return env


def _stop_trading(value: dict[str, Any], ctx: Ctx) -> Reply:
    """The Home tab's Stop trading: the same run as `/stop-trading --env ENV` (graceful)."""
    assert ctx.session is not None
    env = str(value.get("env"))
    reply: Reply = ctx.core.stop_trading.request(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,
                                          correlation_id=ctx.correlation_id, env_name=env,
                                          reason="from the App Home tab", emergency=False)
    if ctx.channel_id is None and ctx.response_url is None:
        ctx.core.outbox.post(ctx.session, ctx.actor.user_id, reply)  # a Home click has no channel: the DM
    return reply


def _rollback_pointer(value: dict[str, Any], ctx: Ctx) -> Reply:
    """The Home tab's Roll back: a rollback reads the cluster and shows a plan first, so it is typed."""
    env = str(value.get("env"))
    reply = Reply(f"To roll {env} back, type `/rollback --env {env}` (add `--to VERSION` to pick the version): "
                  "it plans runbook 8.2, asks for approval where needed and shows every step. Nothing was done yet.")
    if ctx.channel_id is None and ctx.response_url is None and ctx.session is not None:
        ctx.core.outbox.post(ctx.session, ctx.actor.user_id, reply)
    return reply


def make_actions() -> list[ActionEntry]:
    """The Home tab's buttons."""
    return [
        ActionEntry(ActionId.stop_trading, lambda v, c: _env_of(v, c, Role.operator, "stop trading"), _stop_trading),
        ActionEntry(ActionId.rollback, lambda v, c: _env_of(v, c, Role.deployer, "roll back"), _rollback_pointer),
    ]
