"""The YAML config (`CHATOPS_CONFIG`): people, groups, environments, roles and channels.

Validated with pydantic; every problem is reported as `field.path: message` so that
`chatops config check` and `chatops serve` can print them all at once, without a traceback.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.errors import ConfigError

USER_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
SUBTEAM_RE = re.compile(r"^S[A-Z0-9]{2,}$")
CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    deployer = "deployer"
    approver = "approver"
    auditor = "auditor"
    admin = "admin"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channels(_Strict):
    deploy: str = Field(..., description="Channel id where plans and checklists are posted")
    incident: str | None = Field(None, description="Channel id for alerts and rollbacks")
    alerts: str | None = Field(None, description="Channel id for medium alerts (default: alerts.channel)")

    @field_validator("deploy", "incident", "alerts")
    @classmethod
    def _channel_id(cls, value: str | None) -> str | None:
        if value is not None and not CHANNEL_RE.match(value):
            raise ValueError(f"{value!r} is not a Slack channel id (like C0123ABC)")
        return value


class KubernetesTarget(_Strict):
    """How to reach the cluster. Absent from an environment: the simulated cluster is used."""

    in_cluster: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    host: str | None = None
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="bound on every API call")


class PrometheusTarget(_Strict):
    url: str

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class TradingApiTarget(_Strict):
    base_url: str
    api_key_env: str | None = Field(None, description="Name of the env var holding the admin API key")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class AlertmanagerTarget(_Strict):
    """The environment's Alertmanager API (v2), where the alert threads' Silence buttons create silences."""

    url: str = Field(..., description="e.g. http://alertmanager:9093")
    token_env: str | None = Field(None, description="Name of the env var holding a bearer token, if one is needed")
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class PagerDutyTarget(_Strict):
    """Paging for the environment's critical alert groups (PagerDuty Events API v2)."""

    routing_key_env: str = Field(..., description="Name of the env var holding the routing (integration) key")
    url: str = Field("https://events.pagerduty.com", description="Events API base URL (the client adds "
                     "/v2/enqueue); another region or a proxy")
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


AlertLevel = Literal["critical", "high", "medium", "low"]


class DeployCorrelation(_Strict):
    """How alerts and deploys in one environment are tied together (issue 8 section 6)."""

    fail_analysis_at: AlertLevel | None = Field("high", description="an alert at or above this severity fails a "
                                                "running canary analysis or monitoring window at once (runbook "
                                                "8.1: > 5 % errors is a high alert); null: never")
    suspect_window_minutes: float = Field(30.0, ge=0, le=1440, description="an alert starting this soon after a "
                                          "deploy names it on the alert's root")
    rollback_window_minutes: float = Field(60.0, ge=0, le=1440, description="an alert's Roll back button is "
                                           "offered while a deploy runs or this long after one finished")


Strategy = Literal["rolling", "canary", "blue-green"]
StepKind = Literal["checklist", "precheck", "trading_stop", "maintenance_on", "job", "rollout", "health",
                   "maintenance_off", "trading_resume", "monitor", "db_rollback"]


class CanarySettings(_Strict):
    router: Literal["replicas", "istio"] = Field("replicas", description="istio: VirtualService weights; "
                                                 "replicas: a <name>-canary Deployment sized by weight")
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 75, 100])
    virtual_service: str | None = None
    host: str | None = None
    stable_subset: str = "stable"
    canary_subset: str = "canary"
    interval_seconds: float = Field(60.0, ge=5, le=3600)
    intervals_per_step: int = Field(1, ge=1, le=60)
    failure_limit: int = Field(1, ge=1, le=10)
    inconclusive_limit: int = Field(3, ge=1, le=20)
    error_limit: int = Field(4, ge=1, le=20, description="intervals in a row with Prometheus unreachable before "
                             "the canary rolls back (Argo Rollouts' consecutiveErrorLimit)")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or any(not 0 < v <= 100 for v in value) or value != sorted(set(value)) or value[-1] != 100:
            raise ValueError("must be increasing percentages from 1 to 100, ending at 100")
        return value


