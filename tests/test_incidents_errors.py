"""/incident's bad input and refusals: each is a clear ephemeral message with the usage where it helps, and an
audit record with its outcome; nothing is created."""

# ruff: noqa: F811  - fixtures imported from the support modules are test parameters here

from __future__ import annotations

import pytest

from tests.test_incidents_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    ERIN,
    Responder,
    db_url,
    oncall_slack,
    responder,
)

BAD_INPUT = [
    ("", "missing ACTION"),
    ("frobnicate", "'frobnicate' is not one of declare, status, note, timeline, resolve, list"),
    ("decalre x", "did you mean declare?"),
    ("declare", "/incident declare needs a title"),
    ("declare outage --sev 7", "--sev: must be a whole number from 1 to 4"),
    ("declare outage --sev one", "--sev: 'one' is not a whole number"),
    ("declare outage --env moon", "unknown environment 'moon'"),
    ("declare outage --id 3", "/incident declare takes no --id"),
    ("timeline --sev 1", "/incident timeline takes no --sev"),
    ("list everything", "/incident list takes no text"),
    ("status", "/incident status needs some text"),
    ("resolve --id banana", "'banana' is not an incident id"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUT)
def test_bad_input_is_a_usage_error_with_the_usage(responder: Responder, text: str, expected: str) -> None:
    """Each malformed /incident names its problem, shows the usage and is audited as usage_error."""
    reply = responder.incident(text)
    assert expected.replace("'", "") in reply.replace("'", "").replace("&#x27;", ""), reply
    assert "Usage: `/incident ACTION" in reply
    record = responder.d.audit("command.incident")[-1]
    assert record["outcome"] == "usage_error" and record["args"]["text"] == text
    assert responder.incidents() == []


def test_outside_an_incident_channel_an_id_is_needed(responder: Responder) -> None:
    """A subcommand run in an ordinary channel without --id says how to name the incident."""
    responder.declare()
    reply = responder.incident("note hello", ALICE)
    assert "this is not an incident channel" in reply and "--id INC-N" in reply
    assert responder.d.audit("command.incident")[-1]["outcome"] == "usage_error"


def test_an_unknown_incident_is_not_found(responder: Responder) -> None:
    """--id of an incident that does not exist: not_found, and where to look."""
    reply = responder.incident("resolve --id INC-999")
    assert "no incident INC-999" in reply and "/incident list" in reply
    assert responder.d.audit("command.incident")[-1]["outcome"] == "not_found"


def test_only_operators_declare_and_the_refusal_is_audited(responder: Responder) -> None:
    """alice deploys but does not operate staging: declaring is refused at once, naming the role."""
    reply = responder.incident('declare "not mine" --env staging', ALICE)
    assert "alice may not declare an incident in staging" in reply and "*operator* role in `staging`" in reply
    record = responder.d.audit("command.incident")[-1]
    assert record["outcome"] == "denied" and record["environment"] == "staging"
    assert responder.incidents() == [] and responder.fake.calls_to("conversations.create") == []


def test_status_and_resolve_need_an_operator_notes_any_role(responder: Responder) -> None:
    """In the incident's channel: alice (deployer) may add notes but not post status or resolve; bob (no role in
    staging) may do nothing there; someone without any role may not even list; each refusal is audited as
    denied and changes nothing."""
    incident_id = responder.declare()
    channel = responder.channel(incident_id)
    assert "may not post status updates of INC-" in responder.incident("status all good", ALICE, channel=channel)
    assert "may not resolve INC-" in responder.incident("resolve", ALICE, channel=channel)
    assert "may not add notes to INC-" in responder.incident("note hi", BOB, channel=channel)
    assert "may not read the timeline of INC-" in responder.incident("timeline", BOB, channel=channel)
    assert "may not see incidents" in responder.incident("list", "U0NOBODY1")  # no role anywhere
    assert f"INC-{incident_id}" not in responder.incident("list", BOB)  # bob sees production only
    outcomes = [r["outcome"] for r in responder.d.audit("command.incident")][-6:]
    assert outcomes == ["denied"] * 5 + ["ok"]
    assert responder.row(incident_id).status == "open"
    assert responder.d.audit("incident.status") == [] and responder.d.audit("incident.note") == []
