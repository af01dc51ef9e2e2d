"""Self-tests for the test harness: fake Slack API, request signing and throwaway PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier

from . import postgres, signing
from .slack_api import BOT_ID, BOT_USER_ID, DEFAULT_TOKEN, FakeSlack

SECRET = "test-signing-secret"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(users={"U1": "alice", "U2": "bob"}, usergroups={"S1": ["U1", "U2"]},
                   channels={"C1": "ops", "C2": "alerts"}) as server:
        yield server


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token=DEFAULT_TOKEN, base_url=fake.base_url)


def _post(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------------- fake Slack: lifecycle & auth
def test_base_url_is_local_and_ends_with_slash(fake: FakeSlack) -> None:
    """base_url points at 127.0.0.1 on the bound port and ends in /api/."""
    assert fake.base_url == f"http://127.0.0.1:{fake.port}/api/"


def test_stop_closes_the_socket() -> None:
    """After stop() the port no longer accepts connections."""
    server = FakeSlack().start()
    port = server.port
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_auth_test_returns_bot_identity(client: WebClient) -> None:
    """auth.test answers with the team, bot user and bot ids."""
    resp = client.auth_test()
    assert (resp["team_id"], resp["user_id"], resp["bot_id"]) == ("T0TEST", BOT_USER_ID, BOT_ID)


def test_wrong_token_is_invalid_auth(fake: FakeSlack) -> None:
    """A wrong bearer token is answered with ok:false invalid_auth over HTTP 200."""
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()
    assert (err.value.response.status_code, err.value.response["error"]) == (200, "invalid_auth")


def test_missing_token_is_invalid_auth(fake: FakeSlack) -> None:
    """A request without Authorization is answered with invalid_auth."""
    body = _post(fake.base_url + "auth.test", b"", {"Content-Type": "application/x-www-form-urlencoded"})
    assert body == {"ok": False, "error": "invalid_auth"}


def test_unknown_method(client: WebClient) -> None:
    """Methods the fake does not implement answer unknown_method."""
    with pytest.raises(SlackApiError) as err:
        client.api_call("pins.add", params={"channel": "C1"})
    assert err.value.response["error"] == "unknown_method"


# ---------------------------------------------------------------------- fake Slack: chat
def test_post_message_returns_channel_ts_and_message(client: WebClient) -> None:
    """chat.postMessage echoes the channel, a ts and the message."""
    resp = client.chat_postMessage(channel="C1", text="hello")
    message = resp["message"]
    assert (resp["channel"], message["text"], message["ts"]) == ("C1", "hello", resp["ts"])


def test_post_message_ts_is_unique_and_increasing(client: WebClient) -> None:
    """Successive messages get strictly increasing Slack-style ts values."""
    tss = [client.chat_postMessage(channel="C1", text=str(i))["ts"] for i in range(3)]
    assert tss == sorted(tss, key=float) and len(set(tss)) == 3 and tss[0].startswith("1700000000.")


def test_post_message_is_stored(fake: FakeSlack, client: WebClient) -> None:
    """Posted text and blocks are readable via message(channel, ts)."""
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    ts = client.chat_postMessage(channel="C1", text="hi", blocks=blocks)["ts"]
    assert fake.message("C1", ts)["blocks"] == blocks


def test_post_message_resolves_channel_name(client: WebClient) -> None:
    """A #name channel is resolved to its id."""
    assert client.chat_postMessage(channel="#alerts", text="x")["channel"] == "C2"


def test_update_replaces_text(fake: FakeSlack, client: WebClient) -> None:
    """chat.update changes the stored message text."""
    ts = client.chat_postMessage(channel="C1", text="before")["ts"]
    client.chat_update(channel="C1", ts=ts, text="after")
    assert fake.message("C1", ts)["text"] == "after"


def test_update_unknown_message(client: WebClient) -> None:
    """chat.update on an unknown (channel, ts) answers message_not_found."""
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.000001", text="x")
    assert err.value.response["error"] == "message_not_found"


def test_post_ephemeral_returns_message_ts(fake: FakeSlack, client: WebClient) -> None:
    """chat.postEphemeral returns message_ts and records the ephemeral."""
    resp = client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    assert fake.ephemerals[0]["message_ts"] == resp["message_ts"]


