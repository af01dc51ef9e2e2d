"""The Bolt app: translates Slack payloads into core invocations, acks, hands work to the runner.

Listeners run with `process_before_response=True`: each acks inline (no thread hop, no 10 ms
ack polling) after only in-memory work, and the slow part is a tracked background task.
Signatures are verified before Bolt sees a request (`bot.http`), so Bolt's own check is off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult

from bot.container import Container
from bot.core.model import ActionInvocation, Actor, Invocation, Reply
from commands.home import prepare_home_opened

log = logging.getLogger(__name__)


def actor_from(container: Container, user_id: str, slack_name: str | None) -> Actor:
    return Actor(user_id=user_id, name=container.config.name_of(user_id) or slack_name)


def _ack_kwargs(reply: Reply | None) -> dict[str, Any]:
    if reply is None:
        return {}
    kwargs: dict[str, Any] = {"text": reply.text, "response_type": "ephemeral" if reply.ephemeral else "in_channel"}
    if reply.blocks:
        kwargs["blocks"] = reply.blocks
    return kwargs


def command_invocation(container: Container, body: dict[str, Any], *, raw_key: str | None = None) -> Invocation:
    user_id = str(body.get("user_id") or "")
    trigger = body.get("trigger_id") or raw_key or hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return Invocation(
        command=str(body.get("command") or "").lstrip("/"),
        text=str(body.get("text") or ""),
        actor=actor_from(container, user_id, body.get("user_name")),
        channel_id=body.get("channel_id"),
        idempotency_key=f"cmd:{body.get('team_id', '')}:{trigger}",
        response_url=body.get("response_url"),
    )


def action_invocations(container: Container, body: dict[str, Any]) -> list[ActionInvocation]:
    user = body.get("user") or {}
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    message_ts = (body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts")
    out = []
    for action in body.get("actions") or []:
        click = action.get("action_ts") or body.get("trigger_id") or ""
        out.append(ActionInvocation(
            action_id=str(action.get("action_id") or ""),
            value=str(action.get("value") or ""),
            actor=actor_from(container, str(user.get("id") or ""), user.get("username") or user.get("name")),
            channel_id=channel,
            message_ts=message_ts,
            idempotency_key=f"act:{body.get('trigger_id', '')}:{click}:{action.get('action_id', '')}",
            response_url=body.get("response_url"),
        ))
    return out


def build_bolt(container: Container) -> AsyncApp:
    token = container.settings.secret("slack_bot_token") or ""

    async def authorize(**_kwargs: Any) -> AuthorizeResult:
        # a single-workspace bot: no network round trip (auth.test) on the request path
        return AuthorizeResult(enterprise_id=None, team_id=_kwargs.get("team_id"), bot_token=token)

    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(
        name="swarm-chatops",  # without it Bolt inspects the call stack at start-up (~0.1 s)
        # Bolt's own client (used by Socket Mode for apps.connections.open) honours CHATOPS_SLACK_API_URL
        # no token here: `authorize` supplies it per request (a token too would only be ignored)
        client=AsyncWebClient(base_url=container.settings.slack_api_url),
        signing_secret=container.settings.secret("slack_signing_secret") or "verified-upstream",
        authorize=authorize,
        request_verification_enabled=False,
        process_before_response=True,
        ignoring_self_events_enabled=False,
        raise_error_for_unhandled_request=False,
    )
    dispatcher = container.dispatcher
    tasks = container.tasks

    @app.command(re.compile(r"^/"))
    async def on_command(ack: AsyncAck, body: dict[str, Any]) -> None:
        prepared = dispatcher.prepare(command_invocation(container, body))
        busy = dispatcher.launch(prepared, tasks)
        await ack(**_ack_kwargs(Reply(busy) if busy else prepared.ack))

    @app.action(re.compile(r".*"))
    async def on_action(ack: AsyncAck, body: dict[str, Any]) -> None:
        busy = None
        for inv in action_invocations(container, body):
            prepared = dispatcher.prepare_action(inv)
            busy = busy or dispatcher.launch(prepared, tasks)
        await ack()
        if busy:
            log.warning("action dropped while busy: %s", busy)

    @app.event("app_home_opened")
    async def on_home(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any]) -> None:
        # Events API retries (X-Slack-Retry-Num) carry the same event_id: claimed once in the job
        event_key = f"evt:{body.get('event_id') or event.get('event_ts', '')}"
        # the live status is read in the job, before the transaction that publishes it
        prepared = prepare_home_opened(dispatcher, str(event.get("user") or ""), event_key)
        busy = dispatcher.launch(prepared, tasks)
        await ack()
        if busy:
            log.warning("app_home_opened dropped while busy")

    return app
