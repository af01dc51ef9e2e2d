"""Alertmanager's API v2 over httpx: create, read, list and delete silences (issue 8 section 5).

Vendor failures become our error tree: unreachable, timed out or 5xx -> `BackendUnavailable`;
401/403 -> `IntegrationError` with a hint about the token; other 4xx (Alertmanager's 400 for a bad
silence, 404 for an unknown id) -> `IntegrationError` with the server's (truncated) message. The token,
when one is configured, travels only in the `Authorization` header and is scrubbed from every error.
The client does not retry: a button click reports the failure, and callers that must keep trying
(none yet) do so themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bot.errors import BackendUnavailable, IntegrationError, NotFound
from integrations.http_base import HttpApi

SYSTEM = "alertmanager"
MAX_MESSAGE = 200
#: label names Alertmanager accepts (Prometheus's rule)
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: labels that never make a useful silence matcher (they differ per replica or per alert instance)
DEFAULT_IGNORED_LABELS = frozenset({"instance", "pod", "replica", "prometheus_replica", "__name__"})


@dataclass(frozen=True)
class Matcher:
    """One silence matcher; `equal` False means `!=` (`!~` with `regex`)."""

    name: str
    value: str
    regex: bool = False
    equal: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.regex, "isEqual": self.equal}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Matcher:
        return cls(str(data["name"]), str(data["value"]), bool(data.get("isRegex", False)),
                   bool(data.get("isEqual", True)))

    def __str__(self) -> str:
        op = ("=~" if self.regex else "=") if self.equal else ("!~" if self.regex else "!=")
        return f"{self.name}{op}{json.dumps(self.value)}"


@dataclass(frozen=True)
class Silence:
    """A silence as Alertmanager reports it; `state` is `active`, `pending` or `expired`."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    state: str

    @property
    def active(self) -> bool:
        return self.state == "active"


def matchers_from_labels(labels: dict[str, str], *,
                         ignore: frozenset[str] = DEFAULT_IGNORED_LABELS) -> list[Matcher]:
    """Equality matchers for a group's labels (sorted by name), leaving out per-instance labels and empty
    values. Raises ValueError when nothing is left: a silence without matchers is refused by Alertmanager,
    and one matching everything would silence every alert."""
    out = [Matcher(k, v) for k, v in sorted(labels.items()) if k not in ignore and v != ""]
    bad = [m.name for m in out if not LABEL_NAME_RE.match(m.name)]
    if bad:
        raise ValueError(f"not valid label names: {', '.join(bad)}")
    if not out:
        raise ValueError("no labels to match: a silence needs at least one matcher")
    return out


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise IntegrationError(SYSTEM, f"silence {field} is not a timestamp: {value!r}")
    text = value.replace("Z", "+00:00")
    # Go prints up to nine fractional digits; Python's fromisoformat takes at most six
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise IntegrationError(SYSTEM, f"silence {field} is not a timestamp: {value!r}") from None


def _silence(data: Any) -> Silence:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise IntegrationError(SYSTEM, f"malformed silence: {str(data)[:MAX_MESSAGE]}")
    try:
        matchers = tuple(Matcher.from_json(m) for m in data.get("matchers") or [])
    except (KeyError, TypeError, AttributeError):
        raise IntegrationError(SYSTEM, f"silence {data['id']}: malformed matchers") from None
    status = data.get("status")
    return Silence(id=data["id"], matchers=matchers, starts_at=_parse_time(data.get("startsAt"), "startsAt"),
                   ends_at=_parse_time(data.get("endsAt"), "endsAt"), created_by=str(data.get("createdBy", "")),
                   comment=str(data.get("comment", "")),
                   state=str(status.get("state", "")) if isinstance(status, dict) else "")