class BlueGreenSettings(_Strict):
    service: str | None = Field(None, description="Service whose selector switches (default: the deployment)")
    label: str = "colour"
    monitor_seconds: float = Field(300.0, ge=0)


class CheckSettings(_Strict):
    name: str
    query: str = Field(..., description="PromQL template")
    op: Literal["<", ">", "<=", ">="]
    threshold: float
    unit: str = ""


class JobSettings(_Strict):
    name: str = Field(..., description="backup, migrate, verify, ...")
    template: dict[str, Any] = Field(..., description="a batch/v1 Job manifest; {version} and {image} substituted")
    timeout_seconds: float = Field(600.0, ge=5)


class ProbeSettings(_Strict):
    name: str
    url: str
    expect: dict[str, Any] = Field(default_factory=lambda: {"status": "healthy"})


class StepSettings(_Strict):
    kind: StepKind
    name: str | None = None
    text: str | None = Field(None, description="checklist: the item a person ticks")
    role: Role = Role.deployer
    blocking: bool = True
    job: str | None = Field(None, description="job: the name of an entry in jobs")
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0])
    pause_seconds: float = Field(60.0, ge=0)
    seconds: float = Field(900.0, ge=0, description="monitor: the window")
    strategies: list[Literal["rolling", "canary", "blue-green"]] | None = None
    timeout_seconds: float | None = Field(None, ge=1)
    on_resume: Literal["continue", "rollback"] | None = None

    @model_validator(mode="after")
    def _needs(self) -> StepSettings:
        if self.kind == "checklist" and not self.text:
            raise ValueError("a checklist step needs text")
        if self.kind == "job" and not self.job:
            raise ValueError("a job step needs job: <name of an entry in jobs>")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError("fractions must be between 0 (exclusive) and 1")
        return self


Severity = Literal["critical", "high", "medium"]
Mention = Literal["here", "channel", "none"]


def _route_channel(value: str | None) -> str | None:
    if value is not None and value not in ("incident", "alerts") and not CHANNEL_RE.match(value):
        raise ValueError(f"{value!r} is not incident, alerts or a Slack channel id (like C0123ABC)")
    return value


class SeverityRoute(_Strict):
    """Where alerts of one severity go: the environment's `incident` or `alerts` channel, or a channel id."""

    channel: str = Field(..., description="incident, alerts or a channel id")
    mention: Mention = Field("none", description="here: @here on the root message; channel: @channel")

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        return _route_channel(value)


def default_severity_routes() -> dict[str, SeverityRoute]:
    """Runbook 7.4: critical pages the incident channel (@here), high goes there quietly, medium to alerts."""
    return {"critical": SeverityRoute(channel="incident", mention="here"),
            "high": SeverityRoute(channel="incident", mention="none"),
            "medium": SeverityRoute(channel="alerts", mention="none")}


class AlertRoute(_Strict):
    """A label matcher: alerts whose labels match every `match` (equal) and `match_re` (whole-value regex)
    get this route's severity, channel and mention instead of their severity's."""

    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)
    severity: Severity | None = None
    channel: str | None = None
    mention: Mention | None = None

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        return _route_channel(value)

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for label, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{label}: not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> AlertRoute:
        if not (self.match or self.match_re):
            raise ValueError("a route needs match or match_re (a route matching everything is the severity's)")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match.items())
                and all(re.fullmatch(p, labels.get(k, "")) is not None for k, p in self.match_re.items()))


class EnvAlertSettings(_Strict):
    """An environment's own alert routing, checked before the top-level `alerts.routes`."""

    routes: list[AlertRoute] = Field(default_factory=list)
    severities: dict[Severity, SeverityRoute] = Field(default_factory=dict, description="overrides of the "
                                                      "runbook 7.4 defaults, per severity")
    auto_incident: Literal["off", "critical", "high"] = Field(
        "off", description="declare an incident when an alert group of this severity or worse opens "
        "(critical: SEV1, high: SEV2), once per group episode; off: only /incident declare")


