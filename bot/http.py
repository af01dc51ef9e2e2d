"""The ASGI app: /slack/events (verified, then Bolt), /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.container import Container
from bot.slack.verify import VerificationFailed, verify

log = logging.getLogger(__name__)
MAX_BODY = 1_000_000


def create_app(container: Container, *, socket_mode: bool = False) -> Starlette:
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler

    from bot.slack.app import build_bolt

    bolt = build_bolt(container)
    handler = AsyncSlackRequestHandler(bolt)
    secret = container.settings.secret("slack_signing_secret")
    metrics = container.metrics
    socket_handler: Any = None

    async def slack_events(request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        if len(body) > MAX_BODY:
            metrics.slack_rejected.labels("too_large").inc()
            return _count(JSONResponse({"error": "request too large"}, status_code=413), "/slack/events")
        if secret is None:
            log.error("refusing Slack request: CHATOPS_SLACK_SIGNING_SECRET is not set")
            metrics.slack_rejected.labels("no_secret_configured").inc()
            return _count(JSONResponse({"error": "signing secret not configured"}, status_code=401), "/slack/events")
        try:
            verify(secret, request.headers, body)
        except VerificationFailed as exc:
            client = request.client.host if request.client else "?"
            log.warning("rejected Slack request from %s: %s (%s)", client, exc.reason, exc.detail)
            metrics.slack_rejected.labels(exc.reason).inc()
            return _count(JSONResponse({"error": "invalid request", "reason": exc.reason}, status_code=401),
                          "/slack/events")
        response = await handler.handle(request)
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
