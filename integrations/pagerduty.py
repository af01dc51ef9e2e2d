"""PagerDuty Events API v2 over httpx (`POST /v2/enqueue`), and the outbox transport that pages through it.

Paging never leaves from a request path: the core enqueues an event (`bot.outbox.Outbox.page`) in the
transaction that opened, acknowledged or resolved an alert group, and a dedicated outbox worker hands it
to `PagerDutyTransport`, so a slow or failing PagerDuty is retried on its own and never delays Slack.
The outbox row holds the environment's name, never the routing key: the key is read from the
environment variable the config names (`pagerduty.routing_key_env`) when the event is sent, and is
scrubbed from every error.

Errors: unreachable, timed out, 5xx -> `BackendUnavailable`; 429 -> `PagerDutyRateLimited` (a
`BackendUnavailable` with the `Retry-After` seconds); 400 (a malformed event, an unknown routing key)
-> `IntegrationError` with PagerDuty's message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from bot.errors import BackendUnavailable, IntegrationError
from bot.outbox import Delivered, PermanentError, RateLimited, TransientError
from integrations.http_base import HttpApi

SYSTEM = "pagerduty"
DEFAULT_BASE_URL = "https://events.pagerduty.com"
EventAction = Literal["trigger", "acknowledge", "resolve"]
EVENT_ACTIONS: tuple[str, ...] = ("trigger", "acknowledge", "resolve")
PdSeverity = Literal["critical", "error", "warning", "info"]
PD_SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")
#: PagerDuty's limits: summary 1024 characters, dedup_key 255
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255


@dataclass(frozen=True)
class PagerDutyEvent:
    """One Events API v2 event, without its routing key (that is a secret, added when it is sent)."""

    action: EventAction
    dedup_key: str
    summary: str = ""
    source: str = "swarm-chatops"
    severity: PdSeverity = "critical"
    custom_details: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (href, text)
    component: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.action not in EVENT_ACTIONS:
            raise ValueError(f"event action must be one of {', '.join(EVENT_ACTIONS)}, not {self.action!r}")
        if not self.dedup_key or len(self.dedup_key) > MAX_DEDUP_KEY:
            raise ValueError(f"dedup_key must be 1-{MAX_DEDUP_KEY} characters")
        if self.action == "trigger":
            if not self.summary.strip() or not self.source.strip():
                raise ValueError("a trigger needs a summary and a source")
            if self.severity not in PD_SEVERITIES:
                raise ValueError(f"severity must be one of {', '.join(PD_SEVERITIES)}, not {self.severity!r}")

    def body(self, routing_key: str) -> dict[str, Any]:
        out: dict[str, Any] = {"routing_key": routing_key, "event_action": self.action, "dedup_key": self.dedup_key}
        if self.action == "trigger":
            payload: dict[str, Any] = {"summary": self.summary[:MAX_SUMMARY], "source": self.source,
                                       "severity": self.severity}
            if self.custom_details:
                payload["custom_details"] = self.custom_details
            if self.component:
                payload["component"] = self.component
            if self.group:
                payload["group"] = self.group
            out["payload"] = payload
            if self.links:
                out["links"] = [{"href": href, "text": text} for href, text in self.links]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "dedup_key": self.dedup_key, "summary": self.summary, "source": self.source,
                "severity": self.severity, "custom_details": self.custom_details,
                "links": [list(link) for link in self.links], "component": self.component, "group": self.group}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PagerDutyEvent:
        return cls(action=data["action"], dedup_key=data["dedup_key"], summary=data.get("summary", ""),
                   source=data.get("source", "swarm-chatops"), severity=data.get("severity", "critical"),
                   custom_details=dict(data.get("custom_details") or {}),
                   links=tuple((str(h), str(t)) for h, t in data.get("links") or []),
                   component=data.get("component"), group=data.get("group"))


class PagerDutyRateLimited(BackendUnavailable):
    """PagerDuty answered 429; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(SYSTEM, message)
        self.retry_after = retry_after