SEVERITY_ALIASES: dict[str, Severity] = {"critical": "critical", "page": "critical", "high": "high", "error": "high",
                                         "medium": "medium", "warning": "medium", "info": "medium", "low": "medium"}


class AlertSettings(_Strict):
    """Alert intake (`POST /alerts/alertmanager`): where alerts go and how they are read."""

    channel: str | None = Field(None, description="default alerts channel: alerts of no known environment, and "
                                "medium ones where the environment has no channels.alerts")
    env_label: str = Field("env", description="the label naming the environment")
    severity_label: str = Field("severity", description="the label naming the severity")
    severity_aliases: dict[str, Severity] = Field(default_factory=lambda: dict(SEVERITY_ALIASES),
                                                  description="label value -> severity; anything else is medium")
    reopen_minutes: float = Field(60.0, ge=0, le=10080, description="a group firing again within this long "
                                  "after it resolved reopens its thread instead of starting a new one")
    routes: list[AlertRoute] = Field(default_factory=list, description="label matchers for every environment")

    @field_validator("channel")
    @classmethod
    def _channel_id(cls, value: str | None) -> str | None:
        if value is not None and not CHANNEL_RE.match(value):
            raise ValueError(f"{value!r} is not a Slack channel id (like C0123ABC)")
        return value


KpiFormat = Literal["per_second", "percent", "ms", "number"]
#: the placeholders a KPI query may use (there is no version or canary in /status)
KPI_PLACEHOLDERS = ("namespace", "deployment")


