"""The shape of a signed Slack request body, checked before Bolt or our listeners see it.

A valid signature proves a body came from Slack (or from whoever holds the signing secret), not that it
has the shape the code after it relies on. `parse_payload` parses the body once and checks the structure
of the three kinds of request Slack sends to the one endpoint:

* slash commands: a form with `command=` (`command`, `user_id`, `team_id` required);
* interactivity: a form with `payload=<JSON object>` (`block_actions`, `block_suggestion`,
  `view_submission`, `view_closed`, `shortcut`, `message_action`);
* the Events API: a JSON object (`url_verification`, `event_callback`, `app_rate_limited`);

plus Slack's `ssl_check=1` probe. Everything else, and every field of the wrong type in the places Bolt's
context extraction (`slack_bolt.request.internals`) or `bot/slack/app.py` read, raises `MalformedPayload`
with a machine-readable `reason` (a metric label) and a `detail` naming the field. The HTTP front end
answers it with a 400; nothing malformed reaches Bolt, so nothing malformed can become a 500.

The result is what Bolt is handed (as JSON), so what was checked is exactly what is used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

MAX_DEPTH = 32  # Slack's deepest payloads (rich text in a view's blocks) nest about a dozen levels
MAX_FORM_FIELDS = 100
MAX_ID_CHARS = 64

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_COMMAND = re.compile(r"/[^\s/]{1,32}")

INTERACTIVE_TYPES = ("block_actions", "block_suggestion", "view_submission", "view_closed", "shortcut",
                     "message_action")
EVENT_TYPES = ("url_verification", "event_callback", "app_rate_limited")

# keys Bolt's context extraction reads (at the top level and in the nested objects listed in _NESTED)
_STR_KEYS = ("user_id", "team_id", "enterprise_id", "channel_id", "thread_ts", "response_url", "trigger_id",
             "function_execution_id", "bot_access_token", "app_installed_team_id", "user_team", "callback_id",
             "action_id", "type", "event_id", "event_ts", "api_app_id")
_STR_OR_OBJECT_KEYS = ("user", "team", "channel", "enterprise")
_OBJECT_KEYS = ("event", "message", "previous_message", "item", "assistant_thread", "view", "container", "state",
                "function_data")
_LIST_OF_OBJECTS_KEYS = ("authorizations", "actions", "response_urls")
_NESTED = ("event", "message", "previous_message", "item", "assistant_thread", "view", "user", "team", "channel",
           "enterprise", "container")


class MalformedPayload(Exception):
    """A signed body that is not a Slack request we can handle; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


REASONS = ("empty_body", "not_utf8", "unsupported_content_type", "not_form", "duplicate_field", "not_json",
           "too_deep", "nul_character", "not_an_object", "missing_type", "unsupported_type", "missing_field",
           "bad_field", "unknown_form")


@dataclass(frozen=True)
class SlackPayload:
    kind: str  # command | interactive | event | ssl_check
    type: str  # the command name, the payload's or the event envelope's `type`, or "ssl_check"
    body: dict[str, Any]


