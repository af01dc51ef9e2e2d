"""Baseline for the ack-latency benchmark: a bare Bolt app on the same HTTP stack as `chatops serve`.

Default Bolt settings (process_before_response=False, Bolt's own signature verification on),
one `/help` listener that only acks with a short text, and a static `authorize` so no request
makes an `auth.test` call. Served by Starlette + slack_bolt's Starlette adapter + uvicorn, as
the bot is, with /readyz so the benchmark can wait for it.

    CHATOPS_SLACK_SIGNING_SECRET=... python benchmarks/bare_bolt_app.py --port 3999

With `--reply-file FILE` (answer_latency.py) it also has a `/swarm-status` listener that acks and
then posts FILE's JSON to the command's `response_url` with one shared `httpx.AsyncClient`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def create_app(signing_secret: str, reply: bytes | None = None) -> Any:
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_bolt.authorization import AuthorizeResult
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def authorize(**kwargs: Any) -> AuthorizeResult:
        return AuthorizeResult(enterprise_id=kwargs.get("enterprise_id"), team_id=kwargs.get("team_id"),
                               bot_token="xoxb-baseline-not-used", bot_user_id="UBASEBOT1",
                               bot_id="BBASEBOT1")

    bolt = AsyncApp(signing_secret=signing_secret, authorize=authorize)

    @bolt.command("/help")
    async def on_help(ack: AsyncAck) -> None:
        await ack(text="baseline: /help acknowledged")

    if reply is not None:
        import httpx

        http = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64))

        @bolt.command("/swarm-status")
        async def on_status(ack: AsyncAck, body: dict[str, Any]) -> None:
            await ack()
            await http.post(body["response_url"], content=reply, headers={"Content-Type": "application/json"})

    handler = AsyncSlackRequestHandler(bolt)

    async def slack_events(request: Request) -> Response:
        return await handler.handle(request)

    async def readyz(_request: Request) -> Response:
        return PlainTextResponse("ready")

    return Starlette(routes=[Route("/slack/events", slack_events, methods=["POST"]),
                             Route("/readyz", readyz, methods=["GET"])])


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reply-file", help="also answer /swarm-status by posting this JSON to response_url")
    args = p.parse_args()
    secret = os.environ.get("CHATOPS_SLACK_SIGNING_SECRET")
    if not secret:
        raise SystemExit("CHATOPS_SLACK_SIGNING_SECRET must be set")
    reply = open(args.reply_file, "rb").read() if args.reply_file else None  # noqa: SIM115
    uvicorn.run(create_app(secret, reply), host=args.host, port=args.port, log_level="warning", access_log=False,
                lifespan="on")


if __name__ == "__main__":
    main()
