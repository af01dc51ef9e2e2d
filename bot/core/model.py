"""Slack-free value objects that flow from front ends through the core."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any


def new_correlation_id() -> str:
    return secrets.token_hex(8)


_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")


def person(user_id: str | None, name: str | None = None, *, markup: bool = True) -> str:
    """How a person appears in what the bot says (the one rule): in a Slack message a mention, which Slack
    renders as their current name and links to them; in plain text (audit records, logs), or for someone
    without a Slack id (a system actor, a console user), their name. Callers escape a name they show."""
    if markup and user_id and _SLACK_USER_ID.fullmatch(user_id):
        return f"<@{user_id}>"
    return name or user_id or "?"


@dataclass(frozen=True)
class Actor:
    user_id: str
    name: str | None = None  # config name, else the Slack user name

    @property
    def label(self) -> str:
        return self.name or self.user_id

    @property
    def mention(self) -> str:
        """How a person appears in a message others read: a Slack mention (Slack shows their current
        name, and it links to them); a system actor or a console user without a Slack id by name."""
        return person(self.user_id, self.name)


@dataclass(frozen=True)
class Reply:
    """A message for a user: text (always, the notification fallback) plus optional Block Kit."""

    text: str
    blocks: list[dict[str, Any]] | None = None
    ephemeral: bool = True
    replace_original: bool = False
    #: (message key of a post this reply says is queued, the text to replace the reply with once it is delivered)
    once_posted: tuple[str, str] | None = None

    def as_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"text": self.text}
        if self.blocks:
            payload["blocks"] = self.blocks
        return payload


@dataclass(frozen=True)
class Invocation:
    """A slash command as typed by someone, from any front end."""

    command: str  # without the slash
    text: str
    actor: Actor
    channel_id: str | None
    idempotency_key: str  # e.g. cmd:<trigger_id>; a re-delivery carries the same key
    response_url: str | None = None
    source: str = "slack"  # slack | console | test
    correlation_id: str = field(default_factory=new_correlation_id)


@dataclass(frozen=True)
class ActionInvocation:
    """A button click: `value` is the button's small JSON payload."""

    action_id: str
    value: str
    actor: Actor
    channel_id: str | None
    message_ts: str | None
    idempotency_key: str
    response_url: str | None = None
    source: str = "slack"
    correlation_id: str = field(default_factory=new_correlation_id)
