"""The webhook's gate: credentials, body limits and payload shape, over real HTTP."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select

from bot.core.alerts import simulate as sim
from bot.persistence.models import AlertGroup, AuditRecord
from tests.alerting import TOKEN, alert_bot, post_alert, slack, start_alert_bot
from tests.bot_server import RunningBot
from tests.harness.slack_api import FakeSlack

__all__ = ["alert_bot", "slack"]


def _payload() -> dict[str, object]:
    return sim.notification([sim.alert("HighErrorRate")])


def _count(bot: RunningBot, model: type, **where: object) -> int:
    with bot.container.db.read() as s:
        stmt = select(func.count()).select_from(model)
        for column, value in where.items():
            stmt = stmt.where(getattr(model, column) == value)
        return int(s.execute(stmt).scalar_one())


def _rejected(bot: RunningBot, reason: str) -> float:
    value = bot.container.metrics.registry.get_sample_value("chatops_alertmanager_rejected_total", {"reason": reason})
    return value or 0.0


def test_missing_or_wrong_token_is_401_counted_not_audited(alert_bot: RunningBot) -> None:
    """No credentials, a wrong token or another scheme: 401 with the reason, a counter, no audit record, no group."""
    audits = _count(alert_bot, AuditRecord)
    assert post_alert(alert_bot, _payload(), token=None).json()["reason"] == "no_credentials"
    wrong = post_alert(alert_bot, _payload(), token="nope")
    assert wrong.status_code == 401 and wrong.json()["reason"] == "bad_credentials"
    assert "Bearer" in wrong.headers["www-authenticate"]
    other = post_alert(alert_bot, _payload(), token=None, headers={"Authorization": f"Token {TOKEN}"})
    assert other.json()["reason"] == "bad_scheme"
    assert _rejected(alert_bot, "bad_credentials") == 1 and _rejected(alert_bot, "no_credentials") == 1
    assert _count(alert_bot, AuditRecord) == audits and _count(alert_bot, AlertGroup) == 0


def test_basic_auth_is_accepted_when_configured(slack: FakeSlack, tmp_path: Path) -> None:
    """Alertmanager's basic_auth http_config works instead of the bearer token; a wrong password does not."""
    bot = start_alert_bot(slack, tmp_path, alertmanager_username="am", alertmanager_password="s3cret")
    try:
        good = base64.b64encode(b"am:s3cret").decode()
        bad = base64.b64encode(b"am:guess").decode()
        assert post_alert(bot, _payload(), token=None, headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert post_alert(bot, _payload(), token=None, headers={"Authorization": f"Basic {good}"}).status_code == 200
    finally:
        bot.stop()


def test_without_configured_credentials_everything_is_refused(slack: FakeSlack, tmp_path: Path) -> None:
    """No token and no basic credentials configured: the webhook is closed (401 not_configured)."""
    bot = start_alert_bot(slack, tmp_path, alertmanager_token=None)
    try:
        response = post_alert(bot, _payload())
        assert response.status_code == 401 and response.json()["reason"] == "not_configured"
    finally:
        bot.stop()


def test_malformed_payloads_are_400_with_reason_and_audited(alert_bot: RunningBot) -> None:
    """Not JSON, the wrong version, a missing field, NaN: 400 naming the problem, one audit record each."""
    cases = {
        b"{not json": "invalid_json",
        json.dumps({**_payload(), "version": "3"}).encode(): "unsupported_version",
        json.dumps({k: v for k, v in _payload().items() if k != "groupKey"}).encode(): "invalid_payload",
        json.dumps(_payload()).replace('"truncatedAlerts": 0', '"truncatedAlerts": NaN').encode(): "invalid_json",
        json.dumps({**_payload(), "alerts": [{"status": "burning"}]}).encode(): "invalid_payload",
    }
    for body, reason in cases.items():
        response = post_alert(alert_bot, body)
        assert response.status_code == 400, body
        assert response.json()["reason"] == reason, (body, response.json())
    missing = post_alert(alert_bot, json.dumps({k: v for k, v in _payload().items() if k != "groupKey"}).encode())
    assert "groupKey" in missing.json()["detail"]
    assert _count(alert_bot, AuditRecord, action="alert.rejected") == len(cases) + 1
    assert _count(alert_bot, AlertGroup) == 0


def test_oversized_body_is_413_before_and_while_reading(alert_bot: RunningBot) -> None:
    """A declared Content-Length over the limit, and a chunked body that grows over it: 413 both times."""
    limit = alert_bot.container.settings.http_max_body_bytes
    declared = post_alert(alert_bot, b"x" * (limit + 1))
    assert declared.status_code == 413 and declared.json()["reason"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = alert_bot.client.post(f"{alert_bot.url}/alerts/alertmanager", content=chunks(),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert streamed.status_code == 413


def test_slow_body_times_out_with_408(slack: FakeSlack, tmp_path: Path) -> None:
    """A sender that stops half-way through its body gets 408 once the body timeout passes."""
    bot = start_alert_bot(slack, tmp_path, http_body_timeout_seconds=0.3)
    try:
        host, port = bot.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"POST /alerts/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"version\"")
            answer = conn.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408")
    finally:
        bot.stop()
