"""Build correctly signed Slack requests (slash commands, interactivity, Events API).

Slack signs every request with ``X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{ts}:{body}")>`` and
``X-Slack-Request-Timestamp: {ts}``.  Typical use against the bot's HTTP endpoint::

    body = slash_command_body("/swarm", "status", "U0TEST", "tester", "C0TEST", fake.response_url("status"))
    headers = signed_headers(body, SIGNING_SECRET)
    httpx.post(f"{bot_url}/slack/events", content=body, headers=headers)

Bodies are ``bytes`` exactly as sent on the wire: sign and send the same object.  Pass an old ``timestamp``
to :func:`sign` to exercise replay protection (Slack rejects requests older than five minutes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

TEAM_ID = "T0TEST"
TEAM_DOMAIN = "chatops-test"
API_APP_ID = "A0TEST"
BOT_USER_ID = "U0BOT"
#: Deprecated verification token Slack still includes in payloads; not used for authentication.
VERIFICATION_TOKEN = "verification-token-unused"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"


def _random_trigger_id() -> str:
    """A unique trigger id shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    token = uuid.uuid4()
    return f"{token.int % 10**13}.{token.int % 10**12}.{token.hex}"


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Return ``X-Slack-Request-Timestamp`` / ``X-Slack-Signature`` headers for ``body``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    base = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def signed_headers(
    body: bytes, secret: str, *, content_type: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Signature headers plus ``Content-Type`` (guessed from the body's first byte when not given)."""
    if content_type is None:
        content_type = JSON_CONTENT_TYPE if body.lstrip()[:1] == b"{" else FORM_CONTENT_TYPE
    return {"Content-Type": content_type, **sign(body, secret, timestamp)}


def slash_command_body(
    command: str,
    text: str,
    user_id: str,
    user_name: str,
    channel_id: str,
    response_url: str,
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    *,
    channel_name: str = "general",
    api_app_id: str = API_APP_ID,
) -> bytes:
    """URL-encoded body of a slash-command invocation, with the fields Slack sends."""
    fields = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _random_trigger_id(),
    }
    return urlencode(fields).encode()


def block_actions_payload(
    action_id: str,
    value: str,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    block_id: str = "b",
    trigger_id: str | None = None,
    *,
    user_name: str = "tester",
    team_id: str = TEAM_ID,
    message: dict[str, Any] | None = None,
    action_type: str = "button",
) -> dict[str, Any]:
    """The decoded ``block_actions`` payload a button click on ``(channel_id, message_ts)`` produces."""
    now = f"{time.time():.6f}"
    action: dict[str, Any] = {
        "type": action_type,
        "action_id": action_id,
        "block_id": block_id,
        "value": value,
        "action_ts": now,
    }
    default_message = {"type": "message", "ts": message_ts, "user": BOT_USER_ID, "text": "", "blocks": []}
    if action_type == "button":
        action["text"] = {"type": "plain_text", "text": value, "emoji": True}
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False,
        },
        "trigger_id": trigger_id or _random_trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "general"},
        "message": message or default_message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }


def block_actions_body(
    action_id: str,
    value: str,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    block_id: str = "b",
    trigger_id: str | None = None,
    **extra: Any,
) -> bytes:
    """URL-encoded ``payload=<json>`` body of an interactivity request (see :func:`block_actions_payload`)."""
    payload = block_actions_payload(
        action_id, value, user_id, channel_id, message_ts, response_url, block_id, trigger_id, **extra
    )
    return urlencode({"payload": json.dumps(payload)}).encode()


def event_body(event: dict[str, Any], event_id: str | None = None, team_id: str = TEAM_ID) -> bytes:
    """JSON body of an Events API ``event_callback`` wrapping ``event``."""
    envelope = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": API_APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {"enterprise_id": None, "team_id": team_id, "user_id": BOT_USER_ID, "is_bot": True,
             "is_enterprise_install": False}
        ],
        "is_ext_shared_channel": False,
    }
    return json.dumps(envelope).encode()


def url_verification_body(challenge: str = "challenge-token") -> bytes:
    """JSON body of the Events API ``url_verification`` handshake."""
    body = {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    return json.dumps(body).encode()
