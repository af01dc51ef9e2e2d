"""A fake Slack Socket Mode endpoint: a websocket server on 127.0.0.1 that sends envelopes and
collects the app's acknowledgements, the way Slack's Socket Mode does.

    with FakeSlack() as fake, FakeSocketMode(fake, app_token="xapp-1-test") as sm:
        ...start the app in Socket Mode against fake.base_url...
        sm.wait_connected()
        ack = sm.send("slash_commands", {...form fields as JSON...})
        assert ack["payload"]["text"]...
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from .slack_api import FakeSlack


class FakeSocketMode:
    def __init__(self, fake: FakeSlack, *, app_token: str = "xapp-1-test") -> None:
        self.fake = fake
        self.app_token = app_token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="FakeSocketMode", daemon=True)
        self._conn: ServerConnection | None = None
        self._connected = threading.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._server: Any = None
        self.port = 0

    def start(self) -> FakeSocketMode:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.fake.app_token = self.app_token
        self.fake.socket_mode_url = f"ws://127.0.0.1:{self.port}/link"
        return self

    async def _start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handler(self, conn: ServerConnection) -> None:
        self._conn = conn
        await conn.send(json.dumps({"type": "hello", "num_connections": 1,
                                    "connection_info": {"app_id": "A0TEST"}}))
        self._connected.set()
        async for raw in conn:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            future = self._acks.get(msg.get("envelope_id", ""))
            if future is not None and not future.done():
                future.set_result(msg)

    def wait_connected(self, timeout: float = 10.0) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError("the app never connected over Socket Mode")

    def send(self, kind: str, payload: dict[str, Any], *, timeout: float = 5.0,
             retry_attempt: int = 0) -> dict[str, Any]:
        """Send one envelope (slash_commands | interactive | events_api) and return the app's ack."""
        envelope_id = str(uuid.uuid4())

        async def _send() -> dict[str, Any]:
            future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
            self._acks[envelope_id] = future
            assert self._conn is not None
            await self._conn.send(json.dumps({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                              "accepts_response_payload": kind != "events_api",
                                              "retry_attempt": retry_attempt, "retry_reason": ""}))
            return await asyncio.wait_for(future, timeout)

        return asyncio.run_coroutine_threadsafe(_send(), self._loop).result(timeout + 1)

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
