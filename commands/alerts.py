"""The buttons on an alert group's root: Acknowledge, Silence 1 h / 4 h, Unsilence, Roll back, Stop trading.

Each click is authorized for the clicker's role in the group's environment before anything runs
(operator for acknowledging, silencing and stopping trading; deployer for rolling back, as `/rollback`),
audited by the dispatcher with its outcome, and does its work in the click's transaction through the
core (`bot.core.alerts.actions.AlertActions`, `DeployService.rollback`, `StopTradingService.request`).
A group of no known environment can be acknowledged by an operator of any environment.
"""

from __future__ import annotations

from typing import Any

from bot.blocks import user_text
from bot.config import Role
from bot.core.alerts.actions import AlertActions
from bot.core.model import Reply
from bot.errors import CommandError
from bot.ids import ActionId
from commands.dispatch import ActionEntry, Ctx


def _svc(ctx: Ctx) -> AlertActions:
    svc = getattr(ctx.core, "alert_actions", None)
    if svc is None:
        raise CommandError("alert actions are not available in this process")
    return svc  # type: ignore[no-any-return]


def _env_of(value: dict[str, Any], ctx: Ctx) -> str | None:
    """The environment the button names (authorization does no I/O; the handler checks it against the group)."""
    env = value.get("e")
    if env is not None and (not isinstance(env, str) or env not in ctx.core.config.environments):
        raise CommandError("this button names no known environment")
    return env


def _group(value: dict[str, Any], ctx: Ctx) -> Any:
    assert ctx.session is not None
    grp = _svc(ctx).group_for(ctx.session, value.get("g"))
    if grp.environment != value.get("e"):
        raise CommandError("this button does not belong to that alert")
    return grp


def _authorizer(role: Role, what: str, *, needs_env: bool = False) -> Any:
    def authorize(value: dict[str, Any], ctx: Ctx) -> str | None:
        env = _env_of(value, ctx)
        if env is None:
            if needs_env:
                raise CommandError(f"this alert belongs to no known environment: cannot {what}")
            ctx.core.authorizer.require_anywhere(ctx.actor, role, what)
            return None
        ctx.core.authorizer.require(ctx.actor, role, env, f"{what} in {env}")
        return env

    return authorize


def _acknowledge(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).acknowledge(ctx.session, ctx.actor, _group(value, ctx), ctx.correlation_id)


def _silence(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).silence(ctx.session, ctx.actor, _group(value, ctx), value.get("h"), ctx.correlation_id)


def _unsilence(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).unsilence(ctx.session, ctx.actor, _group(value, ctx), ctx.correlation_id)


def _rollback(value: dict[str, Any], ctx: Ctx) -> Reply:
    """`/rollback --env ENV` with the alert as its reason: the same rules (continue a failed run, previous
    version, approvals)."""
    assert ctx.session is not None
    grp = _group(value, ctx)
    env = grp.environment
    assert env is not None
    deploy = ctx.core.deploy
    current = deploy.backends(env).cluster.current_image(deploy.ref(deploy.env(env)))
    return deploy.rollback(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,  # type: ignore[no-any-return]
                           correlation_id=ctx.correlation_id, env_name=env, to=None,
                           reason=f"alert {grp.title}"[:200], current_image=current, executor=ctx.core.executor)


def _stop_trading(value: dict[str, Any], ctx: Ctx) -> Reply:
    """`/stop-trading --env ENV` (graceful) with the alert as its reason."""
    assert ctx.session is not None
    grp = _group(value, ctx)
    assert grp.environment is not None
    return ctx.core.stop_trading.request(  # type: ignore[no-any-return]
        ctx.session, actor=ctx.actor, channel_id=ctx.channel_id, correlation_id=ctx.correlation_id,
        env_name=grp.environment, reason=f"alert {user_text(grp.title)}"[:200], emergency=False)


def make_actions() -> list[ActionEntry]:
    return [
        ActionEntry(ActionId.alert_ack, _authorizer(Role.operator, "acknowledge alerts"), _acknowledge),
        ActionEntry(ActionId.alert_silence, _authorizer(Role.operator, "silence alerts", needs_env=True), _silence),
        ActionEntry(ActionId.alert_unsilence, _authorizer(Role.operator, "unsilence alerts", needs_env=True),
                    _unsilence),
        ActionEntry(ActionId.alert_rollback, _authorizer(Role.deployer, "roll back", needs_env=True), _rollback),
        ActionEntry(ActionId.alert_stop_trading, _authorizer(Role.operator, "stop trading", needs_env=True),
                    _stop_trading),
    ]