def test_form_body_blocks_are_decoded(fake: FakeSlack) -> None:
    """Form-encoded blocks (a JSON string) are recorded as decoded JSON."""
    blocks = [{"type": "divider"}]
    body = f"channel=C1&blocks={json.dumps(blocks)}".encode()
    _post(fake.base_url + "chat.postMessage", body,
          {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Content-Type": "application/x-www-form-urlencoded"})
    assert fake.calls_to("chat.postMessage")[0].params["blocks"] == blocks


# ---------------------------------------------------------------------- fake Slack: other methods
def test_views_publish_stores_view(fake: FakeSlack, client: WebClient) -> None:
    """views.publish stores the home view per user."""
    client.views_publish(user_id="U1", view={"type": "home", "blocks": []})
    assert fake.views["U1"]["type"] == "home"


def test_users_info_known_user(client: WebClient) -> None:
    """users.info returns the configured user name."""
    assert client.users_info(user="U1")["user"]["name"] == "alice"


def test_users_info_unknown_user(client: WebClient) -> None:
    """users.info for an unknown id answers user_not_found."""
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U404")
    assert err.value.response["error"] == "user_not_found"


def test_usergroup_users_list(client: WebClient) -> None:
    """usergroups.users.list returns the configured members."""
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]


def test_conversations_info_and_list(client: WebClient) -> None:
    """conversations.info/list describe the configured channels."""
    names = [c["name"] for c in client.conversations_list()["channels"]]
    assert client.conversations_info(channel="C1")["channel"]["name"] == "ops" and names == ["ops", "alerts"]


def test_conversations_join_adds_bot_to_members(client: WebClient) -> None:
    """conversations.join makes the bot a member of the channel."""
    client.conversations_join(channel="C2")
    assert BOT_USER_ID in client.conversations_members(channel="C2")["members"]


# ---------------------------------------------------------------------- fake Slack: recording & waiting
def test_calls_are_recorded_with_headers(fake: FakeSlack, client: WebClient) -> None:
    """Each call records method, params and headers."""
    client.chat_postMessage(channel="C1", text="x")
    call = fake.calls[-1]
    assert (call.method, call.params["text"], call.header("authorization")) == (
        "chat.postMessage", "x", f"Bearer {DEFAULT_TOKEN}")


def test_wait_for_sees_call_from_other_thread(fake: FakeSlack, client: WebClient) -> None:
    """wait_for blocks until a call made by another thread arrives."""
    worker = threading.Thread(target=lambda: client.chat_postMessage(channel="C1", text="bg"))
    worker.start()
    calls = fake.wait_for(lambda c: c.method == "chat.postMessage" and c.params.get("text") == "bg")
    worker.join()
    assert len(calls) == 1


def test_wait_for_times_out(fake: FakeSlack) -> None:
    """wait_for raises TimeoutError when nothing matching arrives."""
    with pytest.raises(TimeoutError):
        fake.wait_for("chat.postMessage", timeout=0.1)


def test_response_url_post_is_recorded(fake: FakeSlack) -> None:
    """JSON POSTed to response_url(name) is recorded in responses."""
    _post(fake.response_url("cmd1"), b'{"text": "done"}', {"Content-Type": "application/json"})
    assert fake.wait_for_response("cmd1")[0].body == {"text": "done"}


def test_reset_forgets_state(fake: FakeSlack, client: WebClient) -> None:
    """reset() clears calls and messages."""
    client.chat_postMessage(channel="C1", text="x")
    fake.reset()
    assert fake.calls == [] and fake.messages == {}


# ---------------------------------------------------------------------- fake Slack: fault injection
def test_rate_limit_is_seen_by_web_client(fake: FakeSlack, client: WebClient) -> None:
    """An injected 429 surfaces as SlackApiError with status 429 and Retry-After."""
    fake.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "7"


def test_fault_applies_only_times(fake: FakeSlack, client: WebClient) -> None:
    """After the injected fault is used up the method succeeds again."""
    fake.fail_next("chat.postMessage")
    with pytest.raises(SlackApiError):
        client.chat_postMessage(channel="C1", text="x")
    assert client.chat_postMessage(channel="C1", text="x")["ok"]


def test_server_errors_then_success_with_retry_handler(fake: FakeSlack) -> None:
    """Two injected 503s are retried by ServerErrorRetryHandler, then the call succeeds."""
    fake.fail_next("chat.postMessage", status=503, times=2)
    no_wait = FixedValueRetryIntervalCalculator(0)
    handler = ServerErrorRetryHandler(max_retry_count=2, interval_calculator=no_wait)
    client = WebClient(token=DEFAULT_TOKEN, base_url=fake.base_url, retry_handlers=[handler])
    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    assert [c.status for c in fake.calls_to("chat.postMessage")] == [503, 503, 200]


def test_server_error_raises_without_retries(fake: FakeSlack, client: WebClient) -> None:
    """An injected 503 surfaces as SlackApiError with status 503."""
    fake.fail_next("chat.update", status=503)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.1", text="x")
    assert err.value.response.status_code == 503


def test_error_injection_answers_ok_false(fake: FakeSlack, client: WebClient) -> None:
    """fail_next(error=...) answers ok:false with that error over HTTP 200."""
    fake.fail_next("chat.postMessage", error="channel_not_found")
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x")
    assert (err.value.response.status_code, err.value.response["error"]) == (200, "channel_not_found")


def test_faulted_calls_are_flagged(fake: FakeSlack, client: WebClient) -> None:
    """Faulted calls are recorded with faulted=True."""
    fake.fail_next("auth.test", error="fatal_error")
    with pytest.raises(SlackApiError):
        client.auth_test()
    client.auth_test()
    assert [c.faulted for c in fake.calls_to("auth.test")] == [True, False]


# ---------------------------------------------------------------------- signing
def test_sign_verifies_with_slack_sdk() -> None:
    """sign() output passes slack_sdk's SignatureVerifier."""
    body = signing.slash_command_body("/swarm", "status", "U1", "alice", "C1", "http://x/response/a")
    assert SignatureVerifier(SECRET).is_valid_request(body, signing.sign(body, SECRET))


def test_sign_with_wrong_secret_fails_verification() -> None:
    """A signature made with another secret is rejected."""
    body = signing.event_body({"type": "app_mention", "text": "hi"})
    assert not SignatureVerifier(SECRET).is_valid_request(body, signing.sign(body, "other"))


def test_stale_timestamp_fails_verification() -> None:
    """A timestamp older than five minutes is rejected."""
    body = b"x=1"
    headers = signing.sign(body, SECRET, timestamp=1_600_000_000)
    assert not SignatureVerifier(SECRET).is_valid_request(body, headers)


def test_slash_command_body_fields() -> None:
    """The slash-command body carries the fields Slack sends."""
    raw = signing.slash_command_body("/swarm", "halt all", "U1", "alice", "C1", "http://r")
    body = parse_qs(raw.decode())
    expected = {"token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name",
                "command", "text", "api_app_id", "response_url", "trigger_id"}
    assert expected <= body.keys() and body["text"] == ["halt all"]


def test_trigger_ids_are_unique() -> None:
    """Default trigger ids differ between calls."""
    bodies = [parse_qs(signing.slash_command_body("/s", "", "U1", "a", "C1", "r").decode()) for _ in range(2)]
    assert bodies[0]["trigger_id"] != bodies[1]["trigger_id"]


def test_block_actions_body_payload() -> None:
    """block_actions_body encodes a payload with the action, container and response_url."""
    body = signing.block_actions_body("approve", "yes", "U1", "C1", "1700000000.000100", "http://r")
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert (payload["type"], payload["actions"][0]["action_id"], payload["container"]["message_ts"]) == (
        "block_actions", "approve", "1700000000.000100")


def test_event_body_envelope() -> None:
    """event_body wraps the event in an event_callback envelope."""
    envelope = json.loads(signing.event_body({"type": "app_mention"}, event_id="Ev1"))
    assert (envelope["type"], envelope["event_id"], envelope["event"]["type"]) == (
        "event_callback", "Ev1", "app_mention")


def test_bolt_app_accepts_signed_slash_command(fake: FakeSlack) -> None:
    """A Bolt app verifies a signed slash command and its respond() reaches the fake response_url."""
    from slack_bolt import App
    from slack_bolt.request import BoltRequest

    app = App(signing_secret=SECRET, client=WebClient(token=DEFAULT_TOKEN, base_url=fake.base_url))

    @app.command("/swarm")
    def _swarm(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        ack()
        respond(f"status for {command['user_name']}")

    body = signing.slash_command_body("/swarm", "status", "U1", "alice", "C1", fake.response_url("swarm"))
    resp = app.dispatch(BoltRequest(body=body.decode(), headers=signing.signed_headers(body, SECRET)))
    assert resp.status == 200
    assert fake.wait_for_response("swarm")[0].body["text"] == "status for alice"


# ---------------------------------------------------------------------- postgres
needs_pg = pytest.mark.skipif(postgres.find_pg_bindir() is None, reason="no PostgreSQL binaries")


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    if postgres.find_pg_bindir() is None:
        pytest.skip("no PostgreSQL binaries")
    with postgres.PostgresServer() as server:
        yield server


def _select_one(url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text("SELECT 1")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_select_one(pg: postgres.PostgresServer) -> None:
    """The throwaway cluster answers SELECT 1 through SQLAlchemy + psycopg."""
    assert pg.url.startswith("postgresql+psycopg://") and _select_one(pg.url) == 1


@pytest.mark.postgres
def test_postgres_create_database(pg: postgres.PostgresServer) -> None:
    """create_database returns a URL to a new, usable database."""
    assert _select_one(pg.create_database("harness_extra")) == 1


@pytest.mark.postgres
@needs_pg
def test_postgres_stops_cleanly() -> None:
    """stop() shuts the server down, frees the port and removes the data dir."""
    server = postgres.PostgresServer().start()
    port, tmpdir = server.port, server.tmpdir
    assert port is not None and tmpdir is not None
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert not Path(tmpdir).exists()


def test_env_url_wins_and_is_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHATOPS_TEST_DATABASE_URL is used as-is, with the psycopg dialect added."""
    monkeypatch.setenv(postgres.ENV_URL, "postgresql://u@db:5432/x")
    assert postgres.postgres_url_or_skip_reason() == ("postgresql+psycopg://u@db:5432/x", None)
