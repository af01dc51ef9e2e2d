"""A fake trading admin API (and its health endpoints) over real HTTP on 127.0.0.1, for integration tests.

``FakeTradingApi`` serves, on a free loopback port in a daemon thread:

* ``POST /admin/trading/stop`` {"reason", "mode"?}, ``POST /admin/trading/start`` {"fraction"},
  ``GET /admin/trading/status``, ``POST /admin/maintenance`` {"enabled"} -- all require
  ``X-API-Key: <api_key>`` (else 401 {"error": "invalid API key"}); bad bodies get 400 {"error": ...};
* ``GET /health`` and ``GET /health/detailed`` (no key), answering settable bodies;
* anything else: 404.

State: ``trading``, ``active_bots``/``total_bots``, ``open_orders`` (resting orders), ``open_positions``,
``pnl``, ``maintenance`` and ``halt`` (the mode of the stop in force). A graceful stop (the default mode,
freqtrade's stopentry + cancel) stops new entries and cancels resting orders, keeping positions; an
emergency stop halts every bot the same way and records ``halt="emergency"``; a start clears the halt and
each trading bot places one resting order again.

Every request is recorded as a :class:`Call` (faulted ones too). Fault knobs: ``fail_next(n, status)``
answers the next n requests with that status; ``delay_next(n, seconds)`` holds the next n requests
before answering (to provoke client timeouts); ``respond_raw(path, status, body, content_type)`` pins a
raw answer for a path (non-JSON bodies and the like). ``set_mode(mode)`` changes every later answer
until the next ``set_mode``: ``"ok"``; ``"slow"`` (each request held ``seconds``, then answered);
``"hang"`` (held until ``set_mode("ok")``, ``stop()`` or ``seconds``, then answered: a client gives
up first); ``"fail"`` (every request answered ``status``, 503 by default, acting on nothing); ``"lie"``
(``POST /admin/trading/stop`` answers 200 ``{"ok": true, "trading": false}`` and nothing halts: the bots
keep trading and their orders stay open).
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
MODES = ("ok", "slow", "hang", "fail", "lie")
#: longest a "hang" holds a request (so that server threads do not pile up forever)
HANG_CAP_SECONDS = 120.0


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
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stall

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

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, total_bots: int = 20, open_positions: int = 7,
                 pnl: float | None = 1234.5) -> None:
        self.api_key = api_key
        self.total_bots = total_bots
        self.trading = True
        self.active_bots = total_bots
        self.open_orders = total_bots  # one resting order per trading bot
        self.open_positions = open_positions
        self.pnl = pnl
        self.halt: str | None = None
        self.maintenance = False
        self.last_reason: str | None = None
        self.mode = "ok"
        self._mode_seconds = 0.0
        self._mode_status = 503
        self._released = threading.Event()
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
        self._released.set()
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

    def set_mode(self, mode: str, *, seconds: float | None = None, status: int = 503) -> None:
        """Behave as `mode` from now on (see the module docstring). `seconds`: the delay of "slow" (default
        1 s) or the longest a "hang" holds a request (default HANG_CAP_SECONDS)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        with self._lock:
            self.mode = mode
            self._mode_status = status
            self._mode_seconds = seconds if seconds is not None else (1.0 if mode == "slow" else HANG_CAP_SECONDS)
            if mode == "hang":
                self._released = threading.Event()
            else:
                self._released.set()  # lets hung requests go

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    # -- serving --------------------------------------------------------------------------------------

    def _serve(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        with self._lock:
            delay = self._delays.popleft() if self._delays else 0.0
            mode, mode_seconds, released = self.mode, self._mode_seconds, self._released
        if delay:
            self._stopping.wait(delay)
        if mode == "slow":
            self._stopping.wait(mode_seconds)
        elif mode == "hang":
            released.wait(mode_seconds)
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
        if self.mode == "fail":
            return self._mode_status, {"error": f"simulated outage ({self._mode_status})"}
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
                         "open_orders": self.open_orders, "open_positions": self.open_positions,
                         "pnl": self.pnl, "halt": self.halt, "last_reason": self.last_reason}
        if not isinstance(body, dict):
            return 400, {"error": "expected a JSON object body"}
        if route == ("POST", "/admin/trading/stop"):
            if not isinstance(body.get("reason"), str) or not body["reason"].strip():
                return 400, {"error": "reason is required"}
            mode = body.get("mode", "graceful")
            if mode not in ("graceful", "emergency"):
                return 400, {"error": f"mode must be graceful or emergency, got {mode!r}"}
            if self.mode == "lie":  # says it stopped; nothing halts
                return 200, {"ok": True, "trading": False}
            self.trading, self.active_bots, self.open_orders = False, 0, 0
            self.halt, self.last_reason = mode, body["reason"]
            return 200, {"ok": True, "trading": False, "halt": mode}
        if route == ("POST", "/admin/trading/start"):
            fraction = body.get("fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                return 400, {"error": f"fraction must be in (0, 1], got {fraction!r}"}
            if self.maintenance:
                return 409, {"error": "maintenance mode is on; disable it before starting trading"}
            self.trading, self.halt = True, None
            self.active_bots = max(1, math.ceil(fraction * self.total_bots))
            self.open_orders = self.active_bots
            return 200, {"ok": True, "active_bots": self.active_bots}
        if route == ("POST", "/admin/maintenance"):
            if not isinstance(body.get("enabled"), bool):
                return 400, {"error": "enabled must be a boolean"}
            self.maintenance = body["enabled"]
            return 200, {"ok": True, "maintenance": self.maintenance}
        return 404, {"error": f"no route {method} {path}"}
