"""Secret redaction of audit args and log lines: secrets by key name and by shape, the rest untouched."""

from __future__ import annotations

import pytest

from bot.core.redact import REDACTED, redact, redact_text

SLACK_BOT_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"
SLACK_APP_TOKEN = "xapp-1-A0123456789-1234567890-abcdef0123"


@pytest.mark.parametrize("key", ["token", "password", "api_key", "apiKey", "API-KEY", "client_secret",
                                 "Authorization", "db_passwd", "private_key", "session_id", "cookie"])
def test_secret_keys_are_redacted(key: str) -> None:
    """A value under a secret-sounding key is replaced, whatever it looks like."""
    assert redact({key: "plain-looking-value"}) == {key: REDACTED}


@pytest.mark.parametrize("empty", [None, "", False])
def test_empty_secret_values_stay_visible(empty: object) -> None:
    """An unset secret stays unset, so the record shows that nothing was given."""
    assert redact({"token": empty}) == {"token": empty}


def test_non_secret_keys_and_values_are_untouched() -> None:
    """Ordinary args keep their values and types."""
    args = {"command": "/deploy", "version": "v2.3", "env": "production", "canary": True, "limit": 10,
            "reason": "fix the fills before the open"}
    assert redact(args) == args


def test_slack_bot_token_in_free_text_is_redacted() -> None:
    """An xoxb- token pasted into a reason is removed and the surrounding words kept."""
    assert redact_text(f"oops pasted {SLACK_BOT_TOKEN} here") == f"oops pasted {REDACTED} here"


def test_slack_app_token_in_free_text_is_redacted() -> None:
    """An xapp- app-level token in text is removed."""
    assert redact_text(f"app token {SLACK_APP_TOKEN}.") == f"app token {REDACTED}."


def test_secret_shaped_value_under_an_ordinary_key_is_redacted() -> None:
    """Values are checked by shape even when the key gives nothing away."""
    assert redact({"text": f"--reason {SLACK_BOT_TOKEN}"}) == {"text": f"--reason {REDACTED}"}


def test_url_password_is_redacted_and_user_kept() -> None:
    """`scheme://user:password@host` keeps the user and host, hides the password."""
    assert (redact_text("db is postgresql://chatops:s3cr3t@db.internal:5432/chatops")
            == f"db is postgresql://chatops:{REDACTED}@db.internal:5432/chatops")


@pytest.mark.parametrize(("text", "expected"), [
    ("set password=hunter2 now", f"set password={REDACTED} now"),
    ("api_key: abc123, then", f"api_key: {REDACTED}, then"),
    ("DB_PASSWORD = pa55", f"DB_PASSWORD = {REDACTED}"),
    ("x&client_secret=zzz&y=1", f"x&client_secret={REDACTED}&y=1"),
])
def test_inline_assignment_is_redacted(text: str, expected: str) -> None:
    """`password=...`, `api_key: ...` and friends in free text lose their value only."""
    assert redact_text(text) == expected


def test_nested_dicts_and_lists_are_redacted() -> None:
    """Redaction walks dicts inside lists inside dicts."""
    args = {"parsed": {"env": "staging", "auth": {"token": "t0k"}},
            "steps": [{"name": "login", "password": "pw"}, f"used {SLACK_BOT_TOKEN}"],
            "tags": ("a", "b")}
    assert redact(args) == {"parsed": {"env": "staging", "auth": REDACTED},
                            "steps": [{"name": "login", "password": REDACTED}, f"used {REDACTED}"],
                            "tags": ["a", "b"]}


def test_redact_does_not_modify_its_input() -> None:
    """The caller's dict still holds the secret after redaction (a copy is returned)."""
    args = {"token": "t0k", "inner": {"password": "pw"}}
    redact(args)
    assert args == {"token": "t0k", "inner": {"password": "pw"}}


def test_private_key_block_is_redacted() -> None:
    """A PEM private key pasted in text disappears entirely."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAKC\n-----END RSA PRIVATE KEY-----"
    assert redact_text(f"key:\n{pem}\nend") == f"key:\n{REDACTED}\nend"


@pytest.mark.parametrize("text", [
    "/deploy v2.3 --env production --canary --reason \"fix fills\"",
    "see https://grafana.example.com/d/abc?orgId=1",
    "rolled back to v2.2.9-rc.1 after 5xx spike",
    "the tokenizer handles quotes",
])
def test_ordinary_text_is_untouched(text: str) -> None:
    """Commands, plain URLs and prose without secrets pass through unchanged."""
    assert redact_text(text) == text


def test_dotted_identifier_is_not_mistaken_for_a_vault_token() -> None:
    """`values.prometheusOperatorEndpoint` is a Helm values path, not a secret."""
    text = "check values.prometheusOperatorEndpoint before the deploy"
    assert redact_text(text) == text
