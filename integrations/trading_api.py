"""The swarm's trading admin API over httpx: stop/start trading, maintenance mode, status and the detailed
health check (runbook 5.2, 5.4, 6.1, 8.2).

Implements `bot.core.ports.TradingControls`. Every call has a timeout; vendor failures become our error
tree: unreachable, timed out or 5xx -> `BackendUnavailable`, 401/403 -> `IntegrationError` with a hint
about the API key, other 4xx -> `IntegrationError` with the server's (truncated) message. The API key
travels only in the `X-API-Key` header; it is never logged and is scrubbed from every error message.
The operations are idempotent on the server's side (stopping a stopped swarm is fine).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import httpx

from bot.core.ports import STOP_MODES, HealthReport, StopMode, TradingStatus
from bot.errors import BackendUnavailable, IntegrationError

SYSTEM = "trading API"
#: longest server message quoted in an error
MAX_MESSAGE = 200
#: the status fields the core relies on, and their JSON types
STATUS_FIELDS: tuple[tuple[str, type], ...] = (
    ("trading", bool), ("active_bots", int), ("total_bots", int), ("maintenance", bool))
#: optional status fields (None when absent); a present one of the wrong type is a malformed status
OPTIONAL_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("open_orders", int), ("open_positions", int), ("pnl", (int, float)), ("halt", str))


@dataclass(frozen=True)
class TradingPaths:
    """Where the admin endpoints live; the HTTP methods are fixed (POST for actions, GET for status).

    stop:        POST, body {"reason": str, "mode": "graceful" | "emergency"}
    start:       POST, body {"fraction": float}  (0 < fraction <= 1; 0.25 is the runbook's gradual start)
    status:      GET, answers {"trading": bool, "active_bots": int, "total_bots": int,
                               "maintenance": bool, and optionally "open_orders": int,
                               "open_positions": int, "pnl": number, "halt": str, ...}
    maintenance: POST, body {"enabled": bool}
    health_detailed: GET (no key needed), answers {"status": str, "components": {name: str}}
    """

    stop: str = "/admin/trading/stop"
    start: str = "/admin/trading/start"
    status: str = "/admin/trading/status"
    maintenance: str = "/admin/maintenance"
    health_detailed: str = "/health/detailed"


def validate_fraction(fraction: float) -> float:
    """Return `fraction` as a float when 0 < fraction <= 1, else raise ValueError."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"fraction must be a number, got {type(fraction).__name__}")
    value = float(fraction)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return value


class TradingApiClient:
    """`TradingControls` against the swarm's admin HTTP API."""

    label = "trading API"

    def __init__(self, base_url: str, api_key: str | None, *, paths: TradingPaths = TradingPaths(),
                 timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.paths = paths
        self.timeout = timeout
        self._api_key = api_key or None
        self._client = client if client is not None else httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None

    def __repr__(self) -> str:  # no key in reprs either
        return f"TradingApiClient(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    # -- TradingControls ------------------------------------------------------------------------------

    def stop(self, reason: str, mode: StopMode = "graceful") -> None:
        """Stop trading on every bot: graceful (runbook 5.2 step 1: no new positions, resting orders
        cancelled, positions kept) or emergency (runbook 8.2: halt everything). A 2xx is only the API's
        word; `status()` shows whether it halted."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, got {mode!r}")
        self._call("POST", self.paths.stop, {"reason": reason, "mode": mode})

    def start(self, fraction: float) -> None:
        """Start trading on `fraction` (0 < f <= 1) of the bots (runbook 5.4, gradual enablement)."""
        self._call("POST", self.paths.start, {"fraction": validate_fraction(fraction)})

    def status(self) -> TradingStatus:
        response = self._call("GET", self.paths.status, None)
        return _parse_status(response, self.paths.status)

    def maintenance(self, on: bool) -> None:
        self._call("POST", self.paths.maintenance, {"enabled": bool(on)})

    def health_detailed(self) -> HealthReport:
        """`GET /health/detailed`. An unhealthy answer (often a 503) that carries a JSON status is a report;
        one without is an error (5xx: BackendUnavailable)."""
        response = self._call("GET", self.paths.health_detailed, None, accept_json_errors=True)
        return _parse_health(response, self.paths.health_detailed)

    # -- plumbing -------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> TradingApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _call(self, method: str, path: str, body: dict[str, Any] | None, *,
              accept_json_errors: bool = False) -> httpx.Response:
        what = f"{method} {path}"
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["X-API-Key"] = self._api_key
        try:
            response = self._client.request(method, self.base_url + path, json=body, headers=headers,
                                            timeout=self.timeout)
        except httpx.TimeoutException:
            hint = f"Is the trading API at {self.base_url} overloaded or down?"
            raise BackendUnavailable(SYSTEM, f"{what} timed out after {self.timeout:g} s",
                                     hint=hint) from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(SYSTEM, self._scrub(f"cannot reach {self.base_url} ({what}): "
                                                         f"{type(exc).__name__}: {exc}")) from None
        # `from None` above: the httpx exception carries the request, headers (the key) included.
        status = response.status_code
        if 200 <= status < 300 or (accept_json_errors and _json_status(response) is not None):
            return response
        message = self._scrub(_server_message(response))
        answered = f"{what} answered HTTP {status}" + (f": {message}" if message else "")
        if status >= 500:
            raise BackendUnavailable(SYSTEM, answered)
        if status in (401, 403):
            hint = ("No API key is configured: set `trading_api.api_key_env` in the config and export that "
                    "variable." if self._api_key is None else
                    "Check the admin API key (the variable named by `trading_api.api_key_env`): it was "
                    "rejected, perhaps rotated.")
            raise IntegrationError(SYSTEM, f"{what} was refused with HTTP {status} (authentication)",
                                   hint=hint)
        raise IntegrationError(SYSTEM, answered)


def _server_message(response: httpx.Response) -> str:
    """The error text the server gave: a JSON `error`/`message`/`detail` field, else the body, truncated."""
    text = response.text.strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                text = data[key].strip()
                break
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _json_status(response: httpx.Response) -> str | None:
    """The `status` string of a JSON object body, else None."""
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get("status") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _parse_health(response: httpx.Response, path: str) -> HealthReport:
    status = _json_status(response)
    if status is None:
        snippet = " ".join(response.text.split())[:80]
        raise IntegrationError(SYSTEM, f"GET {path} did not answer a JSON object with a status: {snippet!r}")
    components = response.json().get("components") or {}
    if not isinstance(components, dict):
        raise IntegrationError(SYSTEM, f"GET {path}: components is a {type(components).__name__}, not an object")
    return HealthReport(status, {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in components.items()},
                        response.status_code)


def _parse_status(response: httpx.Response, path: str) -> TradingStatus:
    try:
        data = response.json()
    except ValueError:
        snippet = " ".join(response.text.split())[:80]
        raise IntegrationError(SYSTEM, f"GET {path} did not answer JSON: {snippet!r}") from None
    if not isinstance(data, dict):
        raise IntegrationError(SYSTEM, f"GET {path} answered a JSON {type(data).__name__}, not an object")
    problems = []
    for key, kind in STATUS_FIELDS:
        value = data.get(key)
        if key not in data:
            problems.append(f"{key}: missing")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{key}: expected {kind.__name__}, got {value!r}")
    for key, kinds in OPTIONAL_FIELDS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            wanted = kinds.__name__ if isinstance(kinds, type) else "number"
            problems.append(f"{key}: expected {wanted} or null, got {value!r}")
    if problems:
        raise IntegrationError(SYSTEM, f"GET {path} answered a malformed status: " + "; ".join(problems))
    known = {k for k, _ in STATUS_FIELDS} | {k for k, _ in OPTIONAL_FIELDS}
    extra = {k: v for k, v in data.items() if k not in known}
    pnl = data.get("pnl")
    return TradingStatus(trading=data["trading"], active_bots=data["active_bots"],
                         total_bots=data["total_bots"], maintenance=data["maintenance"], detail=extra,
                         open_orders=data.get("open_orders"), open_positions=data.get("open_positions"),
                         pnl=None if pnl is None else float(pnl), halt=data.get("halt"))
