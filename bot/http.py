"""The ASGI app: its routes as one table (`ROUTES`) over the state they share (`Gate`).

`POST /slack/events` (body limits, signature, payload shape, then Bolt), `POST /alerts/alertmanager`
(credentials before the body is read, body limits, payload shape, then the alert intake's unit of
work), `GET /healthz`, `/readyz`, `/metrics`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.container import Container
from bot.core.alerts import MalformedNotification, parse_notification
from bot.core.unit_of_work import ALERTMANAGER
from bot.errors import BackendUnavailable
from bot.metrics import Metrics
from bot.persistence.audit import AuditEntry, append
from bot.settings import Settings
from bot.slack.payloads import MalformedPayload, parse_payload
from bot.slack.verify import VerificationFailed, verify

log = logging.getLogger(__name__)
MAX_BODY = 1_000_000  # the default of CHATOPS_HTTP_MAX_BODY_BYTES


class BodyRefused(Exception):
    """A request body that was not read to its end: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason  # too_large | body_timeout | busy | client_disconnected
        self.detail = detail
        self.retry_after = retry_after

    def response(self) -> Response:
        headers = {"Connection": "close"}  # whatever the client still sends is never read
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse({"error": self.detail, "reason": self.reason}, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int = MAX_BODY
    timeout_seconds: float = 5.0
    max_concurrent: int = 64


class BodyReader:
    """Reads the bodies of requests whose sender is not yet authenticated, within bounds.

    * a declared `Content-Length` over the limit is refused before a byte of the body is read (413);
    * bytes are counted as they arrive (chunked uploads too) and reading stops at the limit (413):
      at most `max_bytes` plus one network chunk is ever held;
    * the whole body must arrive within `timeout_seconds` (408);
    * at most `max_concurrent` bodies are read at once; beyond that a request is answered 503 with
      `Retry-After` at once, without reading its body.

    Every refusal closes the connection (`Connection: close`), so the rest of a body is never read.
    A client that goes away mid-body raises `BodyRefused` with reason `client_disconnected` (there is
    nobody left to answer). One reader serves every POST route that checks a signature after reading.
    """

    def __init__(self, limits: BodyLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.in_flight = 0  # one event loop: no lock needed

    async def read(self, request: Request) -> bytes:
        limit = self.limits.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise BodyRefused(413, "too_large", f"request body of {int(declared)} bytes is over the "
                              f"limit of {limit} bytes")
        if self.in_flight >= self.limits.max_concurrent:
            raise BodyRefused(503, "busy", "too many requests being received at once; retry shortly",
                              retry_after=1)
        self._track(+1)
        received = 0
        try:
            async with asyncio.timeout(self.limits.timeout_seconds):
                chunks: list[bytes] = []
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise BodyRefused(413, "too_large", f"request body is over the limit of {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise BodyRefused(408, "body_timeout", f"request body not received within "
                              f"{self.limits.timeout_seconds:g} s ({received} bytes arrived)") from None
        except ClientDisconnect:
            raise BodyRefused(400, "client_disconnected",
                              f"client disconnected after {received} bytes of the body") from None
        finally:
            self._track(-1)

    def _track(self, delta: int) -> None:
        self.in_flight += delta
        if self.metrics is not None:
            self.metrics.body_reads.inc(delta)


def limits_from(container: Container) -> BodyLimits:
    s = container.settings
    return BodyLimits(max_bytes=s.http_max_body_bytes, timeout_seconds=s.http_body_timeout_seconds,
                      max_concurrent=s.http_max_body_reads)


@dataclass
class Gate:
    """What the routes share, built once per app: the container, Bolt, the body reader, the secrets."""

    container: Container
    bolt: Any
    reader: BodyReader
    secret: str | None
    socket_mode: bool = False
    socket_handler: Any = None

    @property
    def metrics(self) -> Metrics:
        return self.container.metrics

    def count(self, response: Response, path: str) -> Response:
        self.metrics.http_requests.labels(path, str(response.status_code)).inc()
        return response


def _gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


# --- Slack ---------------------------------------------------------------------------------------------
async def slack_events(request: Request) -> Response:
    from slack_bolt.adapter.starlette.async_handler import to_starlette_response
    from slack_bolt.async_app import AsyncBoltRequest

    gate, path = _gate(request), "/slack/events"
    metrics = gate.metrics
    started = time.perf_counter()
    client = request.client.host if request.client else "?"
    try:
        body = await gate.reader.read(request)
    except BodyRefused as exc:
        metrics.slack_rejected.labels(exc.reason).inc()
        if exc.reason == "client_disconnected":  # nobody to answer; not an error of ours
            log.info("Slack request from %s abandoned: %s", client, exc.detail)
        else:
            log.warning("refused Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
        return gate.count(exc.response(), path)
    if gate.secret is None:
        log.error("refusing Slack request: CHATOPS_SLACK_SIGNING_SECRET is not set")
        metrics.slack_rejected.labels("no_secret_configured").inc()
        return gate.count(JSONResponse({"error": "signing secret not configured"}, status_code=401), path)
    try:
        verify(gate.secret, request.headers, body)
    except VerificationFailed as exc:
        log.warning("rejected Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
        metrics.slack_rejected.labels(exc.reason).inc()
        return gate.count(JSONResponse({"error": "invalid request", "reason": exc.reason}, status_code=401), path)
    try:
        payload = parse_payload(body, request.headers.get("content-type"))
    except MalformedPayload as exc:
        log.warning("refused signed Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
        metrics.slack_rejected.labels(exc.reason).inc()
        return gate.count(JSONResponse({"error": "malformed request", "reason": exc.reason, "detail": exc.detail},
                                       status_code=400), path)
    # Bolt gets the structure that was checked, as JSON: it never parses the raw body itself
    headers: dict[str, str | Sequence[str]] = dict(request.headers.items())
    headers["content-type"] = "application/json"
    bolt_request = AsyncBoltRequest(body=json.dumps(payload.body), query=request.url.query, headers=headers)
    response = to_starlette_response(await gate.bolt.async_dispatch(bolt_request))
    metrics.ack_latency.observe(time.perf_counter() - started)
    return gate.count(response, path)


# --- Alertmanager ----------------------------------------------------------------------------------------
def alertmanager_auth_problem(settings: Settings, authorization: str | None) -> str | None:
    """None when the Authorization header carries the configured bearer token or basic credentials (compared
    in constant time), else the reason for the 401: not_configured, no_credentials, bad_scheme,
    bad_credentials."""
    token = settings.secret("alertmanager_token")
    password = settings.secret("alertmanager_password")
    user = settings.alertmanager_username
    if not token and not (user and password):
        return "not_configured"
    if not authorization:
        return "no_credentials"
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and token:
        return None if hmac.compare_digest(value.encode(), token.encode()) else "bad_credentials"
    if scheme.lower() == "basic" and user and password:
        try:
            given_user, sep, given_password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "bad_credentials"
        user_ok = hmac.compare_digest(given_user.encode(), user.encode())
        password_ok = hmac.compare_digest(given_password.encode(), password.encode())
        return None if sep and user_ok and password_ok else "bad_credentials"
    return "bad_scheme"


async def alertmanager_webhook(request: Request) -> Response:
    gate, path = _gate(request), "/alerts/alertmanager"
    metrics, container = gate.metrics, gate.container
    client = request.client.host if request.client else "?"
    problem = alertmanager_auth_problem(container.settings, request.headers.get("authorization"))
    if problem is not None:
        # counted and logged, never audited or stored: a flood of these must not grow the audit chain
        metrics.alerts_rejected.labels(problem).inc()
        log.warning("refused Alertmanager request from %s: %s", client, problem)
        return gate.count(JSONResponse({"error": "unauthorized", "reason": problem}, status_code=401, headers={
            "WWW-Authenticate": 'Bearer realm="chatops", Basic realm="chatops"', "Connection": "close"}), path)
    try:
        body = await gate.reader.read(request)
        notification = parse_notification(body)
    except BodyRefused as exc:
        return gate.count(await _refused(gate, client, exc.reason, exc.detail, exc.response()), path)
    except MalformedNotification as exc:
        response = JSONResponse({"error": "malformed alert notification", "reason": exc.reason,
                                 "detail": exc.detail}, status_code=400)
        return gate.count(await _refused(gate, client, exc.reason, exc.detail, response), path)
    try:
        result = await asyncio.wrap_future(container.core.alerts.submit(notification))
    except BackendUnavailable as exc:  # Alertmanager retries a 5xx: nothing is lost
        log.error("Alertmanager notification not stored, database unavailable: %s", exc)
        metrics.alerts_rejected.labels("backend_unavailable").inc()
        return gate.count(JSONResponse({"error": "database unavailable; retry", "reason": "backend_unavailable"},
                                       status_code=503, headers={"Retry-After": "5"}), path)
    metrics.alerts_received.labels("duplicate" if result.duplicate else "new").inc()
    return gate.count(JSONResponse({
        "status": "duplicate" if result.duplicate else "accepted", "group": result.group_id,
        "group_status": result.status, "newly_firing": result.firing, "newly_resolved": result.resolved}), path)


async def _refused(gate: Gate, client: str, reason: str, detail: str, response: Response) -> Response:
    """An authenticated sender's request refused before its content was used: logged, counted, audited
    (reason and detail only, never the body)."""
    gate.metrics.alerts_rejected.labels(reason).inc()
    if reason == "client_disconnected":
        log.info("Alertmanager request from %s abandoned: %s", client, detail)
        return response
    log.warning("refused Alertmanager request from %s: %s (%s)", client, reason, detail)

    def record() -> None:
        with gate.container.db.transaction() as session:
            append(session, AuditEntry(actor_id=ALERTMANAGER.user_id, actor_name=ALERTMANAGER.name, channel=None,
                                       action="alert.rejected", outcome="usage_error", correlation_id="-",
                                       args={"reason": reason, "detail": detail[:500], "client": client}))

    try:
        await asyncio.to_thread(record)
    except Exception as exc:  # the refusal stands; only its record is missing
        log.error("could not audit the refused Alertmanager request: %s", exc)
    return response


# --- probes --------------------------------------------------------------------------------------------
async def healthz(request: Request) -> Response:
    return _gate(request).count(JSONResponse({"status": "ok"}), "/healthz")


async def readyz(request: Request) -> Response:
    gate = _gate(request)
    ready, reason = await asyncio.to_thread(gate.container.db.readiness)
    return gate.count(JSONResponse({"status": "ready" if ready else "not ready", "reason": reason},
                                   status_code=200 if ready else 503), "/readyz")


async def metrics_endpoint(request: Request) -> Response:
    gate = _gate(request)
    return gate.count(PlainTextResponse(gate.metrics.render(), media_type="text/plain; version=0.0.4"), "/metrics")


#: the routes of the app, one line each
ROUTES = (
    Route("/slack/events", slack_events, methods=["POST"]),
    Route("/alerts/alertmanager", alertmanager_webhook, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    gate: Gate = app.state.gate
    container = gate.container
    container.start()
    if gate.socket_mode:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        gate.socket_handler = AsyncSocketModeHandler(gate.bolt, container.settings.secret("slack_app_token"))
        await gate.socket_handler.connect_async()
        log.info("connected to Slack over Socket Mode")
    try:
        yield
    finally:
        log.info("shutting down: finishing in-flight work (up to %.0fs)", container.settings.shutdown_grace_seconds)
        if gate.socket_handler is not None:
            await gate.socket_handler.close_async()
        await asyncio.to_thread(container.stop)


def create_app(container: Container, *, socket_mode: bool = False) -> Starlette:
    from bot.slack.app import build_bolt

    app = Starlette(routes=list(ROUTES), lifespan=lifespan)
    app.state.gate = Gate(container, build_bolt(container), BodyReader(limits_from(container), container.metrics),
                          container.settings.secret("slack_signing_secret"), socket_mode)
    return app
