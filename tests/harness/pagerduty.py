"""A PagerDuty Events API v2 stand-in over real HTTP on 127.0.0.1, for integration tests.

``FakePagerDuty`` serves ``POST /v2/enqueue`` on a free loopback port in a daemon thread and checks each
event the way PagerDuty documents it: JSON object; ``routing_key`` one of the keys it was given (else 400
"Invalid routing key"); ``event_action`` trigger / acknowledge / resolve; a trigger needs
``payload.summary``, ``payload.source`` and ``payload.severity`` (critical, error, warning, info);
acknowledge and resolve need a ``dedup_key``. An accepted event is answered 202
``{"status": "success", "message": "Event processed", "dedup_key": ...}`` (a trigger without a key gets
one) and recorded in ``events``; refused and faulted requests are recorded in ``calls`` only.

Fault knobs: ``fail_next(n, status=503, retry_after=None)`` answers the next n requests with that status
(a ``Retry-After`` header for 429s); ``delay_next(n, seconds)`` holds the next n requests before
answering (to provoke client timeouts). ``wait_for(predicate, timeout)`` waits, on a condition variable,
until the recorded events satisfy ``predicate``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"
SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


@dataclass(frozen=True)
class Call:
    status: int
    body: Any
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakePagerDuty


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/v2/enqueue":
            self._answer(404, {"status": "not found"}, None)
            return
        delay, fault = fake._take_fault()
        if delay:
            fake._stop.wait(delay)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if fault is not None:
            status, retry_after = fault
            fake._record(Call(status, body))
            self._answer(status, {"status": "error", "message": "injected fault"}, retry_after)
            return
        status, answer = fake._accept(body)
        self._answer(status, answer, None)

    def _answer(self, status: int, body: dict[str, Any], retry_after: float | None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", f"{retry_after:g}")
        self.end_headers()
        self.wfile.write(data)


class FakePagerDuty:
    """The Events API v2 on 127.0.0.1; `url` is the base URL to configure (the client adds /v2/enqueue)."""

    def __init__(self, routing_keys: tuple[str, ...] = (DEFAULT_ROUTING_KEY,)) -> None:
        self.routing_keys = set(routing_keys)
        self.events: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self._faults: list[tuple[int, float | None]] = []
        self._delays: list[float] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-pagerduty", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakePagerDuty:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakePagerDuty:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs ------------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        with self._changed:
            self._faults.extend([(status, retry_after)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        with self._changed:
            self._delays.extend([seconds] * n)

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The events once `predicate(events)` holds; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self.events)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"PagerDuty stand-in: condition not met; events: {self.events}, "
                                         f"calls: {[c.status for c in self.calls]}")
                self._changed.wait(left)
            return list(self.events)

    def actions(self, dedup_key: str | None = None) -> list[str]:
        with self._changed:
            return [e["event_action"] for e in self.events if dedup_key is None or e.get("dedup_key") == dedup_key]

    # -- the server's side ------------------------------------------------------------------------
    def _take_fault(self) -> tuple[float, tuple[int, float | None] | None]:
        with self._changed:
            delay = self._delays.pop(0) if self._delays else 0.0
            fault = self._faults.pop(0) if self._faults else None
            return delay, fault

    def _record(self, call: Call, event: dict[str, Any] | None = None) -> None:
        with self._changed:
            self.calls.append(call)
            if event is not None:
                self.events.append(event)
            self._changed.notify_all()

    def _accept(self, body: Any) -> tuple[int, dict[str, Any]]:
        problems = _problems(body, self.routing_keys)
        if problems:
            self._record(Call(400, body))
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": problems}
        event = dict(body)
        event.setdefault("dedup_key", uuid.uuid4().hex)
        self._record(Call(202, body), event)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}


def _problems(body: Any, keys: set[str]) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    if body.get("routing_key") not in keys:
        return ["Invalid routing key"]
    action = body.get("event_action")
    if action not in ACTIONS:
        return [f"'event_action' must be one of {', '.join(ACTIONS)}"]
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        return ["'dedup_key' must be a string of at most 255 characters"]
    if action != "trigger":
        return [] if dedup else ["'dedup_key' is required for acknowledge and resolve"]
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    out = [f"'payload.{k}' is missing" for k in ("summary", "source") if not str(payload.get(k) or "").strip()]
    if payload.get("severity") not in SEVERITIES:
        out.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
    return out
