"""Shared parts of the alert tests: a rate-limiting fake Slack, the bot with alert intake, a real Alertmanager.

Fixtures (import them into a test module, or use the helpers directly):

* `alert_bot` — the real bot (uvicorn, SQLite) with `CHATOPS_ALERTMANAGER_TOKEN` = `TOKEN`;
* `alertmanager` — a factory: `alertmanager(bot_url)` starts a real Alertmanager whose webhook
  receiver posts to that bot with the bearer token (skips without the binary, fails under CI);
* `pagerduty` — the PagerDuty Events API v2 stand-in;
* `alertmanager_api` — one real Alertmanager per test module that delivers nowhere, for its API
  (silences) alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.bot_server import REPO, RunningBot, start_bot
from tests.harness.alertmanager import AlertmanagerServer, require_alertmanager
from tests.harness.pagerduty import FakePagerDuty
from tests.harness.slack_api import Call, FakeSlack, _Reply
from tests.test_deploy_support import wait_until

__all__ = ["wait_until"]  # polling a condition the bot's background work makes true: one helper for all tests

TOKEN = "am-test-token"
ALICE, DAVE, ROOT = "U0ALICE01", "U0DAVE004", "U0ROOT006"
STAGING_INCIDENT, PROD_INCIDENT, ALERTS = "C0STAGEINC", "C0PRODINC1", "C0ALERTS01"


class RateLimitedSlack(FakeSlack):
    """FakeSlack that allows `per_second` chat.postMessage/chat.update calls per channel in any second
    and answers the rest 429 with `Retry-After` (seconds until a slot frees, as a decimal)."""

    METHODS = ("chat.postMessage", "chat.update")

    def __init__(self, per_second: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_second = per_second
        self._sent: dict[str, list[float]] = {}
        self.limited = 0

    def _handle_api(self, method: str, verb: str, query: str, raw: bytes, headers: dict[str, str]) -> _Reply:
        if method in self.METHODS:
            try:
                channel = str(json.loads(raw.decode() or "{}").get("channel", ""))
            except ValueError:
                channel = ""
            if not channel:
                from urllib.parse import parse_qsl

                channel = dict(parse_qsl(raw.decode(errors="replace"))).get("channel", "")
            now = time.monotonic()
            with self._cond:
                recent = [t for t in self._sent.get(channel, []) if now - t < 1.0]
                if len(recent) >= self.per_second:
                    wait = max(0.05, 1.0 - (now - recent[0]))
                    self.limited += 1
                    self.calls.append(Call(method, {"channel": channel}, headers, time.time(), faulted=True,
                                           status=429, response={"ok": False, "error": "ratelimited"}, verb=verb))
                    self._cond.notify_all()
                    self._sent[channel] = recent
                    return _Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": f"{wait:.2f}"})
                recent.append(now)
                self._sent[channel] = recent
        return super()._handle_api(method, verb, query, raw, headers)


def alert_config(tmp_path: Path, **alerts: Any) -> Path:
    """The example config with an `alerts:` section (default channel `ALERTS` plus `alerts`)."""
    data = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    data["alerts"] = {"channel": ALERTS, **data.get("alerts", {}), **alerts}
    path = tmp_path / "chatops.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_alert_bot(fake: FakeSlack, tmp_path: Path, *, config: Path | None = None, db: str = "bot.db",
                    **extra: Any) -> RunningBot:
    extra.setdefault("alertmanager_token", TOKEN)
    return start_bot(fake, f"sqlite:///{tmp_path}/{db}", config=config or alert_config(tmp_path), **extra)


def post_alert(bot: RunningBot, payload: dict[str, Any] | bytes, *, token: str | None = TOKEN,
               headers: dict[str, str] | None = None) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
            **(headers or {})}
    return bot.client.post(f"{bot.url}/alerts/alertmanager", content=body, headers=sent)


def roots(fake: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages_in(channel) if not m.get("thread_ts")]


def thread(fake: FakeSlack, channel: str, ts: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages_in(channel) if m.get("thread_ts") == ts]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API on a real socket."""
    with FakeSlack(users={ALICE: "alice", DAVE: "dave", ROOT: "root"}) as fake:
        yield fake


@pytest.fixture
def alert_bot(slack: FakeSlack, tmp_path: Path) -> Iterator[RunningBot]:
    """The real bot over HTTP with alert intake (bearer `TOKEN`), its default alerts channel `ALERTS`."""
    running = start_alert_bot(slack, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    """A PagerDuty Events API v2 stand-in over real HTTP."""
    with FakePagerDuty() as fake:
        yield fake


@pytest.fixture(scope="module")
def alertmanager_api() -> Iterator[AlertmanagerServer]:
    """A real Alertmanager whose receiver delivers nowhere: where the Silence buttons' silences go."""
    with AlertmanagerServer(binary=require_alertmanager()) as server:
        yield server


@pytest.fixture
def alertmanager() -> Iterator[Callable[..., AlertmanagerServer]]:
    """Factory: `alertmanager(bot_url, token=TOKEN, **options)` → a started real Alertmanager posting to the bot."""
    binary = require_alertmanager()
    started: list[AlertmanagerServer] = []

    def start(bot_url: str, token: str = TOKEN, **options: Any) -> AlertmanagerServer:
        server = AlertmanagerServer(f"{bot_url}/alerts/alertmanager", token=token, binary=binary, **options)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()