class PagerDutyClient(HttpApi):
    """Sends events to `base_url` + `/v2/enqueue` (the base URL is configurable for regions and tests)."""

    system = SYSTEM

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, timeout: float = 5.0,
                 client: httpx.Client | None = None) -> None:
        super().__init__(base_url, timeout=timeout, client=client)

    def __repr__(self) -> str:
        return f"PagerDutyClient({self.base_url!r})"

    def send(self, event: PagerDutyEvent, routing_key: str) -> str:
        """Enqueue the event; returns the dedup key PagerDuty acknowledged."""
        if not routing_key:
            raise IntegrationError(SYSTEM, "no routing key", hint="Set the variable named by "
                                   "`pagerduty.routing_key_env` in the environment's config.")

        def scrub(text: str) -> str:
            return text.replace(routing_key, "***")

        what = "POST /v2/enqueue"
        try:
            response = self._client.post(self.base_url + "/v2/enqueue", json=event.body(routing_key),
                                         timeout=self.timeout)
        except httpx.TimeoutException:
            raise BackendUnavailable(SYSTEM, f"{what} timed out after {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(SYSTEM, scrub(f"cannot reach {self.base_url} ({what}): "
                                                   f"{type(exc).__name__}: {exc}")) from None
        status = response.status_code
        message = scrub(_message(response))
        if status == 429:
            raise PagerDutyRateLimited(f"{what} answered 429 (rate limited)",
                                       _retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise BackendUnavailable(SYSTEM, f"{what} answered HTTP {status}: {message}")
        if not 200 <= status < 300:
            raise IntegrationError(SYSTEM, f"{what} was refused with HTTP {status}: {message}",
                                   hint="An unknown routing key is refused too: check `pagerduty.routing_key_env`."
                                   if status in (400, 401, 403, 404) else None)
        try:
            data = response.json()
        except ValueError:
            data = {}
        key = data.get("dedup_key") if isinstance(data, dict) else None
        return key if isinstance(key, str) and key else event.dedup_key



def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(data, dict):
        parts = [str(data.get("message") or data.get("status") or "")]
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            parts.append("; ".join(str(e) for e in errors[:3]))
        return " — ".join(p for p in parts if p)[:200]
    return json.dumps(data)[:200]


def _retry_after(raw: str | None) -> float:
    try:
        return max(0.0, float(raw)) if raw is not None else 5.0
    except ValueError:
        return 5.0


#: the routing key of an environment (None: not configured)
RoutingKeys = Callable[[str], str | None]


def routing_keys_from_env(names: dict[str, str]) -> RoutingKeys:
    """`names`: environment -> the name of the variable holding its routing key (read at send time)."""
    def key(env: str) -> str | None:
        var = names.get(env)
        return os.environ.get(var) or None if var else None

    return key


class PagerDutyTransport:
    """The outbox `Transport` for rows of kind `pagerduty` (payload {"env", "event"})."""

    def __init__(self, client: PagerDutyClient, routing_keys: RoutingKeys, *,
                 clients: dict[str, PagerDutyClient] | None = None) -> None:
        self.client = client
        self.routing_keys = routing_keys
        self.clients = clients or {}  # an environment with its own base URL (another region)

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered:
        if kind != "pagerduty":
            raise PermanentError(f"the PagerDuty transport cannot send {kind!r} rows")
        env = str(payload.get("env", ""))
        key = self.routing_keys(env)
        if not key:
            raise PermanentError(f"no PagerDuty routing key for environment {env!r}")
        try:
            event = PagerDutyEvent.from_json(payload["event"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"malformed PagerDuty event: {exc}") from None
        try:
            self.clients.get(env, self.client).send(event, key)
        except PagerDutyRateLimited as exc:
            raise RateLimited(exc.retry_after) from None
        except BackendUnavailable as exc:
            raise TransientError(exc.message) from None
        except IntegrationError as exc:
            raise PermanentError(exc.message) from None
        return Delivered(channel=channel)
