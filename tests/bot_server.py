"""The real bot (ASGI app under uvicorn, real sockets) wired to a FakeSlack, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bot.container import Container, build
from bot.http import create_app
from bot.settings import Settings
from tests.harness.signing import signed_headers, slash_command_body
from tests.harness.slack_api import DEFAULT_TOKEN, FakeSlack

SECRET = "test-signing-secret"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bot_settings(fake: FakeSlack, database_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": DEFAULT_TOKEN, "slack_signing_secret": SECRET, "slack_api_url": fake.base_url,
        "slack_response_url_prefixes": [fake.response_url("")], "database_url": database_url,
        "config": REPO / "chatops.example.yml", "shutdown_grace_seconds": 5,
    }
    values.update(extra)
    return Settings(**values)


@dataclass
class RunningBot:
    url: str
    fake: FakeSlack
    container: Container
    server: uvicorn.Server
    thread: threading.Thread
    client: httpx.Client

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(f"{self.url}/slack/events", content=body,
                                headers=headers if headers is not None else signed_headers(body, SECRET))

    def command(self, command: str, text: str, user: str, *, name: str = "r1", trigger_id: str | None = None,
                channel: str = "C0STAGING1") -> httpx.Response:
        names = {uid: n for n, uid in self.container.config.people.items()}
        body = slash_command_body(command, text, user, names.get(user, "someone"), channel,
                                  self.fake.response_url(name), trigger_id=trigger_id)
        return self.post(body)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until background tasks and the outbox are idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.container.writer.drain(0.2) and self.container.tasks.drain(0.2)
                    and self.container.worker.pending_due() == 0):
                return
            self.container.worker.wakeup.set()
        raise TimeoutError("bot did not settle")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.client.close()


def start_bot(fake: FakeSlack, database_url: str, *, prepare: Callable[[Container], Container] | None = None,
              port: int | None = None, **extra: Any) -> RunningBot:
    """`prepare` may adjust the container (e.g. faster simulated rollouts) before anything starts; `port`
    (default: a free one) lets a server started before the bot (an Alertmanager) be told where it is."""
    settings = bot_settings(fake, database_url, **extra)
    container = build(settings)
    if prepare is not None:
        container = prepare(container)
    container.db.upgrade()
    app = create_app(container)
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    client = httpx.Client(timeout=10)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.started:
            break
        time.sleep(0.01)
    else:
        raise TimeoutError("uvicorn did not start")
    return RunningBot(url, fake, container, server, thread, client)
