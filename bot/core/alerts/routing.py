"""Which environment an alert group belongs to, how severe it is, and where it is posted (runbook 7.4).

Severity comes from a label (`alerts.severity_label`, through `alerts.severity_aliases`; anything
else is medium). The route is the first matching label matcher (the environment's `alerts.routes`,
then the top-level `alerts.routes`), else the severity's route (the environment's
`alerts.severities`, else critical → incident channel with @here, high → incident channel,
medium → alerts channel). A group of no known environment goes to the default alerts channel:
never nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import AlertRoute, Config, Environment, SeverityRoute, default_severity_routes

SEVERITIES = ("critical", "high", "medium")


@dataclass(frozen=True)
class Route:
    environment: str | None  # None: no known environment (the default alerts channel)
    severity: str  # critical | high | medium
    channel: str
    mention: str  # here | channel | none


def environment_of(config: Config, labels: dict[str, str]) -> str | None:
    name = labels.get(config.alerts.env_label)
    return name if name in config.environments else None


def severity_of(config: Config, labels: dict[str, str]) -> str:
    raw = (labels.get(config.alerts.severity_label) or "").strip().lower()
    return config.alerts.severity_aliases.get(raw, "medium")


def default_channel(config: Config) -> str:
    """The alerts channel of last resort: `alerts.channel`, else the default environment's channels."""
    if config.alerts.channel:
        return config.alerts.channel
    resolved = config.resolve_env(None)
    env = resolved[1] if resolved else next(iter(config.environments.values()))
    return env.channels.alerts or env.channels.incident or env.channels.deploy


def _channel(config: Config, env: Environment | None, which: str) -> str:
    if which not in ("incident", "alerts"):
        return which  # a channel id
    if env is None:
        return default_channel(config)
    if which == "incident" and env.channels.incident:
        return env.channels.incident
    return env.channels.alerts or config.alerts.channel or env.channels.incident or env.channels.deploy


def route(config: Config, labels: dict[str, str]) -> Route:
    """The route of a group whose labels (group and common labels, merged) are `labels`."""
    env_name = environment_of(config, labels)
    env = config.environments[env_name] if env_name else None
    severity = severity_of(config, labels)
    matcher: AlertRoute | None = next(
        (r for r in [*(env.alerts.routes if env else []), *config.alerts.routes] if r.matches(labels)), None)
    if matcher is not None and matcher.severity:
        severity = matcher.severity
    routes: dict[str, SeverityRoute] = dict(default_severity_routes())
    if env is not None:
        routes.update({str(k): v for k, v in env.alerts.severities.items()})
    by_severity = routes[severity]
    channel = matcher.channel if matcher is not None and matcher.channel else by_severity.channel
    mention = matcher.mention if matcher is not None and matcher.mention else by_severity.mention
    return Route(env_name, severity, _channel(config, env, channel), mention)
