"""/status [--env ENV]: the environments and what is configured for them."""

from __future__ import annotations

from dataclasses import dataclass

from bot import blocks
from bot.config import Role
from bot.core.model import Reply
from bot.errors import PermissionDenied
from commands.dispatch import CommandEntry, Ctx
from commands.grammar import CommandSpec, Flag, env_value


@dataclass(frozen=True)
class Status:
    env: str | None = None


SPEC = CommandSpec(
    name="status",
    summary="environments, their targets, channels, approvals and backends",
    target=Status,
    flags=(Flag("env", "only this environment", env_value, metavar="ENV"),),
    examples=("/status", "/status --env production"),
    slack_name="swarm-status",
)


def _authorize(cmd: Status, ctx: Ctx) -> str | None:
    authz = ctx.core.authorizer
    if cmd.env:
        authz.require(ctx.actor, Role.viewer, cmd.env, f"see the status of {cmd.env}")
        return cmd.env
    if not authz.environments_visible_to(ctx.actor.user_id):
        raise PermissionDenied(f"{ctx.actor.label} may not see any environment", role="viewer", environment=None)
    return None


def _backend(ctx: Ctx, env: str, kind: str, configured: object) -> str:
    label = ctx.core.backends.get(f"{env}.{kind}")
    if label:
        return label
    return "configured" if configured else "simulated"


def _run(cmd: Status, ctx: Ctx) -> Reply:
    authz = ctx.core.authorizer
    names = [cmd.env] if cmd.env else authz.environments_visible_to(ctx.actor.user_id)
    sections: list[blocks.Block] = [blocks.header("Trading Bot Swarm — status")]
    text_lines: list[str] = []
    for name in names:
        env = ctx.core.config.environments[name]
        roles = sorted(r.value for r in authz.roles_of(ctx.actor.user_id, name))
        k8s = _backend(ctx, name, "kubernetes", env.kubernetes)
        prom = _backend(ctx, name, "prometheus", env.prometheus)
        trading = _backend(ctx, name, "trading_api", env.trading_api)
        body = (
            f"*{name}*" + (f" — {env.description}" if env.description else "") + "\n"
            f"Target: `{env.namespace}/deployment/{env.deployment}` container `{env.container}`\n"
            f"Image: `{env.image}` (tags matching `{env.allowed_tags}`)\n"
            f"Channels: deploy <#{env.channels.deploy}>"
            + (f", incident <#{env.channels.incident}>" if env.channels.incident else "") + "\n"
            f"Approvals required: {env.approvals_required}\n"
            f"Backends: Kubernetes {k8s} · Prometheus {prom} · trading API {trading}\n"
            f"Your roles: {', '.join(roles) if roles else 'none'}"
        ) + _live(ctx, name)
        sections += [blocks.section(body), blocks.divider()]
        text_lines.append(body)
    return Reply("\n\n".join(text_lines), blocks.message(*sections[:-1]))


def _live(ctx: Ctx, env: str) -> str:
    """Locks and active runs, from the database (so every replica tells the same story)."""
    if ctx.session is None or ctx.core.deploy is None:
        return ""
    from bot.core import locks
    from bot.core.runs.states import RunState
    from bot.core.workflows.deploy.messages import STATE_TEXT
    from bot.core.workflows.deploy.plan import subject_of

    lines = []
    holder = locks.current(ctx.session, env)
    lines.append(f"\n:lock: {holder.describe()}" if holder else "\nLock: free")
    for run in ctx.core.deploy.active_runs(ctx.session, env):
        subj = subject_of(run) if run.kind in ("deploy", "rollback") else None
        what = f"{subj.version} ({subj.strategy})" if subj else run.kind.replace("_", " ")
        lines.append(f"\nRun `{run.id}`: {what} — {STATE_TEXT[RunState(run.state)]}, "
                     f"requested by {run.requested_name or run.requested_by}")
    return "".join(lines)


def make_entry() -> CommandEntry:
    return CommandEntry(SPEC, _authorize, _run, needs_db=True)
