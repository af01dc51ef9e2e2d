"""A fake trading admin API (and its health endpoints) over real HTTP on 127.0.0.1, for integration tests.

``FakeTradingApi`` serves, on a free loopback port in a daemon thread:

* ``POST /admin/trading/stop`` {"reason"}, ``POST /admin/trading/start`` {"fraction"},
  ``GET /admin/trading/status``, ``POST /admin/maintenance`` {"enabled"} -- all require
  ``X-API-Key: <api_key>`` (else 401 {"error": "invalid API key"}); bad bodies get 400 {"error": ...};
* ``GET /health`` and ``GET /health/detailed`` (no key), answering settable bodies;
* anything else: 404.

Every request is recorded as a :class:`Call` (faulted ones too). Fault knobs: ``fail_next(n, status)``
answers the next n requests with that status; ``delay_next(n, seconds)`` holds the next n requests
before answering (to provoke client timeouts); ``respond_raw(path, status, body, content_type)`` pins a
raw answer for a path (non-JSON bodies and the like).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

DEFAULT_API_KEY = "test-admin-key-5f3c9a"
HEALTHY = {"status": "healthy", "timestamp": "2025-10-15T17:37:53Z"}
HEALTHY_DETAILED = {"status": "healthy", "components": {"database": "OK", "cache": "OK",
                                                         "message_queue": "OK", "external_apis": "OK"}}
_POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class Call:
    """One recorded request."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass(frozen=True)
class _Raw:
    status: int
    body: bytes
    content_type: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeTradingApi


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        status, payload = self.server.fake._serve(method, path, dict(self.headers.items()), raw)
        if isinstance(payload, _Raw):
            body, ctype = payload.body, payload.content_type
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


class FakeTradingApi:
    """The swarm's admin API with state (trading, active/total bots, maintenance) and fault knobs."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, total_bots: int = 20) -> None:
        self.api_key = api_key
        self.total_bots = total_bots
        self.trading = True
        self.active_bots = total_bots
        self.maintenance = False
        self.last_reason: str | None = None
        self.calls: list[Call] = []
        self.health: tuple[int, Any] = (200, dict(HEALTHY))
        self.health_detailed: tuple[int, Any] = (200, json.loads(json.dumps(HEALTHY_DETAILED)))
        self._raw: dict[str, _Raw] = {}
        self._faults: deque[int] = deque()
        self._delays: deque[float] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FakeTradingApi:
        if self._server is None:
            self._stopping.clear()
            server = _Server(("127.0.0.1", 0), _Handler)
            server.fake = self
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever,
                                            kwargs={"poll_interval": _POLL_INTERVAL},
                                            name="FakeTradingApi", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._stopping.set()  # releases delayed handlers
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeTradingApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- knobs ----------------------------------------------------------------------------------------

    def set_health(self, body: Any, status: int = 200) -> None:
        """What `GET /health` answers (a JSON value)."""
        with self._lock:
            self.health = (status, body)

    def set_health_detailed(self, body: Any, status: int = 200) -> None:
        with self._lock:
            self.health_detailed = (status, body)

    def set_unhealthy(self, status_text: str = "degraded", http_status: int = 200) -> None:
        """`/health` answers {"status": status_text}."""
        self.set_health({"status": status_text}, http_status)

    def respond_raw(self, path: str, status: int, body: str | bytes, content_type: str = "text/html") -> None:
        """Pin a raw answer for `path` (any method), bypassing the normal handling."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._raw[path] = _Raw(status, data, content_type)

    def fail_next(self, times: int = 1, status: int = 500) -> None:
        with self._lock:
            self._faults.extend([status] * times)

    def delay_next(self, times: int = 1, seconds: float = 1.0) -> None:
        with self._lock:
            self._delays.extend([seconds] * times)

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    # -- serving --------------------------------------------------------------------------------------

    def _serve(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        with self._lock:
            delay = self._delays.popleft() if self._delays else 0.0
        if delay:
            self._stopping.wait(delay)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            status, payload = self._route(method, path, headers, body)
            self.calls.append(Call(method, path, headers, body, status))
            return status, payload

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if self._faults:
            status = self._faults.popleft()
            return status, {"error": f"simulated fault {status}"}
        if path in self._raw:
            raw = self._raw[path]
            return raw.status, raw
        if method == "GET" and path == "/health":
            return self.health
        if method == "GET" and path == "/health/detailed":
            return self.health_detailed
        if not path.startswith("/admin/"):
            return 404, {"error": f"no route {method} {path}"}
        key = next((v for k, v in headers.items() if k.lower() == "x-api-key"), None)
        if key != self.api_key:
            return 401, {"error": "invalid API key"}
        route = (method, path)
        if route == ("GET", "/admin/trading/status"):
            return 200, {"trading": self.trading, "active_bots": self.active_bots,
                         "total_bots": self.total_bots, "maintenance": self.maintenance,
                         "last_reason": self.last_reason}
        if not isinstance(body, dict):
            return 400, {"error": "expected a JSON object body"}
        if route == ("POST", "/admin/trading/stop"):
            if not isinstance(body.get("reason"), str) or not body["reason"].strip():
                return 400, {"error": "reason is required"}
            self.trading, self.active_bots, self.last_reason = False, 0, body["reason"]
            return 200, {"ok": True, "trading": False}
        if route == ("POST", "/admin/trading/start"):
            fraction = body.get("fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                return 400, {"error": f"fraction must be in (0, 1], got {fraction!r}"}
            if self.maintenance:
                return 409, {"error": "maintenance mode is on; disable it before starting trading"}
            self.trading = True
            self.active_bots = max(1, math.ceil(fraction * self.total_bots))
            return 200, {"ok": True, "active_bots": self.active_bots}
        if route == ("POST", "/admin/maintenance"):
            if not isinstance(body.get("enabled"), bool):
                return 400, {"error": "enabled must be a boolean"}
            self.maintenance = body["enabled"]
            return 200, {"ok": True, "maintenance": self.maintenance}
        return 404, {"error": f"no route {method} {path}"}
