"""Signed but malformed Slack bodies get a 400 with a reason, never a 500 (issue 6, item 5).

Every body below carries a valid signature, so it passes `bot/slack/verify.py` and reaches the payload
check (`bot/slack/payloads.py`); before that check existed, many reached Bolt or `bot/slack/app.py`
and raised. Each must be answered 400 with the reason, logged in one line, without a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from bot.slack.payloads import MAX_DEPTH, REASONS, MalformedPayload, parse_payload
from tests.bot_server import SECRET, RunningBot, start_bot
from tests.harness.signing import (
    block_actions_payload,
    event_body,
    signed_headers,
    slash_command_body,
    url_verification_body,
)
from tests.harness.slack_api import FakeSlack
from tests.test_http import ServerLogs, audit_records, metric

ALICE, ROOT = "U0ALICE01", "U0ROOT006"
FORM, JSON = "application/x-www-form-urlencoded", "application/json"
URL = "https://hooks.slack.com/commands/T0TEST/1/x"


@pytest.fixture(scope="module")
def shared_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    """One real bot for the whole table: a refused body changes nothing, so the cases cannot disturb each other."""
    with FakeSlack(users={ALICE: "alice", ROOT: "root"}) as fake:
        running = start_bot(fake, f"sqlite:///{tmp_path_factory.mktemp('payloads')}/bot.db")
        yield running
        running.stop()


# --- the bodies ------------------------------------------------------------------------------------

def command_fields(**changes: str | None) -> dict[str, str]:
    fields = dict(pair.split("=", 1) for pair in
                  slash_command_body("/help", "", ALICE, "alice", "C0STAGING1", URL).decode().split("&"))
    for key, value in changes.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = quote(value, safe="")
    return fields


def command(**changes: str | None) -> bytes:
    return "&".join(f"{k}={v}" for k, v in command_fields(**changes).items()).encode()


def click(**changes: Any) -> dict[str, Any]:
    payload = block_actions_payload("audit.page", '{"limit":1}', ROOT, "C0STAGING1", "1.1", URL)
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    return payload


def action(**changes: Any) -> dict[str, Any]:
    act = dict(click()["actions"][0])
    for key, value in changes.items():
        if value is None:
            act.pop(key)
        else:
            act[key] = value
    return click(actions=[act])


def form_payload(payload: Any) -> bytes:
    return urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)}).encode()


def envelope(**changes: Any) -> bytes:
    body = json.loads(event_body({"type": "app_home_opened", "user": ALICE, "tab": "home", "event_ts": "1.2"}))
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


def nested(depth: int) -> str:
    return '{"type":"block_actions","state":' + "[" * depth + "]" * depth + "}"


CASES: list[tuple[str, str, bytes, str]] = [
    # id, content type, body, reason
    ("empty body", FORM, b"", "empty_body"),
    ("raw non-UTF-8 form", FORM, b"command=%2Fhelp&user_id=U0ALICE01&team_id=T0TEST&text=\xff\xfe", "not_utf8"),
    ("raw non-UTF-8 JSON", JSON, b'{"type":"url_verification","challenge":"\xc3\x28"}', "not_utf8"),
    ("percent-encoded non-UTF-8", FORM, command(text="x") + b"%ff", "not_utf8"),
    ("unsupported content type", "text/plain", command(), "unsupported_content_type"),
    ("not a form", FORM, b"just some words", "not_form"),
    ("duplicate command field", FORM, command() + b"&command=%2Fdeploy", "duplicate_field"),
    ("NUL in a form value", FORM, command(user_name="ali\x00ce"), "nul_character"),
    ("too many form fields", FORM, command() + b"".join(b"&f%d=1" % i for i in range(120)), "not_form"),
    ("neither command nor payload", FORM, b"foo=bar&baz=1", "unknown_form"),
    ("command form without command", FORM, command(command=None), "unknown_form"),
    ("empty command", FORM, command(command=""), "bad_field"),
    ("command without a slash", FORM, command(command="help"), "bad_field"),
    ("command with a space", FORM, command(command="/he lp"), "bad_field"),
    ("command without user_id", FORM, command(user_id=None), "missing_field"),
    ("command without team_id", FORM, command(team_id=None), "missing_field"),
    ("user_id that is markup", FORM, command(user_id="<!channel>"), "bad_field"),
    ("channel_id with spaces", FORM, command(channel_id="C0 STAGING"), "bad_field"),
    ("payload not JSON", FORM, form_payload("{not json"), "not_json"),
    ("payload=[1]", FORM, form_payload("[1]"), "not_an_object"),
    ("payload a string", FORM, form_payload('"block_actions"'), "not_an_object"),
    ("payload null", FORM, form_payload("null"), "not_an_object"),
    ("payload without type", FORM, form_payload({"actions": []}), "missing_type"),
    ("payload type a number", FORM, form_payload(click(type=7)), "bad_field"),
    ("payload type unsupported", FORM, form_payload(click(type="interactive_message")), "unsupported_type"),
    ("actions not a list", FORM, form_payload(click(actions={"action_id": "audit.page"})), "bad_field"),
    ("actions empty", FORM, form_payload(click(actions=[])), "bad_field"),
    ("actions missing", FORM, form_payload(click(actions=None)), "missing_field"),
    ("an action that is a number", FORM, form_payload(click(actions=[1])), "bad_field"),
    ("action without action_id", FORM, form_payload(action(action_id=None)), "missing_field"),
    ("action_id a number", FORM, form_payload(action(action_id=12)), "bad_field"),
    ("action value an object", FORM, form_payload(action(value={"limit": 1})), "bad_field"),
    ("user a string", FORM, form_payload(click(user=ROOT)), "bad_field"),
    ("user missing", FORM, form_payload(click(user=None)), "missing_field"),
    ("user without id", FORM, form_payload(click(user={"name": "root"})), "missing_field"),
    ("user id a number", FORM, form_payload(click(user={"id": 6})), "bad_field"),
    ("channel a list", FORM, form_payload(click(channel=["C0STAGING1"])), "bad_field"),
    ("container a string", FORM, form_payload(click(container="C0STAGING1")), "bad_field"),
    ("message a list", FORM, form_payload(click(message=[])), "bad_field"),
    ("team a number", FORM, form_payload(click(team=1)), "bad_field"),
    ("is_enterprise_install a list", FORM, form_payload(click(is_enterprise_install=[])), "bad_field"),
    ("response_urls of strings", FORM, form_payload(click(response_urls=[URL])), "bad_field"),
    ("deep nesting in a payload", FORM, form_payload(nested(MAX_DEPTH + 5)), "too_deep"),
    ("very deep nesting in a payload", FORM, form_payload(nested(100_000)), "too_deep"),
    ("NaN in a payload", FORM, form_payload('{"type":"block_actions","x":NaN}'), "not_json"),
    ("a 5000-digit number", FORM, form_payload('{"type":"block_actions","x":' + "9" * 5000 + "}"), "not_json"),
    ("NUL in a payload string", FORM, form_payload(action(value="a\x00b")), "nul_character"),
    ("view_submission without view", FORM, form_payload(click(type="view_submission", actions=None)),
     "missing_field"),
    ("view without id", FORM, form_payload(click(type="view_submission", view={"type": "modal"})), "missing_field"),
    ("shortcut without callback_id", FORM, form_payload(click(type="shortcut", actions=None)), "missing_field"),
    ("message_action without message", FORM,
     form_payload(click(type="message_action", callback_id="cb", message=None)), "missing_field"),
    ("block_suggestion without action_id", FORM, form_payload(click(type="block_suggestion")), "missing_field"),
    ("JSON body [1]", JSON, b"[1]", "not_an_object"),
    ("JSON body cut short", JSON, b'{"type":', "not_json"),
    ("JSON body without type", JSON, envelope(type=None), "missing_type"),
    ("url_verification without challenge", JSON, b'{"type":"url_verification"}', "missing_field"),
    ("challenge a number", JSON, b'{"type":"url_verification","challenge":5}', "bad_field"),
    ("event_callback without event", JSON, envelope(event=None), "missing_field"),
    ("event a string", JSON, envelope(event="app_home_opened"), "bad_field"),
    ("event null", JSON, envelope().replace(b'"event": {', b'"event": null, "x": {'), "missing_field"),
    ("event without type", JSON, envelope(event={"user": ALICE}), "missing_field"),
    ("event without event_id", JSON, envelope(event_id=None), "missing_field"),
    ("event user a number", JSON, envelope(event={"type": "app_home_opened", "user": 1}), "bad_field"),
    ("team_id a number", JSON, envelope(team_id=7), "bad_field"),
    ("authorizations of strings", JSON, envelope(authorizations=["T0TEST"]), "bad_field"),
    ("authorization team_id a list", JSON, envelope(authorizations=[{"team_id": []}]), "bad_field"),
    ("interactive type sent as JSON", JSON, json.dumps(click()).encode(), "unsupported_type"),
    ("slash command sent as JSON", JSON, json.dumps({"command": "/help", "user_id": ALICE}).encode(),
     "missing_type"),
    ("deep nesting in an event", JSON,
     b'{"type":"event_callback","event_id":"Ev1","event":{"type":"x","d":' + b"[" * 40 + b"]" * 40 + b"}}",
     "too_deep"),
]


def test_the_table_is_large_and_covers_every_reason() -> None:
    assert len(CASES) >= 43
    assert {reason for *_rest, reason in CASES} == set(REASONS)


@pytest.mark.parametrize(("content_type", "body", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_signed_malformed_body_is_a_400_with_a_reason(shared_bot: RunningBot, content_type: str, body: bytes,
                                                      reason: str) -> None:
    before = metric(shared_bot, f'chatops_slack_requests_rejected_total{{reason="{reason}"}}') or 0.0
    with ServerLogs() as logs:
        resp = shared_bot.post(body, signed_headers(body, SECRET, content_type=content_type))
    assert resp.status_code == 400, resp.text
    answer = resp.json()
    assert answer["reason"] == reason and answer["detail"]
    assert logs.tracebacks() == []
    lines = logs.lines_from("bot.http")
    assert len(lines) == 1 and reason in lines[0]
    assert metric(shared_bot, f'chatops_slack_requests_rejected_total{{reason="{reason}"}}') == before + 1


# --- valid requests still work ---------------------------------------------------------------------

def test_valid_requests_still_work(shared_bot: RunningBot) -> None:
    """A slash command, a click, the url_verification handshake, an event and Slack's ssl_check all pass."""
    with ServerLogs() as logs:
        resp = shared_bot.command("/help", "", ALICE)
        assert resp.status_code == 200 and "/status" in resp.json()["text"]

        body = url_verification_body("abc123")
        resp = shared_bot.post(body, signed_headers(body, SECRET, content_type=JSON))
        assert resp.status_code == 200 and resp.json()["challenge"] == "abc123"

        body = event_body({"type": "app_home_opened", "user": ALICE, "tab": "home", "event_ts": "1.2"})
        assert shared_bot.post(body, signed_headers(body, SECRET, content_type=JSON)).status_code == 200
        shared_bot.fake.wait_for("views.publish")

        body = form_payload(block_actions_payload("audit.page", '{"limit": 1}', ROOT, "C0STAGING1", "1.1",
                                                  shared_bot.fake.response_url("click")))
        assert shared_bot.post(body).status_code == 200
        assert shared_bot.fake.wait_for_response("click")

        body = b"ssl_check=1&token=verification-token-unused"
        assert shared_bot.post(body).status_code == 200
    assert logs.tracebacks() == []
    shared_bot.settle()
    assert "command.help" in [r.action for r in audit_records(shared_bot)]