def parse_payload(body: bytes, content_type: str | None) -> SlackPayload:
    """Parse and check a signed request body; raise `MalformedPayload` naming the first problem."""
    if not body.strip():
        raise MalformedPayload("empty_body", "the request body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload("not_utf8", f"the body is not UTF-8 (byte {exc.start})") from None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (not media and text.lstrip().startswith("{")):
        return _events(_json_object(text, "body"))
    if media in ("application/x-www-form-urlencoded", ""):
        return _form(text)
    raise MalformedPayload("unsupported_content_type", f"content type {media!r} is neither a form nor JSON")


# --- forms: slash commands, interactivity, ssl_check ---------------------------------------------------

def _form(text: str) -> SlackPayload:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise MalformedPayload("not_utf8", "a form value is not percent-encoded UTF-8") from None
    except ValueError as exc:
        raise MalformedPayload("not_form", f"the body is not a URL-encoded form ({_short(exc)})") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise MalformedPayload("duplicate_field", f"form field {key!r} appears more than once")
        _no_nul(key, "form field name")
        _no_nul(value, f"form field {key!r}")
        fields[key] = value
    if "payload" in fields:
        return _interactive(_json_object(fields["payload"], "payload"))
    if "command" in fields:
        return _command(fields)
    if fields.get("ssl_check") == "1":
        return SlackPayload("ssl_check", "ssl_check", fields)
    raise MalformedPayload("unknown_form", "the form is neither a slash command (command=) nor an interactive "
                                           "payload (payload=)")


def _command(fields: dict[str, str]) -> SlackPayload:
    command = fields["command"]
    if not _COMMAND.fullmatch(command):
        raise MalformedPayload("bad_field", "command must be '/' and a name of 1 to 32 characters")
    for key in ("user_id", "team_id"):
        if not fields.get(key):
            raise MalformedPayload("missing_field", f"a slash command needs {key}")
    for key in ("user_id", "team_id", "channel_id", "enterprise_id"):
        if fields.get(key):
            _id(fields[key], key)
    return SlackPayload("command", command, fields)


# --- JSON ----------------------------------------------------------------------------------------------

def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedPayload("too_deep", f"{where} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise MalformedPayload("not_json", f"{where} is not JSON ({_short(exc)})") from None
    _walk(value, where)
    if not isinstance(value, dict):
        raise MalformedPayload("not_an_object", f"{where} must be a JSON object, not {_kind(value)}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _walk(root: Any, where: str) -> None:
    """Depth and NUL characters, without recursion (a deep value must not exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise MalformedPayload("too_deep", f"{where} nests deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _no_nul(key, f"a key in {where}")
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            _no_nul(value, f"a string in {where}")


def _events(body: dict[str, Any]) -> SlackPayload:
    kind = _type(body, "body", EVENT_TYPES)
    _bolt_shape(body, "body")
    if kind == "url_verification":
        _str(body, "challenge", "body", required=True)
    elif kind == "event_callback":
        event = _required_object(body, "event", "body")
        _str(event, "type", "body.event", required=True)
        _str(body, "event_id", "body", required=True)
        _str(event, "tab", "body.event")  # `user` (a string or an object) was checked with Bolt's fields
    return SlackPayload("event", kind, body)


def _interactive(body: dict[str, Any]) -> SlackPayload:
    kind = _type(body, "payload", INTERACTIVE_TYPES)
    _bolt_shape(body, "payload")
    user = _required_object(body, "user", "payload")
    _id(_str(user, "id", "payload.user", required=True), "payload.user.id")
    for key in ("username", "name", "team_id"):
        _str(user, key, "payload.user")
    for key in ("team", "channel"):
        sub = _object(body, key, "payload")
        if sub is not None and sub.get("id") is not None:
            _id(_str(sub, "id", f"payload.{key}"), f"payload.{key}.id")
    container = _object(body, "container", "payload")
    if container is not None:
        for key in ("message_ts", "channel_id"):
            _str(container, key, "payload.container")
    message = _object(body, "message", "payload")
    if message is not None:
        _str(message, "ts", "payload.message")
    if kind == "block_actions":
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            raise MalformedPayload("missing_field" if actions is None else "bad_field",
                                   "payload.actions must be a non-empty list")
        for i, action in enumerate(actions):
            where = f"payload.actions[{i}]"
            _str(action, "action_id", where, required=True)
            for key in ("value", "action_ts", "block_id", "type"):
                _str(action, key, where)
    elif kind == "block_suggestion":
        _str(body, "action_id", "payload", required=True)
        _str(body, "value", "payload")
    elif kind in ("view_submission", "view_closed"):
        view = _required_object(body, "view", "payload")
        _str(view, "id", "payload.view", required=True)
        _str(view, "private_metadata", "payload.view")
    else:  # shortcut, message_action
        _str(body, "callback_id", "payload", required=True)
        _str(body, "trigger_id", "payload", required=True)
        if kind == "message_action":
            _object(body, "message", "payload", required=True)
    return SlackPayload("interactive", kind, body)


def _bolt_shape(obj: dict[str, Any], where: str) -> None:
    """The types Bolt's context extraction assumes, wherever it looks (it calls `.get` on what it finds)."""
    for key in _STR_KEYS:
        _str(obj, key, where)
    for key in _STR_OR_OBJECT_KEYS:
        value = obj.get(key)
        if value is not None and not isinstance(value, str | dict):
            raise MalformedPayload("bad_field", f"{where}.{key} must be a string or an object, not {_kind(value)}")
    if "is_enterprise_install" in obj and not isinstance(obj["is_enterprise_install"], bool | str | None):
        raise MalformedPayload("bad_field", f"{where}.is_enterprise_install must be a boolean")
    for key in _OBJECT_KEYS:
        # Bolt reads `payload.get("event", {})`: an event that is present must be an object, even null is not
        _object(obj, key, where, required=key == "event" and key in obj)
    for key in _LIST_OF_OBJECTS_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise MalformedPayload("bad_field", f"{where}.{key} must be a list, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise MalformedPayload("bad_field", f"{where}.{key}[{i}] must be an object, not {_kind(item)}")
            if key == "authorizations":
                _bolt_shape(item, f"{where}.{key}[{i}]")
            elif key == "response_urls":
                _str(item, "response_url", f"{where}.{key}[{i}]")
    for key in _NESTED:
        value = obj.get(key)
        if isinstance(value, dict):
            _bolt_shape(value, f"{where}.{key}")


# --- field helpers ------------------------------------------------------------------------------------

def _type(body: dict[str, Any], where: str, allowed: tuple[str, ...]) -> str:
    kind = body.get("type")
    if kind is None:
        raise MalformedPayload("missing_type", f"{where} has no type")
    if not isinstance(kind, str):
        raise MalformedPayload("bad_field", f"{where}.type must be a string, not {_kind(kind)}")
    if kind not in allowed:
        raise MalformedPayload("unsupported_type", f"{where}.type {_short_text(kind)!r} is not one of "
                                                   f"{', '.join(allowed)}")
    return kind


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise MalformedPayload("missing_field", f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise MalformedPayload("bad_field", f"{where}.{key} must be a string, not {_kind(value)}")
    if required and not value:
        raise MalformedPayload("missing_field", f"{where}.{key} is empty")
    return value


def _required_object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _object(obj, key, where, required=True)
    assert value is not None  # _object raised otherwise
    return value


def _object(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise MalformedPayload("missing_field", f"{where}.{key} is missing")
        return None
    if not isinstance(value, dict):
        raise MalformedPayload("bad_field", f"{where}.{key} must be an object, not {_kind(value)}")
    return value


def _id(value: str | None, where: str) -> None:
    if value is not None and (len(value) > MAX_ID_CHARS or not _ID.fullmatch(value)):
        raise MalformedPayload("bad_field", f"{where} is not a Slack id")


def _no_nul(value: str, where: str) -> None:
    if "\x00" in value:
        raise MalformedPayload("nul_character", f"{where} contains a NUL character")


_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
                           float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _short(exc: Exception) -> str:
    return _short_text(str(exc))


def _short_text(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"

