"""/deploy VERSION, /lock ENV, /unlock ENV, and the plan's Approve / Abort / Tick buttons."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from bot.blocks import user_text
from bot.config import Config, Role
from bot.core.model import Reply, person
from bot.core.workflows.deploy.model import Strategy
from bot.core.workflows.deploy.service import DeployService
from bot.errors import UnknownEnvironment
from bot.ids import ActionId
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.grammar import (
    CommandSpec,
    Flag,
    Positional,
    bounded_int,
    decimal_value,
    env_value,
    text_value,
    version_value,
)


@dataclass(frozen=True)
class Deploy:
    version: str
    env: str | None = None
    canary: bool = False
    blue_green: bool = False
    dry_run: bool = False
    reason: str | None = None
    force: bool = False

    @property
    def strategy(self) -> str | None:
        return "canary" if self.canary else "blue-green" if self.blue_green else None


SPEC = CommandSpec(
    name="deploy",
    summary="plan a deployment of VERSION, get it approved, run it by the runbook",
    target=Deploy,
    positionals=(Positional("version", version_value, "the release tag, e.g. v2.3"),),
    flags=(
        Flag("env", "target environment (default: the config's default_environment)", env_value, metavar="ENV"),
        Flag("canary", "shift traffic step by step with analysis at each step (the steps of each environment "
                       "are listed below)"),
        Flag("blue-green", "deploy to the idle colour, then switch the Service"),
        Flag("dry-run", "post the plan only; nothing is changed"),
        Flag("reason", "why (shown in the plan and the audit log)", text_value, metavar="TEXT"),
        Flag("force", "admins: deploy through a freeze (announced loudly, audited)"),
    ),
    exclusive=(("canary", "blue-green"),),
    examples=("/deploy v2.3 --canary", "/deploy v2.3 --env production --canary --reason \"fix fills\""),
    config_details=lambda config: _canary_steps(config),
)


def _canary_steps(config: Config) -> str:
    """Each environment's configured canary steps, as /help deploy shows them."""
    return "Canary steps: " + "; ".join(f"{name} {' → '.join(f'{w}%' for w in env.canary.steps)}"
                                        for name, env in config.environments.items())


def env_of(ctx: Ctx, name: str | None, usage: str | None = None) -> str:
    """`--env` or the config's default_environment; a usage error naming the environments otherwise."""
    resolved = ctx.core.config.resolve_env(name)
    if resolved is None:
        known = ", ".join(ctx.core.config.environments)
        raise UnknownEnvironment("no environment given and no default_environment configured",
                                 hint=f"Add --env ENV ({known}).", usage=usage or SPEC.usage)
    return resolved[0]


def _env_of(ctx: Ctx, name: str | None) -> str:
    return env_of(ctx, name, SPEC.usage)


def _svc(ctx: Ctx) -> DeployService:
    assert ctx.core.deploy is not None, "the deploy service is not wired"
    return ctx.core.deploy  # type: ignore[no-any-return]


def _authorize_deploy(cmd: Deploy, ctx: Ctx) -> str | None:
    env = _env_of(ctx, cmd.env)
    ctx.core.authorizer.require(ctx.actor, Role.deployer, env, f"deploy to {env}")
    if cmd.force:
        ctx.core.authorizer.require(ctx.actor, Role.admin, env, f"force a deploy through a freeze of {env}")
    return env


def _prefetch_deploy(cmd: Deploy, ctx: Ctx) -> str:
    """The live image, read from the cluster before the transaction opens."""
    return _svc(ctx).live_image(_env_of(ctx, cmd.env), cmd.version)


def _run_deploy(cmd: Deploy, ctx: Ctx) -> Reply:
    env = _env_of(ctx, cmd.env)
    assert ctx.session is not None
    strategy = cast(Strategy, cmd.strategy or ctx.core.config.environments[env].default_strategy)  # both checked
    return _svc(ctx).request(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,
                             correlation_id=ctx.correlation_id, env_name=env, version=cmd.version,
                             strategy=strategy, dry_run=cmd.dry_run, reason=cmd.reason, force=cmd.force,
                             current_image=ctx.prefetched)


# --- /lock and /unlock -------------------------------------------------------------------------------------
MIN_HOURS, MAX_HOURS = 0.1, 168.0
_hours = decimal_value(MIN_HOURS, MAX_HOURS, "give a number of hours from 0.1 (6 minutes) to 168 (a week), "
                                             "e.g. 4 or 0.5")


@dataclass(frozen=True)
class Lock:
    env: str
    reason: str | None = None
    hours: float = 4.0


@dataclass(frozen=True)
class Unlock:
    env: str
    force: bool = False