def test_command_text_mentioning_payload_is_still_a_command(shared_bot: RunningBot) -> None:
    """Bolt's own parser takes any form containing the word "payload" for an interactive one (and then finds
    none); the body Bolt gets is the checked structure, so such a command is answered like any other."""
    resp = shared_bot.command("/help", "payload", ALICE)
    assert resp.status_code == 200 and "there is no /payload command" in resp.json()["text"]


# --- the parser on its own ------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type", "kind", "type_"), [
    (slash_command_body("/deploy", "v1 --reason 'a b'", ALICE, "alice", "C0STAGING1", URL), FORM, "command",
     "/deploy"),
    (form_payload(click()), FORM, "interactive", "block_actions"),
    (form_payload(click(type="view_submission", actions=None, view={"id": "V1", "state": {"values": {}}})), FORM,
     "interactive", "view_submission"),
    (form_payload(click(type="shortcut", actions=None, callback_id="cb")), FORM, "interactive", "shortcut"),
    (form_payload(click(type="message_action", actions=None, callback_id="cb")), FORM, "interactive",
     "message_action"),
    (url_verification_body(), JSON, "event", "url_verification"),
    (envelope(), JSON, "event", "event_callback"),
    (envelope(), "application/json; charset=utf-8", "event", "event_callback"),
    (b"ssl_check=1&token=x", FORM, "ssl_check", "ssl_check"),
])
def test_valid_shapes_are_accepted(body: bytes, content_type: str, kind: str, type_: str) -> None:
    parsed = parse_payload(body, content_type)
    assert (parsed.kind, parsed.type) == (kind, type_)


def test_the_structure_bolt_gets_is_the_one_sent() -> None:
    """The checked structure is the body Slack sent: the form's fields, or the payload's JSON object."""
    payload = click()
    assert parse_payload(form_payload(payload), FORM).body == payload
    fields = parse_payload(slash_command_body("/help", "a&b=c", ALICE, "alice", "C1", URL), FORM).body
    assert fields["text"] == "a&b=c" and fields["command"] == "/help"


def test_malformed_payload_names_the_field() -> None:
    with pytest.raises(MalformedPayload) as exc:
        parse_payload(form_payload(click(user="U1")), FORM)
    assert exc.value.reason == "bad_field" and "payload.user" in exc.value.detail