class KpiSettings(_Strict):
    """One KPI line of /status: a PromQL instant query (placeholders `{namespace}`, `{deployment}`)."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,39}$")
    label: str | None = Field(None, description="shown name (default: the name)")
    query: str
    format: KpiFormat = Field("number", description="per_second, percent (the value is a fraction), ms, number")
    warn_above: float | None = Field(None, description="flag the value when above this")
    warn_below: float | None = Field(None, description="flag the value when below this")


def default_kpis(window: str = "5m") -> list[KpiSettings]:
    """Runbook 7.3's KPIs for the whole namespace, flagged at 7.4's high-priority thresholds (error rate
    > 5 %, p95 > 1000 ms) and below the 99 % order success target the canary checks use."""
    sel = 'namespace="{namespace}"'
    requests = f"sum(rate(http_requests_total{{{sel}}}[{window}]))"
    return [
        KpiSettings(name="request_rate", label="requests", query=requests, format="per_second"),
        KpiSettings(name="error_rate", label="errors", format="percent", warn_above=0.05,
                    query=f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[{window}])) / {requests}'),
        KpiSettings(name="p95_latency_ms", label="p95 latency", format="ms", warn_above=1000.0,
                    query=f"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket"
                          f"{{{sel}}}[{window}]))) * 1000"),
        KpiSettings(name="order_success", label="order success", format="percent", warn_below=0.99,
                    query=f"sum(rate(orders_successful_total{{{sel}}}[{window}]))"
                          f" / sum(rate(orders_total{{{sel}}}[{window}]))"),
    ]


class StatusSettings(_Strict):
    """How /status and the App Home tab read the live state."""

    timeout_seconds: float = Field(2.0, gt=0, le=10, description="per-backend deadline; all backends are "
                                   "asked at once, so the answer comes after at most this (keep it under "
                                   "Slack's 3 s for a prompt reply)")
    kpis: list[KpiSettings] | None = Field(None, description="default: runbook 7.3 (default_kpis)")

    @model_validator(mode="after")
    def _queries(self) -> StatusSettings:
        from bot.core.analysis import PLACEHOLDERS, placeholders, validate_template

        problems = []
        for i, kpi in enumerate(self.kpis or []):
            found = validate_template(kpi.query)
            other = [n for n in placeholders(kpi.query) if n not in KPI_PLACEHOLDERS and n in PLACEHOLDERS]
            if other:
                found.append("only {namespace} and {deployment} can be used here, not "
                             + ", ".join("{" + n + "}" for n in other))
            problems += [f"kpis.{i}.query: {p}" for p in found]
        if self.kpis is not None and len({k.name for k in self.kpis}) != len(self.kpis):
            problems.append("kpis: names must be unique")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def effective_kpis(self) -> list[KpiSettings]:
        return list(self.kpis) if self.kpis is not None else default_kpis()


class Environment(_Strict):
    description: str = ""
    namespace: str
    deployment: str = "trading-bot-swarm"
    container: str = "trading-bot-swarm"
    image: str = Field(..., description="Image repository, the version is its tag")
    allowed_tags: str = Field(r"^v\d+\.\d+(\.\d+)?(-rc\.\d+)?$", description="Regex a version must match")
    channels: Channels
    approvals_required: int = Field(0, ge=0, le=10)
    roles: dict[Role, list[str]] = Field(default_factory=dict)
    kubernetes: KubernetesTarget | None = None
    prometheus: PrometheusTarget | None = None
    trading_api: TradingApiTarget | None = None
    default_strategy: Strategy = "rolling"
    canary: CanarySettings = Field(default_factory=CanarySettings)
    blue_green: BlueGreenSettings = Field(default_factory=BlueGreenSettings)
    analysis: list[CheckSettings] | None = Field(None, description="canary checks (default: the runbook's)")
    jobs: list[JobSettings] = Field(default_factory=list)
    probes: list[ProbeSettings] = Field(default_factory=list)
    procedure: list[StepSettings] | None = Field(None, description="default: runbook 5.2-5.4")
    stop_trading: bool = Field(True, description="default procedure: stop trading for rolling/blue-green")
    approval_ttl_minutes: float = Field(30.0, gt=0, le=1440)
    lock_ttl_minutes: float = Field(180.0, gt=0, le=10080)
    trading_deployments: list[str] | None = Field(None, description="the Deployments the kill switch scales to "
                                                  "0 when the trading API cannot halt (default: the deployment)")
    rollback_approvals_required: int | None = Field(None, ge=0, le=10, description="/rollback approvals "
                                                    "(default: 1 where deploys need approval, else 0)")
    resume_approvals_required: int | None = Field(None, ge=0, le=10, description="/resume-trading approvals "
                                                  "(default: 1 where deploys need approval, else 0)")
    resume_fractions: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
                                          description="/resume-trading --gradual: the share of bots per stage")
    resume_window_seconds: float = Field(900.0, ge=0, le=7200, description="/resume-trading --gradual: the "
                                         "KPI monitoring window between stages (runbook 5.4: 15 minutes)")
    stop_verify_seconds: float = Field(30.0, ge=1, le=600, description="/stop-trading: how long the trading "
                                       "API gets to show no bots trading and no open orders")
    db_rollback: JobSettings | None = Field(None, description="/rollback --with-db: the database rollback Job "
                                            "(runbook 8.2 step 3); {version}, {from_version}, {image}, {run} "
                                            "substituted")
    immediate_rollback_window_seconds: float | None = Field(
        None, ge=0, le=86400, description="/rollback runs without approval when the last deploy ended (failed, "
        "rolled back or succeeded) within this many seconds; unset: off (the default)")
    rollback_deadline_seconds: float = Field(1800.0, ge=10, le=86400, description="how long a rollback step "
                                             "retries transient faults before the run needs a person")
    rollout_timeout_seconds: float = Field(600.0, ge=5)
    monitor_seconds: float = Field(900.0, ge=0, description="default procedure: monitoring window (runbook 5.4)")
    status: StatusSettings = Field(default_factory=StatusSettings, description="/status and App Home")
    alertmanager: AlertmanagerTarget | None = Field(None, description="the Alertmanager API silences go to")
    pagerduty: PagerDutyTarget | None = Field(None, description="page critical alert groups (absent: no paging)")
    deploy_correlation: DeployCorrelation = Field(default_factory=DeployCorrelation,
                                                  description="alerts failing analyses, suspect deploys")
    on_call: list[str] = Field(default_factory=list, description="invited to the channel of an incident declared "
                               "here: names, Slack user ids, group:NAME or subteam:S... (a Slack user group)")
    alerts: EnvAlertSettings = Field(default_factory=lambda: EnvAlertSettings.model_validate({}),
                                     description="alert routing")

    @model_validator(mode="after")
    def _jobs_known(self) -> Environment:
        from bot.core.analysis import validate_template

        problems = []
        if self.analysis is not None and not self.analysis:
            problems.append("analysis: at least one check is needed (leave it out for the runbook's defaults)")
        for i, check in enumerate(self.analysis or []):
            problems += [f"analysis.{i}.query: {p}" for p in validate_template(check.query)]
        if self.procedure is not None and not any(step.kind == "rollout" for step in self.procedure):
            problems.append("procedure: needs a step of kind rollout (nothing would be deployed)")
        if self.kubernetes is not None and not (self.kubernetes.in_cluster or self.kubernetes.kubeconfig
                                                or self.kubernetes.host):
            problems.append("kubernetes: set in_cluster: true, kubeconfig (and context) or host")
        if problems:
            raise ValueError("\n".join(problems))
        names = {j.name for j in self.jobs}
        for i, step in enumerate(self.procedure or []):
            if step.kind == "job" and step.job not in names:
                known = ", ".join(sorted(names)) or "none"
                raise ValueError(f"procedure.{i}.job: {step.job!r} is not in jobs ({known})")
            if step.kind == "db_rollback":
                raise ValueError(f"procedure.{i}: db_rollback runs only in `/rollback --with-db` (set db_rollback)")
        return self

    @field_validator("allowed_tags")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    def tag_allowed(self, version: str) -> bool:
        return re.fullmatch(self.allowed_tags, version, flags=re.ASCII) is not None


class Config(_Strict):
    people: dict[str, str] = Field(..., description="name -> Slack user id")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="name -> member names or ids")
    roles: dict[Role, list[str]] = Field(default_factory=dict, description="grants in every environment")
    environments: dict[str, Environment]
    default_environment: str | None = None
    alerts: AlertSettings = Field(default_factory=lambda: AlertSettings.model_validate({}),
                                  description="alert intake and routing")

    @field_validator("people")
    @classmethod
    def _people(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, user_id in value.items():
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r}: names are lower-case letters, digits, _ . -")
            if not USER_ID_RE.match(user_id):
                raise ValueError(f"{name}: {user_id!r} is not a Slack user id (like U0123ABC)")
            if user_id in seen:
                raise ValueError(f"{name}: user id {user_id} is already used by {seen[user_id]}")
            seen[user_id] = name
        return value

    @field_validator("environments")
    @classmethod
    def _env_names(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        if not value:
            raise ValueError("at least one environment is needed")
        for name in value:
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r}: environment names are lower-case letters, digits, _ . -")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems = reference_problems(self.model_dump(mode="json"))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _grant_lists(self) -> list[tuple[str, list[str]]]:
        out = [(f"roles.{role.value}", members) for role, members in self.roles.items()]
        for env_name, env in self.environments.items():
            out += [(f"environments.{env_name}.roles.{r.value}", m) for r, m in env.roles.items()]
        return out

    def _member_known(self, member: str) -> bool:
        if member.startswith("group:"):
            return member[6:] in self.groups
        if member.startswith("subteam:"):
            return SUBTEAM_RE.match(member[8:]) is not None
        return member in self.people or USER_ID_RE.match(member) is not None

    # --- look-ups ---------------------------------------------------------------------------
    def user_id_of(self, name_or_id: str) -> str | None:
        if name_or_id in self.people:
            return self.people[name_or_id]
        return name_or_id if USER_ID_RE.match(name_or_id) else None

    def name_of(self, user_id: str) -> str | None:
        for name, uid in self.people.items():
            if uid == user_id:
                return name
        return None

    def resolve_env(self, name: str | None) -> tuple[str, Environment] | None:
        if name is None:
            name = self.default_environment
            if name is None and len(self.environments) == 1:
                name = next(iter(self.environments))
        if name is None or name not in self.environments:
            return None
        return name, self.environments[name]


# --- problems in our words -------------------------------------------------------------------------
def did_you_mean(word: object, candidates: typing.Iterable[str]) -> str:
    """' (did you mean X?)' when a candidate is close to `word`, else ''."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _mapping(value: object) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def reference_problems(data: object) -> list[str]:
    """Grants naming unknown people or groups, group members, `default_environment`, procedure job names.

    Works on the raw YAML too (tolerating wrong types), so these are reported together with the type
    errors of the same file instead of only once everything else is fixed."""
    root = _mapping(data)
    people, groups = _mapping(root.get("people")), _mapping(root.get("groups"))
    envs = _mapping(root.get("environments"))
    problems: list[str] = []

    def known(member: str) -> bool:
        if member.startswith("group:"):
            return member[6:] in groups
        if member.startswith("subteam:"):
            return SUBTEAM_RE.match(member[8:]) is not None
        return member in people or USER_ID_RE.match(member) is not None

    def suggest(member: str) -> str:
        return did_you_mean(member, list(people) + [f"group:{g}" for g in groups])

    grants = [("roles", _mapping(root.get("roles")))]
    grants += [(f"environments.{name}.roles", _mapping(_mapping(env).get("roles"))) for name, env in envs.items()]
    for prefix, roles in grants:
        for role, members in roles.items():
            for i, member in enumerate(members if isinstance(members, list) else []):
                if isinstance(member, str) and not known(member):
                    problems.append(f"{prefix}.{role}.{i}: {member!r} is not a person, a group:NAME, a Slack user id "
                                    f"or a subteam:S... user group{suggest(member)}")
    for gname, members in groups.items():
        for i, member in enumerate(members if isinstance(members, list) else []):
            if isinstance(member, str) and (member.startswith(("group:", "subteam:")) or not known(member)):
                problems.append(f"groups.{gname}.{i}: {member!r} must be a person or a Slack user id"
                                f"{did_you_mean(member, people)}")
    default = root.get("default_environment")
    if default is not None and envs and default not in envs:
        problems.append(f"default_environment: {default!r} is not an environment{did_you_mean(default, envs)}"
                        + ("" if did_you_mean(default, envs) else f" ({', '.join(envs) or 'none defined'})"))
    for name, env in envs.items():
        on_call = _mapping(env).get("on_call")
        for i, member in enumerate(on_call if isinstance(on_call, list) else []):
            if isinstance(member, str) and not known(member):
                problems.append(f"environments.{name}.on_call.{i}: {member!r} is not a person, a group:NAME, a "
                                f"Slack user id or a subteam:S... user group{suggest(member)}")
    for name, env in envs.items():
        env_map = _mapping(env)
        jobs = {j.get("name") for j in env_map.get("jobs") or [] if isinstance(j, dict)}
        jobs.discard(None)
        procedure = env_map.get("procedure")
        for i, step in enumerate(procedure if isinstance(procedure, list) else []):
            step = _mapping(step)
            if step.get("kind") == "job" and step.get("job") and step.get("job") not in jobs:
                problems.append(f"environments.{name}.procedure.{i}.job: {step['job']!r} is not in jobs "
                                f"({', '.join(sorted(map(str, jobs))) or 'none'})"
                                f"{did_you_mean(step['job'], map(str, jobs))}")
    return problems


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields live at `loc` (a pydantic error location), if there is one."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(str(part))
            if field_info is None:
                return None
            current = field_info.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """X | None -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _describe(value: object) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
             float: "a number", type(None): "empty"}
    shown = repr(value) if isinstance(value, str | int | float | bool) and len(repr(value)) <= 40 else ""
    return f"{kinds.get(type(value), type(value).__name__)}{' ' + shown if shown else ''}"


def _our_words(err: Any) -> tuple[tuple[Any, ...], str]:
    """(location, message) for one pydantic error, in the words of docs/configuration.md."""
    loc = tuple(err["loc"])
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-1]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = list(model.model_fields) if model else []
        hint = did_you_mean(str(loc[-1]), fields)
        return loc, f"unknown field{hint} (see docs/configuration.md)" if hint else \
            "unknown field (check the spelling; see docs/configuration.md)"
    if kind == "enum" or kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        what = "role" if set(expected) == {r.value for r in Role} else "allowed value"
        shown = repr(value) if isinstance(value, str) else _describe(value)
        return loc, (f"{shown} is not a{'' if what == 'role' else 'n'} {what}{did_you_mean(value, expected)}; "
                     f"use one of: {', '.join(expected)}")
    simple = {
        "missing": "missing: this field is required",
        "int_parsing": f"must be a whole number, not {_describe(value)}",
        "int_type": f"must be a whole number, not {_describe(value)}",
        "int_from_float": f"must be a whole number, not {_describe(value)}",
        "float_parsing": f"must be a number, not {_describe(value)}",
        "float_type": f"must be a number, not {_describe(value)}",
        "bool_parsing": f"must be true or false, not {_describe(value)}",
        "bool_type": f"must be true or false, not {_describe(value)}",
        "string_type": f"must be text, not {_describe(value)}",
        "dict_type": f"must be a mapping (key: value lines), not {_describe(value)}",
        "model_type": f"must be a mapping (key: value lines), not {_describe(value)}",
        "model_attributes_type": f"must be a mapping (key: value lines), not {_describe(value)}",
        "list_type": f"must be a list ([a, b] or '- a' lines), not {_describe(value)}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}, not {value!r}",
        "greater_than": f"must be more than {ctx.get('gt')}, not {value!r}",
        "less_than_equal": f"must be at most {ctx.get('le')}, not {value!r}",
        "less_than": f"must be less than {ctx.get('lt')}, not {value!r}",
    }
    if kind in simple:
        return loc, simple[kind]
    msg = str(err["msg"]).removeprefix("Value error, ")
    return loc, msg[:1].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg


def _format_validation_error(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        loc, msg = _our_words(err)
        path = ".".join(str(p) for p in loc)
        for line in msg.split("\n"):
            # model-level problems carry their own path at the start of the line
            problems.append(line if not path else f"{path}: {line}")
    return problems


def parse_config(data: Any, *, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping with people and environments"], source=source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = _format_validation_error(exc)
    # the cross-references are checked by the model only once every field is valid: check them on the raw
    # data too, so that one run reports every problem
    problems += [p for p in reference_problems(data) if p not in problems]
    raise ConfigError(problems, source=source)


_YAML_REASONS = (  # PyYAML's problem text -> what to do about it
    ("cannot start any token", "a tab character: indent with spaces, YAML does not allow tabs"),
    ("expected <block end>", "this line's indentation does not line up with the lines above it"),
    ("mapping values are not allowed here", "an unexpected ':' (quote a value that contains ': ')"),
    ("could not find expected ':'", "a line that is not `key: value` (a missing ':' or a stray line)"),
    ("found duplicate", "a duplicate key or anchor"),
    ("found undefined alias", "an alias (*name) with no anchor (&name)"),
    ("did not find expected key", "the indentation does not line up with the keys above it"),
    ("found unexpected end of stream", "the file ends inside a quoted value or a bracket: one is not closed"),
    ("while scanning a quoted scalar", "a quoted value is not closed"),
)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = str(getattr(exc, "problem", None) or "")
    context = str(getattr(exc, "context", None) or "")
    for needle, words in _YAML_REASONS:
        if needle in problem or needle in context:
            return f"{words} ({problem or context})"
    return " ".join(part for part in (context, problem) if part) or str(exc).splitlines()[0]


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: file not found (set CHATOPS_CONFIG or copy chatops.example.yml to chatops.yml)"],
            source=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"], source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown place"
        raise ConfigError([f"{path}: not valid YAML at {where}: {_yaml_reason(exc)}"], source=str(path)) from None
    return parse_config(data, source=str(path))