class AlertmanagerClient(HttpApi):
    """Silences through Alertmanager's API v2 at `base_url` (e.g. `http://alertmanager:9093`)."""

    system = SYSTEM

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0,
                 client: httpx.Client | None = None) -> None:
        super().__init__(base_url, timeout=timeout, client=client)
        self._token = token or None

    def __repr__(self) -> str:
        return f"AlertmanagerClient({self.base_url!r}, token={'***' if self._token else None})"

    # -- silences -------------------------------------------------------------------------------------
    def create_silence(self, matchers: list[Matcher], *, created_by: str, comment: str,
                       ends_at: datetime, starts_at: datetime | None = None) -> str:
        """Create a silence; returns its id. `starts_at` defaults to now."""
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        if not created_by.strip() or not comment.strip():
            raise ValueError("Alertmanager needs createdBy and comment")
        start = starts_at or datetime.now(UTC)
        if ends_at <= start:
            raise ValueError("a silence must end after it starts")
        body = {"matchers": [m.to_json() for m in matchers], "startsAt": _iso(start), "endsAt": _iso(ends_at),
                "createdBy": created_by, "comment": comment}
        data = self._json(self._call("POST", "/api/v2/silences", body))
        silence_id = data.get("silenceID") if isinstance(data, dict) else None
        if not isinstance(silence_id, str) or not silence_id:
            raise IntegrationError(SYSTEM, f"POST /api/v2/silences answered no silenceID: {str(data)[:80]}")
        return silence_id

    def silence_for(self, duration: timedelta, labels: dict[str, str], *, created_by: str,
                    comment: str) -> str:
        """Silence alerts with these labels for `duration` from now; returns the silence id."""
        now = datetime.now(UTC)
        return self.create_silence(matchers_from_labels(labels), created_by=created_by, comment=comment,
                                   starts_at=now, ends_at=now + duration)

    def find_silence(self, labels: dict[str, str], marker: str) -> tuple[str, datetime] | None:
        """A silence not yet expired on these labels' matchers whose comment carries `marker` (how a click
        finds the silence it created before its process died), as (id, endsAt); None when there is none."""
        wanted = set(matchers_from_labels(labels))
        for silence in self.list_silences(matchers=sorted(wanted, key=lambda m: m.name)):
            if silence.state != "expired" and set(silence.matchers) == wanted and marker in silence.comment:
                return silence.id, silence.ends_at
        return None

    def get_silence(self, silence_id: str) -> Silence:
        """One silence; `NotFound` when Alertmanager does not know the id."""
        return _silence(self._json(self._call("GET", f"/api/v2/silence/{_safe_id(silence_id)}", None,
                                              not_found=silence_id)))

    def list_silences(self, *, matchers: list[Matcher] | None = None) -> list[Silence]:
        """Every silence Alertmanager holds (expired ones too), optionally filtered by matchers."""
        params = tuple(("filter", str(m)) for m in matchers or [])
        data = self._json(self._call("GET", "/api/v2/silences", None, params=params))
        if not isinstance(data, list):
            raise IntegrationError(SYSTEM, "GET /api/v2/silences did not answer a list")
        return [_silence(item) for item in data]

    def delete_silence(self, silence_id: str) -> None:
        """Expire a silence. Expiring one that has already expired is fine; an unknown id is `NotFound`."""
        self._call("DELETE", f"/api/v2/silence/{_safe_id(silence_id)}", None, not_found=silence_id)

    def ready(self) -> bool:
        try:
            return self._client.get(self.base_url + "/-/ready", timeout=self.timeout).status_code == 200
        except httpx.HTTPError:
            return False

    # -- plumbing -------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, method: str, path: str, body: dict[str, Any] | None, *,
              params: tuple[tuple[str, str], ...] = (), not_found: str | None = None) -> httpx.Response:
        what = f"{method} {path}"
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._client.request(method, self.base_url + path, json=body,
                                            params=params,
                                            headers=headers, timeout=self.timeout)
        except httpx.TimeoutException:
            raise BackendUnavailable(SYSTEM, f"{what} timed out after {self.timeout:g} s",
                                     hint=f"Is Alertmanager at {self.base_url} overloaded or down?") from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(SYSTEM, self._scrub(f"cannot reach {self.base_url} ({what}): "
                                                         f"{type(exc).__name__}: {exc}")) from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        message = self._scrub(_server_message(response))
        answered = f"{what} answered HTTP {status}" + (f": {message}" if message else "")
        if status >= 500:
            raise BackendUnavailable(SYSTEM, answered)
        if status in (401, 403):
            raise IntegrationError(SYSTEM, f"{what} was refused with HTTP {status} (authentication)",
                                   hint="Check the Alertmanager token (`alertmanager.token_env` in the config).")
        if status == 404 and not_found is not None:
            raise NotFound(f"Alertmanager has no silence {not_found!r}")
        raise IntegrationError(SYSTEM, answered)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            snippet = " ".join(response.text.split())[:80]
            raise IntegrationError(SYSTEM, f"answer is not JSON: {snippet!r}") from None


def _safe_id(silence_id: str) -> str:
    """Silence ids are UUIDs; anything else could walk the URL path."""
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", silence_id):
        raise NotFound(f"{silence_id!r} is not a silence id")
    return silence_id


def _server_message(response: httpx.Response) -> str:
    text = response.text.strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, str):
        text = data
    elif isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                text = data[key]
                break
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class SimulatedAlertmanager:
    """Silences kept in memory, for the console where an environment names no Alertmanager (labelled
    SIMULATED in its banner; `chatops serve` never uses it). The same checks as the client: matchers from
    the labels, ids that are ids, expiring twice is harmless, an unknown id is `NotFound`."""

    label = "simulated (no Alertmanager configured)"

    def __init__(self) -> None:
        self.silences: dict[str, Silence] = {}
        self._n = 0

    def silence_for(self, duration: timedelta, labels: dict[str, str], *, created_by: str, comment: str) -> str:
        matchers = tuple(matchers_from_labels(labels))
        now = datetime.now(UTC)
        self._n += 1
        silence_id = f"00000000-0000-4000-8000-{self._n:012d}"
        self.silences[silence_id] = Silence(silence_id, matchers, now, now + duration, created_by, comment, "active")
        return silence_id

    def find_silence(self, labels: dict[str, str], marker: str) -> tuple[str, datetime] | None:
        wanted = set(matchers_from_labels(labels))
        return next(((s.id, s.ends_at) for s in self.silences.values()
                     if s.state == "active" and set(s.matchers) == wanted and marker in s.comment), None)

    def delete_silence(self, silence_id: str) -> None:
        found = self.silences.get(_safe_id(silence_id))
        if found is None:
            raise NotFound(f"Alertmanager has no silence {silence_id!r}")
        self.silences[silence_id] = Silence(found.id, found.matchers, found.starts_at, datetime.now(UTC),
                                            found.created_by, found.comment, "expired")
