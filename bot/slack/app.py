"""The Bolt app: translates Slack payloads into core invocations, acks, hands work to the runner.

Listeners run with `process_before_response=True`: each acks inline (no thread hop, no 10 ms
ack polling) once the delivery is durable — its claim and audit record, or its pending-command row,
group-committed by the batched writer — and the slow part is a tracked background task.
Signatures are verified before Bolt sees a request (`bot.http`), so Bolt's own check is off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.response import BoltResponse

from bot.container import Container
from bot.core.model import ActionInvocation, Actor, Invocation, Reply
from commands.dispatch import NOT_RECORDED

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


def _value_of(action: dict[str, Any]) -> str:
    """A button's `value`, or the value of the option chosen in a menu (`static_select`)."""
    option = action.get("selected_option")
    chosen = option.get("value") if isinstance(option, dict) else None
    return str(action.get("value") or chosen or "")


def action_invocations(container: Container, body: dict[str, Any]) -> list[ActionInvocation]:
    user = body.get("user") or {}
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    message_ts = (body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts")
    out = []
    for action in body.get("actions") or []:
        click = action.get("action_ts") or body.get("trigger_id") or ""
        out.append(ActionInvocation(
            action_id=str(action.get("action_id") or ""),
            value=_value_of(action),
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

    # Each listener acks only once the delivery is durable (dispatcher.acknowledge awaits the group
    # commit). When it could not be recorded, a slash command's ack says so in its text; a click or an
    # event, which have no text to show, get a 503 (Slack retries events; the user is told of a click).
    @app.command(re.compile(r"^/"))
    async def on_command(ack: AsyncAck, body: dict[str, Any]) -> None:
        prepared = dispatcher.prepare(command_invocation(container, body))
        accepted = await dispatcher.acknowledge(prepared, tasks)
        await ack(**_ack_kwargs(accepted.reply))

    @app.action(re.compile(r".*"))
    async def on_action(ack: AsyncAck, body: dict[str, Any]) -> BoltResponse | None:
        failed: ActionInvocation | None = None
        for inv in action_invocations(container, body):
            accepted = await dispatcher.acknowledge(dispatcher.prepare_action(inv), tasks)
            if accepted.state == "not_recorded":
                failed = inv
        if failed is None:
            await ack()
            return None
        log.error("button click %s not recorded: the database is unavailable", failed.action_id)
        if container.core.direct_reply is not None:
            await asyncio.to_thread(container.core.direct_reply, failed.response_url, failed.channel_id,
                                    failed.actor.user_id, Reply(NOT_RECORDED))
        return BoltResponse(status=503, body="")

    @app.event("app_home_opened")
    async def on_home(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any]) -> BoltResponse | None:
        # Events API retries (X-Slack-Retry-Num) carry the same event_id: claimed once in the job
        event_key = f"evt:{body.get('event_id') or event.get('event_ts', '')}"
        prepared = dispatcher.prepare_home(str(event.get("user") or ""), event_key)
        accepted = await dispatcher.acknowledge(prepared, tasks)
        if accepted.state == "not_recorded":
            return BoltResponse(status=503, body="")  # not a 2xx: Slack delivers the event again later
        await ack()
        return None

    return app
