"""/stop-trading [--env ENV] [--reason TEXT] [--emergency]: halt trading now, verify, kill switch."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Role
from bot.core.model import Reply
from bot.core.workflows.trading.resume import ResumeTradingService
from bot.core.workflows.trading.stop import StopTradingService
from commands.deploy import env_of
from commands.dispatch import CommandEntry, Ctx
from commands.grammar import CommandSpec, Flag, env_value, text_value


@dataclass(frozen=True)
class StopTrading:
    env: str | None = None
    reason: str | None = None
    emergency: bool = False


STOP_SPEC = CommandSpec(
    name="stop-trading",
    summary="halt trading now (no approval), verify the halt, kill switch if the trading API cannot",
    target=StopTrading,
    flags=(
        Flag("env", "environment (default: the config's default_environment)", env_value, metavar="ENV"),
        Flag("reason", "why (shown in the incident channel and the audit log)", text_value, metavar="TEXT"),
        Flag("emergency", "halt everything at once (runbook 8.2 emergency stop); default: graceful — no new "
                          "positions, resting orders cancelled, positions kept"),
    ),
    examples=("/stop-trading --env production --reason \"bad fills\"", "/stop-trading --env production --emergency"),
)


def _env_of(ctx: Ctx, name: str | None) -> str:
    return env_of(ctx, name, STOP_SPEC.usage)


def _svc(ctx: Ctx) -> StopTradingService:
    svc = getattr(ctx.core, "stop_trading", None)
    assert svc is not None, "the stop-trading service is not wired"
    return svc  # type: ignore[no-any-return]


def _authorize_stop(cmd: StopTrading, ctx: Ctx) -> str | None:
    env = _env_of(ctx, cmd.env)
    ctx.core.authorizer.require(ctx.actor, Role.operator, env, f"stop trading in {env}")
    return env


def _run_stop(cmd: StopTrading, ctx: Ctx) -> Reply:
    env = _env_of(ctx, cmd.env)
    assert ctx.session is not None
    return _svc(ctx).request(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,
                             correlation_id=ctx.correlation_id, env_name=env, reason=cmd.reason,
                             emergency=cmd.emergency)


@dataclass(frozen=True)
class ResumeTrading:
    env: str | None = None
    gradual: bool = False
    reason: str | None = None


RESUME_SPEC = CommandSpec(
    name="resume-trading",
    summary="turn trading back on (approval in production), gradually with KPI windows if asked",
    target=ResumeTrading,
    flags=(
        Flag("env", "environment (default: the config's default_environment)", env_value, metavar="ENV"),
        Flag("gradual", "10 → 25 → 50 → 100 % of bots (configurable) with a KPI monitoring window between stages "
                        "(runbook 5.4: 15 minutes)"),
        Flag("reason", "why (shown in the plan and the audit log)", text_value, metavar="TEXT"),
    ),
    examples=("/resume-trading --env production --gradual --reason \"fills fixed\"",),
)


def _authorize_resume(cmd: ResumeTrading, ctx: Ctx) -> str | None:
    env = _env_of(ctx, cmd.env)
    ctx.core.authorizer.require(ctx.actor, Role.operator, env, f"resume trading in {env}")
    return env


def _run_resume(cmd: ResumeTrading, ctx: Ctx) -> Reply:
    env = _env_of(ctx, cmd.env)
    assert ctx.session is not None
    svc: ResumeTradingService = ctx.core.resume_trading
    return svc.request(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id, correlation_id=ctx.correlation_id,
                       env_name=env, reason=cmd.reason, gradual=cmd.gradual)


def make_entries() -> list[CommandEntry]:
    return [CommandEntry(STOP_SPEC, _authorize_stop, _run_stop, needs_db=True),
            CommandEntry(RESUME_SPEC, _authorize_resume, _run_resume, needs_db=True)]
