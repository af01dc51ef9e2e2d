"""Slack Web API transport for the outbox, plus the user-group directory (slack_sdk WebClient).

Vendor errors become the outbox's RateLimited / TransientError / PermanentError, so the
worker alone decides about retries (the client's own retry handlers are not installed).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.outbox import Delivered, PermanentError, RateLimited, TransientError

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}


class SlackWebTransport:
    def __init__(self, token: str, base_url: str, *, response_url_prefixes: list[str], timeout: float = 10.0) -> None:
        self.client = WebClient(token=token, base_url=base_url, timeout=int(timeout))
        self.client.retry_handlers = []  # the outbox worker owns retries
        self._http = httpx.Client(timeout=timeout)
        self.response_url_prefixes = tuple(response_url_prefixes)

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered:
        if kind == "respond":
            return self._respond(payload)
        try:
            if kind in ("post", "ephemeral") and not channel:
                raise PermanentError(f"{kind} without a channel")
            if kind == "post":
                assert channel is not None
                resp = self.client.chat_postMessage(channel=channel, **_message_args(payload))
                return Delivered(channel=resp.get("channel", channel), ts=resp.get("ts"))
            if kind == "update":
                resp = self.client.chat_update(channel=payload["channel"], ts=payload["ts"],
                                               **_message_args(payload))
                return Delivered(channel=payload["channel"], ts=payload["ts"])
            if kind == "ephemeral":
                assert channel is not None
                resp = self.client.chat_postEphemeral(channel=channel, user=payload["user"],
                                                      **_message_args(payload))
                return Delivered(channel=channel, ts=resp.get("message_ts"))
            if kind == "home":
                self.client.views_publish(user_id=payload["user"], view=payload["view"])
                return Delivered()
            if kind == "create_channel":
                return self._create_channel(payload)
            if kind == "invite":
                return self._invite(channel, payload)
        except SlackApiError as exc:
            raise _classify(exc) from exc
        except (SlackClientError, OSError, TimeoutError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        raise PermanentError(f"unknown outbox kind {kind!r}")

    def _create_channel(self, payload: dict[str, Any]) -> Delivered:
        """conversations.create with the first name Slack has not taken (the bot, as creator, is a member)."""
        for name in payload["names"]:
            try:
                resp = self.client.conversations_create(name=name, is_private=False)
            except SlackApiError as exc:
                if exc.response.get("error") == "name_taken":
                    continue
                raise
            return Delivered(channel=str(resp["channel"]["id"]))
        raise PermanentError(f"Slack error name_taken: every name tried is taken ({', '.join(payload['names'])})")

    def _invite(self, channel: str | None, payload: dict[str, Any]) -> Delivered:
        """conversations.invite of the people and the current members of the user groups; people already
        there are not an error (a repeated delivery invites nobody twice)."""
        users = list(payload.get("users") or [])
        for group in payload.get("usergroups") or []:
            users += self.client.usergroups_users_list(usergroup=group).get("users") or []
        users = list(dict.fromkeys(users))
        if not users:
            return Delivered(channel=channel)
        try:
            self.client.conversations_invite(channel=channel or "", users=",".join(users), force=True)
        except SlackApiError as exc:
            if exc.response.get("error") != "already_in_channel":
                raise
        return Delivered(channel=channel)

    def _respond(self, payload: dict[str, Any]) -> Delivered:
        url = str(payload.get("response_url", ""))
        if not url.startswith(self.response_url_prefixes):
            # a response_url outside Slack's would let a forged payload make us POST anywhere
            raise PermanentError("response_url is not an allowed Slack URL; refused")
        body = {k: v for k, v in payload.items() if k in ("text", "blocks", "response_type", "replace_original")}
        try:
            resp = self._http.post(url, json=body)
        except httpx.HTTPError as exc:
            raise TransientError(f"response_url: {type(exc).__name__}") from exc
        if resp.status_code == 429:
            raise RateLimited(_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 500:
            raise TransientError(f"response_url answered {resp.status_code}")
        if resp.status_code >= 400:
            # expired (30 min) or used up (5 uses): nothing will make it work again
            raise PermanentError(f"response_url answered {resp.status_code}: {resp.text[:200]}")
        return Delivered()

    def auth_test(self) -> dict[str, Any]:
        return dict(self.client.auth_test().data)  # type: ignore[arg-type]

    def close(self) -> None:
        self._http.close()


def _message_args(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in ("text", "blocks", "thread_ts") if payload.get(k) is not None}


def _retry_after(raw: str | None) -> float:
    try:
        return max(0.0, float(raw)) if raw is not None else 1.0
    except ValueError:
        return 1.0


def _classify(exc: SlackApiError) -> Exception:
    status = exc.response.status_code
    if status == 429:
        headers = exc.response.headers
        return RateLimited(_retry_after(headers.get("Retry-After") or headers.get("retry-after")))
    if status >= 500:
        return TransientError(f"Slack answered {status}")
    error = exc.response.get("error") if hasattr(exc.response, "get") else None
    if error in TRANSIENT_ERRORS:
        return TransientError(f"Slack error {error}")
    return PermanentError(f"Slack error {error or status}")


class SlackGroupDirectory:
    """Members of Slack user groups (subteam ids), refreshed in the background; look-ups never block."""

    def __init__(self, client: WebClient, subteams: list[str], *, ttl: float = 300.0) -> None:
        self.client = client
        self.subteams = subteams
        self.ttl = ttl
        self._members: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __call__(self, subteam: str) -> frozenset[str]:
        with self._lock:
            return self._members.get(subteam, frozenset())

    def refresh(self) -> None:
        for subteam in self.subteams:
            try:
                resp = self.client.usergroups_users_list(usergroup=subteam)
                users = frozenset(resp.get("users") or [])
            except (SlackClientError, OSError) as exc:
                log.warning("could not refresh user group %s (keeping the last known members): %s", subteam, exc)
                continue
            with self._lock:
                self._members[subteam] = users

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(1.0, self.ttl - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
