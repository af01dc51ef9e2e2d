"""The ASGI app: /slack/events (body limits, signature, payload shape, then Bolt), /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
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
from bot.metrics import Metrics
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


def create_app(container: Container, *, socket_mode: bool = False) -> Starlette:
    from slack_bolt.adapter.starlette.async_handler import to_starlette_response
    from slack_bolt.async_app import AsyncBoltRequest

    from bot.slack.app import build_bolt

    bolt = build_bolt(container)
    reader = BodyReader(limits_from(container), container.metrics)
    secret = container.settings.secret("slack_signing_secret")
    metrics = container.metrics
    socket_handler: Any = None

    async def slack_events(request: Request) -> Response:
        started = time.perf_counter()
        client = request.client.host if request.client else "?"
        try:
            body = await reader.read(request)
        except BodyRefused as exc:
            metrics.slack_rejected.labels(exc.reason).inc()
            if exc.reason == "client_disconnected":  # nobody to answer; not an error of ours
                log.info("Slack request from %s abandoned: %s", client, exc.detail)
            else:
                log.warning("refused Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
            return _count(exc.response(), "/slack/events")
        if secret is None:
            log.error("refusing Slack request: CHATOPS_SLACK_SIGNING_SECRET is not set")
            metrics.slack_rejected.labels("no_secret_configured").inc()
            return _count(JSONResponse({"error": "signing secret not configured"}, status_code=401), "/slack/events")
        try:
            verify(secret, request.headers, body)
        except VerificationFailed as exc:
            log.warning("rejected Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
            metrics.slack_rejected.labels(exc.reason).inc()
            return _count(JSONResponse({"error": "invalid request", "reason": exc.reason}, status_code=401),
                          "/slack/events")
        try:
            payload = parse_payload(body, request.headers.get("content-type"))
        except MalformedPayload as exc:
            log.warning("refused signed Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
            metrics.slack_rejected.labels(exc.reason).inc()
            return _count(JSONResponse({"error": "malformed request", "reason": exc.reason, "detail": exc.detail},
                                       status_code=400), "/slack/events")
        # Bolt gets the structure that was checked, as JSON: it never parses the raw body itself
        headers: dict[str, str | Sequence[str]] = dict(request.headers.items())
        headers["content-type"] = "application/json"
        bolt_request = AsyncBoltRequest(body=json.dumps(payload.body), query=request.url.query, headers=headers)
        response = to_starlette_response(await bolt.async_dispatch(bolt_request))
        metrics.ack_latency.observe(time.perf_counter() - started)
        return _count(response, "/slack/events")

    def _count(response: Response, path: str) -> Response:
        metrics.http_requests.labels(path, str(response.status_code)).inc()
        return response

    async def healthz(_request: Request) -> Response:
        return _count(JSONResponse({"status": "ok"}), "/healthz")

    async def readyz(_request: Request) -> Response:
        ready, reason = await asyncio.to_thread(container.db.readiness)
        status = 200 if ready else 503
        return _count(JSONResponse({"status": "ready" if ready else "not ready", "reason": reason},
                                   status_code=status), "/readyz")

    async def metrics_endpoint(_request: Request) -> Response:
        return _count(PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4"), "/metrics")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        nonlocal socket_handler
        container.start()
        if socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            socket_handler = AsyncSocketModeHandler(bolt, container.settings.secret("slack_app_token"))
            await socket_handler.connect_async()
            log.info("connected to Slack over Socket Mode")
        try:
            yield
        finally:
            log.info("shutting down: finishing in-flight work (up to %.0fs)", container.settings.shutdown_grace_seconds)
            if socket_handler is not None:
                await socket_handler.close_async()
            await asyncio.to_thread(container.stop)

    routes = [
        Route("/slack/events", slack_events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