LOCK_SPEC = CommandSpec(
    name="lock", summary="freeze deploys to an environment (visible in /status)", target=Lock,
    positionals=(Positional("env", env_value, "the environment to freeze"),),
    flags=(Flag("reason", "why (required; quote text with spaces)", text_value, metavar="TEXT", required=True),
           Flag("hours", "how long: hours from 0.1 to 168, default 4", _hours, metavar="N")),
    examples=('/lock production --reason "quarter-end close"',),
)
UNLOCK_SPEC = CommandSpec(
    name="unlock", summary="lift a freeze (admins: --force breaks any lock)", target=Unlock,
    positionals=(Positional("env", env_value, "the environment"),),
    flags=(Flag("force", "admins: break a lock held by someone else or by a run"),),
    examples=("/unlock production", "/unlock production --force"),
)


def _authorize_lock(cmd: Lock, ctx: Ctx) -> str | None:
    ctx.core.authorizer.require(ctx.actor, Role.deployer, cmd.env, f"freeze {cmd.env}")
    return cmd.env


def _run_lock(cmd: Lock, ctx: Ctx) -> Reply:
    assert ctx.session is not None
    info = _svc(ctx).freeze(ctx.session, actor=ctx.actor, env_name=cmd.env, reason=cmd.reason or "", hours=cmd.hours)
    channel = ctx.core.config.environments[cmd.env].channels.deploy
    ctx.core.outbox.post(ctx.session, channel, Reply(f":lock: {info.describe()}", ephemeral=False))
    return Reply(f"Locked: {info.describe()}")


def _authorize_unlock(cmd: Unlock, ctx: Ctx) -> str | None:
    role = Role.admin if cmd.force else Role.deployer
    ctx.core.authorizer.require(ctx.actor, role, cmd.env, f"unlock {cmd.env}" + (" by force" if cmd.force else ""))
    return cmd.env


def _run_unlock(cmd: Unlock, ctx: Ctx) -> Reply:
    from bot.core import locks
    from bot.errors import Conflict, PermissionDenied

    assert ctx.session is not None
    holder = locks.current(ctx.session, cmd.env)
    if holder is None:
        return Reply(f"`{cmd.env}` is not locked.")
    channel = ctx.core.config.environments[cmd.env].channels.deploy
    is_admin = ctx.core.authorizer.has(ctx.actor.user_id, Role.admin, cmd.env)
    if holder.kind == "run" and not cmd.force:
        raise Conflict(f"{holder.describe()}; it is released when the run ends",
                       hint=f"Abort the run from its message, or (admins) `/unlock {cmd.env} --force`.")
    if holder.kind == "freeze" and holder.held_by != ctx.actor.user_id and not (cmd.force and is_admin):
        who = person(holder.held_by, user_text(holder.held_by_name) if holder.held_by_name else "its holder")
        raise PermissionDenied(f"{holder.describe()}; only {who} or an admin with `/unlock {cmd.env} --force` "
                               "may lift it", role="admin", environment=cmd.env)
    run = _svc(ctx).load(ctx.session, holder.run_id) if holder.kind == "run" and holder.run_id else None
    if run is not None and run.state in ("running", "rolling_back"):
        # the run's rollback must finish under the lock, or a new deploy could start beside it
        if run.state == "running" and not run.abort_requested_by:
            _svc(ctx).abort(ctx.session, actor=ctx.actor, run_id=run.id, env_name=run.environment)
        ctx.audit("lock.break_glass", "abort_requested", environment=cmd.env, broke=holder.describe(markup=False))
        ctx.core.outbox.post(ctx.session, channel, Reply(
            f":rotating_light: *BREAK-GLASS*: {ctx.actor.mention} forced run `{run.id}` on `{cmd.env}` to stop: it "
            "rolls back now and the lock is released when that ends.", ephemeral=False))
        return Reply(f"Run `{run.id}` is rolling back; `{cmd.env}` unlocks when it ends.")
    if run is not None and run.state in ("queued", "pending_approval"):
        # abort() releases the run's lock, audits, refreshes its message and wakes the executor
        _svc(ctx).abort(ctx.session, actor=ctx.actor, run_id=run.id, env_name=run.environment)
    locks.force_release(ctx.session, cmd.env)
    if cmd.force:
        ctx.audit("lock.break_glass", "forced", environment=cmd.env, broke=holder.describe(markup=False))
        ctx.core.outbox.post(ctx.session, channel, Reply(
            f":rotating_light: *BREAK-GLASS*: {ctx.actor.mention} force-released the lock on `{cmd.env}` "
            f"({holder.describe()}).", ephemeral=False))
    else:
        ctx.core.outbox.post(ctx.session, channel, Reply(f":unlock: {ctx.actor.mention} lifted the freeze on "
                                                         f"`{cmd.env}`.", ephemeral=False))
    return Reply(f"Unlocked `{cmd.env}`.")


# --- buttons -------------------------------------------------------------------------------------------------
_RUN_ID = re.compile(r"r-[0-9a-f]{8}")
MAX_STEPS = 1000  # far more steps than any procedure has; keeps a crafted index out of the query


