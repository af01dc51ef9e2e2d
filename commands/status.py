"""/status [--env ENV]: per environment, what is running and how it is doing, read live.

The reads (Kubernetes, the trading API, Prometheus, the runs and locks) happen in the command's prefetch,
before its transaction opens, all at once with a per-backend deadline (`bot.core.status`); a part that
could not be read says "unavailable: <reason>". This module only renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot import blocks
from bot.config import Role
from bot.core.model import Reply, person
from bot.core.ports import HealthReport, TradingStatus, WorkloadStatus
from bot.core.status import EnvStatus, KpiValue, LockView, RunsView, RunView, Unavailable, environment_statuses
from bot.errors import PermissionDenied
from bot.timeutil import utcnow
from commands.dispatch import CommandEntry, Ctx
from commands.grammar import CommandSpec, Flag, env_value


@dataclass(frozen=True)
class Status:
    env: str | None = None


SPEC = CommandSpec(
    name="status",
    summary="what runs where: live version, rollout, trading, health, KPIs, lock, runs",
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


def _names(cmd: Status, ctx: Ctx) -> list[str]:
    return [cmd.env] if cmd.env else ctx.core.authorizer.environments_visible_to(ctx.actor.user_id)


def _prefetch(cmd: Status, ctx: Ctx) -> list[EnvStatus]:
    """Every read, before the handler's (write) transaction opens (runs and locks in a short read session
    of their own, closed before the backends are waited for)."""
    return environment_statuses(ctx.core, _names(cmd, ctx))


def _run(cmd: Status, ctx: Ctx) -> Reply:
    statuses = ctx.prefetched
    if statuses is None:  # called without the prefetch (e.g. directly): read now
        statuses = environment_statuses(ctx.core, _names(cmd, ctx), ctx.session)
    sections: list[blocks.Block] = [blocks.header("Trading Bot Swarm — status")]
    text_lines: list[str] = []
    for st in statuses:
        roles = sorted(r.value for r in ctx.core.authorizer.roles_of(ctx.actor.user_id, st.name))
        body = render_env(st, roles)
        sections += [blocks.section(body), blocks.divider()]
        text_lines.append(body)
    sections[-1] = blocks.context(footer(statuses))
    return Reply("\n\n".join(text_lines), blocks.message(*sections))


# -- rendering (shared with the App Home tab) ------------------------------------------------------------

def footer(statuses: list[EnvStatus]) -> str:
    took = max((s.took_ms for s in statuses), default=0.0)
    limit = max((s.env.status.timeout_seconds for s in statuses), default=0.0)
    return (f"Read live in {took:.0f} ms at {utcnow():%H:%M:%S} UTC; a backend that does not answer within "
            f"{limit:g} s is shown as unavailable.")


def render_env(st: EnvStatus, roles: list[str] | None = None, *, details: bool = True) -> str:
    env = st.env
    lines = [f"*{st.name}*" + (f" — {env.description}" if env.description else ""),
             "Running: " + running_line(st.workload, env.image),
             "Trading: " + trading_line(st.trading),
             "Maintenance: " + maintenance_line(st.trading),
             "Health: " + health_line(st.health),
             "KPIs: " + kpi_line(st.kpis)]
    lines += runs_lines(st.name, st.runs)
    if details:
        lines += [
            f"Target: `{env.namespace}/deployment/{env.deployment}` container `{env.container}` · image "
            f"`{env.image}` (tags matching `{env.allowed_tags}`)",
            f"Channels: deploy <#{env.channels.deploy}>"
            + (f", incident <#{env.channels.incident}>" if env.channels.incident else "")
            + f" · approvals required: {env.approvals_required}",
            "Backends: " + " · ".join(f"{title} {st.labels.get(kind, 'unknown')}" for kind, title in
                                      (("kubernetes", "Kubernetes"), ("prometheus", "Prometheus"),
                                       ("trading_api", "trading API"))),
        ]
    if roles is not None:
        lines.append(f"Your roles: {', '.join(roles) if roles else 'none'}")
    return "\n".join(lines)


def when(moment: datetime | None) -> str:
    """`2025-10-15 17:37 UTC (12 min ago)`."""
    if moment is None:
        return "unknown time"
    seconds = max(0.0, (utcnow() - moment).total_seconds())
    if seconds < 90:
        ago = f"{seconds:.0f} s ago"
    elif seconds < 5400:
        ago = f"{seconds / 60:.0f} min ago"
    elif seconds < 172800:
        ago = f"{seconds / 3600:.0f} h ago"
    else:
        ago = f"{seconds / 86400:.0f} days ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({ago})"


def running_line(workload: WorkloadStatus | Unavailable, repository: str) -> str:
    if isinstance(workload, Unavailable):
        return str(workload)
    version = workload.tag or workload.image
    image = "" if workload.image.startswith(repository + ":") else f" (image `{workload.image}`)"
    rollout = workload.rollout
    if rollout.failed:
        state = f":rotating_light: rollout FAILED: {rollout.message}"
    elif rollout.complete:
        state = "rollout complete"
    else:
        state = f":arrows_counterclockwise: rolling out ({rollout.updated}/{rollout.desired} updated, " \
                f"{rollout.available} available)"
    revision = f", revision {workload.revision}" if workload.revision is not None else ""
    return (f"`{version}`{image} since {when(workload.since)}{revision} · {state} · "
            f"{workload.ready}/{workload.desired} ready")


def trading_line(trading: TradingStatus | Unavailable) -> str:
    if isinstance(trading, Unavailable):
        return str(trading)
    if trading.trading:
        head = f":large_green_circle: trading — {trading.active_bots}/{trading.total_bots} bots"
    else:
        how = f" ({trading.halt})" if trading.halt else ""
        head = f":octagonal_sign: HALTED{how} — {trading.active_bots}/{trading.total_bots} bots trading"
    parts = [head]
    if trading.open_orders is not None:
        flag = " :warning:" if not trading.trading and trading.open_orders else ""
        parts.append(f"{trading.open_orders} open orders{flag}")
    if trading.open_positions is not None:
        parts.append(f"{trading.open_positions} open positions")
    if trading.pnl is not None:
        parts.append(f"PnL {trading.pnl:+,.2f}")
    return ", ".join(parts)


def maintenance_line(trading: TradingStatus | Unavailable) -> str:
    if isinstance(trading, Unavailable):
        return str(trading)
    return ":construction: ON" if trading.maintenance else "off"


def health_line(health: HealthReport | Unavailable) -> str:
    if isinstance(health, Unavailable):
        return str(health)
    mark = ":white_check_mark:" if health.healthy else ":x:"
    code = "" if 200 <= health.http_status < 300 else f" (HTTP {health.http_status})"
    components = " · ".join(f"{name} {value}" for name, value in health.components.items())
    return f"{mark} {health.status}{code}" + (f" — {components}" if components else "")


def kpi_text(kpi: KpiValue) -> str:
    if kpi.value is None:
        return f"{kpi.label} no data"
    value = kpi.value
    if kpi.format == "per_second":
        shown = f"{value:.1f}/s"
    elif kpi.format == "percent":
        shown = f"{value * 100:.2f} %"
    elif kpi.format == "ms":
        shown = f"{value:.0f} ms"
    else:
        shown = f"{value:.4g}"
    return f"{kpi.label} {shown}" + (" :warning:" if kpi.warn else "")


def kpi_line(kpis: list[KpiValue | Unavailable]) -> str:
    if not kpis:
        return "none configured"
    failed = {str(k) for k in kpis if isinstance(k, Unavailable)}
    if len(failed) == 1 and all(isinstance(k, Unavailable) for k in kpis):
        return failed.pop()  # one reason for all (Prometheus down or hanging)
    return " · ".join(str(k) if isinstance(k, Unavailable) else kpi_text(k) for k in kpis)


def lock_text(env: str, lock: LockView) -> str:
    who = person(lock.held_by, lock.held_by_name)
    what = f"run `{lock.run_id}`" if lock.kind == "run" else "a freeze"
    text = (f"`{env}` is locked by {who} for {what} since {lock.acquired_at:%Y-%m-%d %H:%M} UTC "
            f"(until {lock.expires_at:%Y-%m-%d %H:%M} UTC)")
    return text + (f" — reason: {blocks.user_text(lock.reason)}" if lock.reason else "")


def run_text(run: RunView) -> str:
    text = f"Run `{run.id}`: {run.version} ({run.strategy}) — {run.state_text}, requested by {run.who}"
    if run.step:
        phase = "rollback step" if run.phase == "rollback" else "step"
        text += f" — {phase} {run.step_no}/{run.steps}: {run.step}"
    return text


def recent_text(run: RunView) -> str:
    moment = run.finished_at or run.created_at
    outcome = f": {run.outcome}" if run.outcome else ""
    return (f"• `{run.id}` {run.kind} {run.version} ({run.strategy}) by {run.who}, {when(moment)} — "
            f"{run.state_text}{outcome}")


def runs_lines(env: str, runs: RunsView | Unavailable) -> list[str]:
    if isinstance(runs, Unavailable):
        return [f"Lock and runs: {runs}"]
    lines = [f":lock: {lock_text(env, runs.lock)}" if runs.lock else "Lock: free"]
    lines += [run_text(run) for run in runs.active] or ["Active run: none"]
    lines.append("Last runs:" + ("".join("\n" + recent_text(r) for r in runs.recent) if runs.recent else " none"))
    return lines


def make_entry() -> CommandEntry:
    return CommandEntry(SPEC, _authorize, _run, needs_db=True, prefetch=_prefetch)
