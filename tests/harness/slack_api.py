"""A fake Slack Web API served over real sockets, for integration tests.

``FakeSlack`` runs a stdlib :class:`http.server.ThreadingHTTPServer` on ``127.0.0.1`` (free port) in a daemon
thread.  Point ``slack_sdk.WebClient(token=..., base_url=fake.base_url)`` (or Bolt's ``App(client=...)``) at
it, and POST to ``fake.response_url(name)`` wherever Slack would hand the bot a ``response_url``::

    with FakeSlack(users={"U1": "alice"}) as fake:
        client = WebClient(token=DEFAULT_TOKEN, base_url=fake.base_url)
        resp = client.chat_postMessage(channel="C0TEST", text="hi")
        fake.wait_for("chat.postMessage")
        assert fake.message("C0TEST", resp["ts"])["text"] == "hi"

Behaviour notes:

* Form bodies, JSON bodies and query strings are all accepted; JSON-valued form fields (``blocks``,
  ``attachments``, ``view``, ...) are decoded so ``Call.params`` looks the same either way.
* ``/api/`` methods require ``Authorization: Bearer <token>``; otherwise ``invalid_auth`` (HTTP 200).
* ``chat.postMessage`` accepts any channel id (``#name`` is resolved via ``channels``); the
  ``conversations.*`` methods only know the channels passed to the constructor.
* Every request, faulted ones included, is recorded as a :class:`Call`; ``wait_for`` blocks on a condition
  variable until enough matching calls arrived.
* ``fail_next`` queues faults per method (``"*"`` matches any /api/ method, ``"response/<name>"`` a
  response_url); each queued fault is used ``times`` times, in order.
* ``delay_next`` makes the next calls to a method take effect at once but answer only ``seconds`` later
  (Slack did the work; the caller hears back late, or never if it dies meanwhile).
* ``outage(status)`` makes every call (Web API and response_url) fail with that status until ``end_outage()``;
  ``outage(None)`` closes each connection without an answer, like an unreachable Slack.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._slack_methods import (
    BOT_ID,
    BOT_NAME,
    BOT_USER_ID,
    DEFAULT_CHANNELS,
    DEFAULT_TOKEN,
    DEFAULT_USERS,
    TEAM_DOMAIN,
    TEAM_ID,
    Json,
    Params,
    WebApiMethods,
)

__all__ = [  # constants are re-exported from the private method module
    "BOT_ID", "BOT_NAME", "BOT_USER_ID", "DEFAULT_CHANNELS", "DEFAULT_TOKEN", "DEFAULT_USERS",
    "JSON_FORM_FIELDS", "TEAM_DOMAIN", "TEAM_ID", "Call", "FakeSlack", "ResponsePost",
]

#: Form fields that Slack clients send as JSON strings.
JSON_FORM_FIELDS = frozenset({"blocks", "attachments", "view", "metadata", "unfurls", "options"})
#: serve_forever() notices shutdown() only between polls; keep stop() fast.
_POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class Call:
    """One recorded request to ``/api/<method>``."""

    method: str
    params: Params
    headers: dict[str, str]
    at: float
    faulted: bool = False
    status: int = 200
    response: Json | None = None
    verb: str = "POST"

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def ok(self) -> bool:
        """Whether the fake answered ``ok: true``."""
        return bool(self.response and self.response.get("ok"))


@dataclass(frozen=True)
class ResponsePost:
    """One POST to a ``response_url`` (``/response/<name>``); ``body`` is parsed JSON or the raw text."""

    name: str
    body: Any
    headers: dict[str, str]
    at: float
    faulted: bool = False


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: int | None
    remaining: int


@dataclass
class _Reply:
    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = dict(self.headers.items())
        fake = self.server.fake
        outage = fake._outage_reply(split.path, self.command, raw, headers)
        if outage is not None:
            if outage.status == 0:  # unreachable: drop the connection without a word
                self.close_connection = True
                return
            reply = outage
        elif split.path.startswith("/api/"):
            reply = fake._handle_api(split.path[len("/api/") :], self.command, split.query, raw, headers)
        elif split.path.startswith("/response/"):
            reply = fake._handle_response(split.path[len("/response/") :], raw, headers)
        else:
            reply = _Reply(404, {"ok": False, "error": "not_found"})
        delay = fake._take_delay(split.path) if outage is None else 0.0
        if delay > 0:
            fake._stopping.wait(delay)  # the call took effect; its answer is late
        payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


def _parse_params(query: str, raw: bytes, content_type: str) -> Params | None:
    """Merge query-string and body parameters; ``None`` if the body cannot be parsed."""
    params: Params = dict(parse_qsl(query, keep_blank_values=True))
    mime = content_type.split(";", 1)[0].strip().lower()
    if raw and mime == "application/json":
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        params.update(body)
    elif raw:
        form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        for key in JSON_FORM_FIELDS & form.keys():
            try:
                form[key] = json.loads(form[key])
            except ValueError:
                pass
        params.update(form)
    return params


def _method_is(name: str) -> Callable[[Call], bool]:
    return lambda call: call.method == name


class FakeSlack(WebApiMethods):
    """Fake Slack Web API server; see the module docstring for usage."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        users: Mapping[str, str] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Mapping[str, str] | None = None,
        channel_members: Mapping[str, Iterable[str]] | None = None,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
    ) -> None:
        self.token = token
        #: Socket Mode: set both to make ``apps.connections.open`` answer (see harness/socket_mode.py)
        self.app_token: str | None = None
        self.socket_mode_url: str | None = None
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.usergroups = {k: list(v) for k, v in (usergroups or {}).items()}
        self.channels = dict(DEFAULT_CHANNELS if channels is None else channels)
        self._initial_members = {
            cid: list((channel_members or {}).get(cid, self.users)) for cid in self.channels
        }
        self.channel_members = {}
        self.calls: list[Call] = []
        self.responses: list[ResponsePost] = []
        self.messages = {}
        self.ephemerals = []
        self.views = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._delays: dict[str, deque[list[float]]] = {}  # method -> [seconds, remaining] entries
        self._outage: int | None | bool = False  # False: none; an HTTP status; None: connections dropped
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._init_workspace()
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeSlack:
        """Bind ``127.0.0.1:<free port>`` and serve in a daemon thread (idempotent)."""
        if self._server is None:
            self._stopping.clear()
            server = _Server(("127.0.0.1", 0), _Handler)
            server.fake = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name="FakeSlack",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and close its socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._stopping.set()  # release answers held back by delay_next
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Web API base URL, e.g. ``http://127.0.0.1:PORT/api/`` (ends in a slash)."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str) -> str:
        """A URL that records POSTed JSON the way Slack's ``response_url`` accepts it."""
        return f"http://127.0.0.1:{self.port}/response/{name}"

    # ------------------------------------------------------------------ test helpers
    def reset(self) -> None:
        """Forget recorded calls, responses, messages, views and queued faults; restore channel membership."""
        with self._cond:
            self.calls.clear()
            self.responses.clear()
            self.messages.clear()
            self.ephemerals.clear()
            self.views.clear()
            self._faults.clear()
            self._delays.clear()
            self._outage = False
            self.channel_members = {cid: list(m) for cid, m in self._initial_members.items()}

    def fail_next(
        self,
        method: str,
        status: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
        error: str | None = None,
    ) -> None:
        """Make the next ``times`` calls to ``method`` fail.

        ``status`` defaults to 429 (with ``Retry-After: retry_after``, default 1), or to 200 when ``error`` is
        given, which answers ``{"ok": false, "error": error}``. Any other status answers that HTTP status.
        """
        if status is None:
            status = 200 if error is not None else 429
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._cond:
            self._faults.setdefault(method, deque()).append(_Fault(status, error, retry_after, times))

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Let the next ``times`` calls to ``method`` (or ``"response/<name>"``, or ``"*"`` for any /api/ method)
        take effect at once but answer only after ``seconds`` (cut short when the fake stops)."""
        with self._cond:
            self._delays.setdefault(method, deque()).append([seconds, times])

    def outage(self, status: int | None = 503) -> None:
        """From now until ``end_outage()``, answer every call with HTTP ``status`` (recorded as faulted);
        ``None``: close each connection without answering (Slack unreachable)."""
        with self._cond:
            self._outage = status

    def end_outage(self) -> None:
        with self._cond:
            self._outage = False

    def calls_to(self, method: str) -> list[Call]:
        """Recorded calls to ``method`` (faulted ones included), oldest first."""
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for(
        self, predicate_or_method: str | Callable[[Call], bool], count: int = 1, timeout: float = 5.0
    ) -> list[Call]:
        """Block until at least ``count`` recorded calls match; return them. Raises ``TimeoutError``."""
        if isinstance(predicate_or_method, str):
            pred: Callable[[Call], bool] = _method_is(predicate_or_method)
        else:
            pred = predicate_or_method
        with self._cond:
            if self._cond.wait_for(lambda: sum(map(pred, self.calls)) >= count, timeout):
                return [c for c in self.calls if pred(c)]
            seen = [c.method for c in self.calls]
        raise TimeoutError(f"expected {count} matching call(s) to {predicate_or_method!r}; recorded: {seen}")

    def wait_for_response(
        self, name: str | None = None, count: int = 1, timeout: float = 5.0
    ) -> list[ResponsePost]:
        """Block until ``count`` response_url posts (to ``name``, if given) arrived; return them."""

        def matching() -> list[ResponsePost]:
            return [r for r in self.responses if name is None or r.name == name]

        with self._cond:
            if self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                return matching()
            seen = [r.name for r in self.responses]
        raise TimeoutError(f"expected {count} response_url post(s) to {name!r}; recorded: {seen}")

    def message(self, channel: str, ts: str) -> Json:
        """Latest state (text, blocks, ...) of the message posted at ``(channel, ts)``."""
        with self._cond:
            try:
                return dict(self.messages[(channel, ts)])
            except KeyError:
                raise KeyError(f"no message {channel}/{ts}; known: {sorted(self.messages)}") from None

    def messages_in(self, channel: str) -> list[Json]:
        """All messages in ``channel``, oldest first."""
        with self._cond:
            return sorted((dict(m) for (cid, _), m in self.messages.items() if cid == channel),
                          key=lambda m: float(m["ts"]))

    # ------------------------------------------------------------------ request handling (server threads)
    def _outage_reply(self, path: str, verb: str, raw: bytes, headers: dict[str, str]) -> _Reply | None:
        """During an outage: the reply to give (status 0: drop the connection), after recording the call."""
        with self._cond:
            outage = self._outage
            if outage is False:
                return None
            status = 0 if outage is None else int(outage)
            body: Json = {"ok": False, "error": "service_unavailable" if status >= 500 else "request_failed"}
            if path.startswith("/response/"):
                self.responses.append(ResponsePost(path[len("/response/"):], raw.decode("utf-8", "replace"),
                                                   headers, time.time(), True))
            else:
                content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
                params = _parse_params("", raw, content_type) or {}
                self.calls.append(Call(path[len("/api/"):], params, headers, time.time(), faulted=True,
                                       status=status, response=None if status == 0 else body, verb=verb))
            self._cond.notify_all()
        return _Reply(status, body)

    def _take_delay(self, path: str) -> float:
        key = path[len("/api/"):] if path.startswith("/api/") else path.lstrip("/")
        with self._cond:
            for name in (key, "*") if path.startswith("/api/") else (key,):
                queue = self._delays.get(name)
                if queue:
                    entry = queue[0]
                    entry[1] -= 1
                    if entry[1] <= 0:
                        queue.popleft()
                    return float(entry[0])
        return 0.0

    def _take_fault(self, key: str, *, wildcard: bool = True) -> _Fault | None:
        for name in (key, "*") if wildcard else (key,):
            queue = self._faults.get(name)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.popleft()
                return fault
        return None

    @staticmethod
    def _fault_reply(fault: _Fault) -> _Reply:
        if fault.status == 429:
            return _Reply(429, {"ok": False, "error": fault.error or "ratelimited"},
                          {"Retry-After": str(fault.retry_after)})
        default = "service_unavailable" if fault.status >= 500 else "request_failed"
        error = fault.error or (default if fault.status != 200 else "fatal_error")
        return _Reply(fault.status, {"ok": False, "error": error})

    def _handle_api(self, method: str, verb: str, query: str, raw: bytes, headers: dict[str, str]) -> _Reply:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        params = _parse_params(query, raw, content_type)
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        with self._cond:
            fault = self._take_fault(method)
            if fault is not None:
                reply = self._fault_reply(fault)
            elif params is None:
                reply = _Reply(200, {"ok": False, "error": "invalid_json"})
            elif method == "apps.connections.open":
                # Socket Mode: only the app-level token may open a connection
                if self.app_token is None or auth != f"Bearer {self.app_token}":
                    reply = _Reply(200, {"ok": False, "error": "invalid_auth"})
                elif self.socket_mode_url is None:
                    reply = _Reply(200, {"ok": False, "error": "socket_mode_not_enabled"})
                else:
                    reply = _Reply(200, {"ok": True, "url": self.socket_mode_url})
            elif auth != f"Bearer {self.token}":
                reply = _Reply(200, {"ok": False, "error": "invalid_auth"})
            else:
                reply = _Reply(200, self._dispatch(method, params))
            self.calls.append(
                Call(method, params or {}, headers, time.time(),
                     faulted=fault is not None, status=reply.status, response=reply.body, verb=verb)
            )
            self._cond.notify_all()
        return reply

    def _handle_response(self, name: str, raw: bytes, headers: dict[str, str]) -> _Reply:
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        with self._cond:
            fault = self._take_fault(f"response/{name}", wildcard=False)
            reply = self._fault_reply(fault) if fault else _Reply(200, {"ok": True})
            self.responses.append(ResponsePost(name, body, headers, time.time(), fault is not None))
            self._cond.notify_all()
        return reply