def _value_env(value: dict[str, Any], ctx: Ctx) -> str:
    env, run = value.get("env"), value.get("run")
    if (not isinstance(env, str) or env not in ctx.core.config.environments
            or not isinstance(run, str) or not _RUN_ID.fullmatch(run)):
        raise ValueError("malformed deploy button")
    return env


def _authorize_approve(value: dict[str, Any], ctx: Ctx) -> str | None:
    env = _value_env(value, ctx)
    ctx.core.authorizer.require(ctx.actor, Role.approver, env, f"approve deploys to {env}")
    return env


def _run_approve(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).approve(ctx.session, actor=ctx.actor, run_id=value["run"], env_name=value["env"],
                             hash_prefix=str(value.get("h", "")))


def _authorize_any_viewer(value: dict[str, Any], ctx: Ctx) -> str | None:
    env = _value_env(value, ctx)
    ctx.core.authorizer.require(ctx.actor, Role.viewer, env, f"act on deploys to {env}")
    return env  # the handler checks the exact rule (requester, approver, admin / the item's role)


def _authorize_tick(value: dict[str, Any], ctx: Ctx) -> str | None:
    bounded_int(value.get("step"), 0, MAX_STEPS, "checklist step")
    return _authorize_any_viewer(value, ctx)


def _run_abort(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    return _svc(ctx).abort(ctx.session, actor=ctx.actor, run_id=value["run"], env_name=value["env"])


def _run_tick(value: dict[str, Any], ctx: Ctx) -> Reply:
    assert ctx.session is not None
    step = bounded_int(value.get("step"), 0, MAX_STEPS, "checklist step")  # checked at ack time already
    return _svc(ctx).tick(ctx.session, actor=ctx.actor, run_id=value["run"], env_name=value["env"], step_idx=step)


# --- /rollback ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rollback:
    env: str | None = None
    to: str | None = None
    reason: str | None = None
    with_db: bool = False


ROLLBACK_SPEC = CommandSpec(
    name="rollback",
    summary="roll back to the previous version by runbook 8.2, or continue a rollback that could not finish",
    target=Rollback,
    flags=(
        Flag("env", "environment (default: the config's default_environment)", env_value, metavar="ENV"),
        Flag("to", "the version to go back to (default: the one before the live version)", version_value,
             metavar="VERSION"),
        Flag("with-db", "also roll the database back with the environment's db_rollback Job (runbook 8.2 step 3; "
             "admin, and always one approval)"),
        Flag("reason", "why (shown in the plan, the incident channel and the audit log)", text_value,
             metavar="TEXT"),
    ),
    examples=("/rollback --env production --reason \"fills broken\"", "/rollback --env production --to v2.2.0",
              "/rollback --env production --to v2.2.0 --with-db --reason \"migration broke fills\""),
)


def _authorize_rollback(cmd: Rollback, ctx: Ctx) -> str | None:
    env = _env_of(ctx, cmd.env)
    ctx.core.authorizer.require(ctx.actor, Role.deployer, env, f"roll back {env}")
    if cmd.with_db:
        ctx.core.authorizer.require(ctx.actor, Role.admin, env, f"roll the database of {env} back (--with-db)")
    return env


def _prefetch_rollback(cmd: Rollback, ctx: Ctx) -> str:
    env = _env_of(ctx, cmd.env)
    svc = _svc(ctx)
    return svc.backends(env).cluster.current_image(svc.ref(svc.env(env)))


def _run_rollback(cmd: Rollback, ctx: Ctx) -> Reply:
    env = _env_of(ctx, cmd.env)
    assert ctx.session is not None
    return _svc(ctx).rollback(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,
                              correlation_id=ctx.correlation_id, env_name=env, to=cmd.to, reason=cmd.reason,
                              current_image=ctx.prefetched, executor=ctx.core.executor, with_db=cmd.with_db)


def make_entries() -> tuple[list[CommandEntry], list[ActionEntry]]:
    return ([CommandEntry(SPEC, _authorize_deploy, _run_deploy, needs_db=True, prefetch=_prefetch_deploy),
             CommandEntry(ROLLBACK_SPEC, _authorize_rollback, _run_rollback, needs_db=True,
                          prefetch=_prefetch_rollback),
             CommandEntry(LOCK_SPEC, _authorize_lock, _run_lock, needs_db=True),
             CommandEntry(UNLOCK_SPEC, _authorize_unlock, _run_unlock, needs_db=True)],
            [ActionEntry(ActionId.deploy_approve, _authorize_approve, _run_approve),
             ActionEntry(ActionId.deploy_abort, _authorize_any_viewer, _run_abort),
             ActionEntry(ActionId.deploy_tick, _authorize_tick, _run_tick)])
