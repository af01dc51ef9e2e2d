"""The buttons on an alert group's root: Acknowledge, Silence 1 h, the *Silence for…* menu, Unsilence,
Roll back, Stop trading.

Each click is authorized for the clicker's role in the group's environment before anything runs
(operator for acknowledging, silencing and stopping trading; deployer for rolling back, as `/rollback`),
and a silence's duration is checked against the menu's there too (a forged value is refused and
audited as a usage error). The click is audited by the dispatcher with its outcome and does its work
through the core (`bot.core.alerts.actions.AlertActions`, `DeployService.rollback`,
`StopTradingService.request`). Calls to outside systems — Alertmanager for a silence, the cluster's
live image for a rollback — run after the click's transaction committed (`bot.core.alerts.followup`),
and their outcome is recorded in a second one. A group of no known environment can be acknowledged by
an operator of any environment.
"""

from __future__ import annotations

from typing import Any

from bot.blocks import user_text
from bot.config import Role
from bot.core.alerts.actions import AlertActions
from bot.core.alerts.followup import Clicker, FollowUp, after_commit
from bot.core.alerts.silences import minutes_of
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


def _clicker(ctx: Ctx) -> Clicker:
    return Clicker(ctx.actor, ctx.correlation_id, ctx.channel_id, ctx.response_url)


def _authorizer(role: Role, what: str, *, needs_env: bool = False, silence: bool = False) -> Any:
    def authorize(value: dict[str, Any], ctx: Ctx) -> str | None:
        if silence:
            minutes_of(value)  # before the role check: a forged duration is refused whoever sends it
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
    return _svc(ctx).silence(ctx.session, _clicker(ctx), _group(value, ctx), minutes_of(value))


def _unsilence(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).unsilence(ctx.session, _clicker(ctx), _group(value, ctx))


def _rollback(value: dict[str, Any], ctx: Ctx) -> Reply:
    """`/rollback --env ENV` with the alert as its reason: the same rules (continue a failed run, previous
    version, approvals). The click's transaction checks the group; the live image is read from the cluster
    after it committed, and `/rollback` runs in a second transaction with it."""
    assert ctx.session is not None
    grp = _group(value, ctx)
    env = grp.environment
    assert env is not None
    deploy, executor, outbox, who = ctx.core.deploy, ctx.core.executor, ctx.core.outbox, _clicker(ctx)
    reason, group_id = f"alert {grp.title}"[:200], grp.id

    def call() -> Any:
        return deploy.backends(env).cluster.current_image(deploy.ref(deploy.env(env)))

    def record(session: Any, current: Any, error: Exception | None) -> None:
        if error is not None:
            raise error
        who.answer(outbox, session, deploy.rollback(session, actor=who.actor, channel_id=who.channel_id,
                                                    correlation_id=who.correlation_id, env_name=env, to=None,
                                                    reason=reason, current_image=current, executor=executor))

    after_commit(ctx.session, ctx.core.db, FollowUp("rollback", call, record,
                                                     who.failed(outbox, "alert.rollback", env, group_id=group_id)))
    return Reply(f":hourglass: Reading what {env} runs now, then starting /rollback…")


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
        ActionEntry(ActionId.alert_silence, _authorizer(Role.operator, "silence alerts", needs_env=True,
                                                        silence=True), _silence),
        ActionEntry(ActionId.alert_silence_for, _authorizer(Role.operator, "silence alerts", needs_env=True,
                                                            silence=True), _silence),
        ActionEntry(ActionId.alert_unsilence, _authorizer(Role.operator, "unsilence alerts", needs_env=True),
                    _unsilence),
        ActionEntry(ActionId.alert_rollback, _authorizer(Role.deployer, "roll back", needs_env=True), _rollback),
        ActionEntry(ActionId.alert_stop_trading, _authorizer(Role.operator, "stop trading", needs_env=True),
                    _stop_trading),
    ]
