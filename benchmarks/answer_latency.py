"""What a user waits for: a signed slash command until the bot's reply arrives at its `response_url`.

Starts `chatops serve` and a bare Bolt app (`bare_bolt_app.py --reply-file`, whose `/swarm-status`
listener acks and then posts the same reply to the `response_url`), both on 127.0.0.1, and a
response sink (this script with `--sink`, its own process) that stands in for Slack's
`response_url` endpoint and records when each reply arrives. The reply the bare app posts is the
bot's own `/swarm-status` reply, captured from the sink at start-up, so both post the same bytes.

Phases, each run against both servers in ABBA order:

  * paced 20/s and 40/s: commands sent on a fixed schedule (open loop: a slow answer does not delay
    the next command), latency = reply arrival - send time, p50 / p99 / max;
  * saturation: `--sat-count` commands from `--sat-clients` concurrent senders back to back;
    throughput = answers / (last arrival - first send).

    .venv/bin/python benchmarks/answer_latency.py        # ~2 minutes

Last line: `answer_p99_ratio_40=<bot p99 / bare p99 at 40/s> answers_per_s=<bot> bare_answers_per_s=<bare>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

TLS = ssl.create_default_context()


# --- the response sink (a separate process) ----------------------------------------------------------
def run_sink(port: int) -> None:
    """A minimal HTTP/1.1 keep-alive server: POST /response/<name> records time.time() per name;
    GET /results returns them as JSON; GET /body/<name> the first body posted to <name>."""
    arrivals: dict[str, list[float]] = {}
    bodies: dict[str, bytes] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                out = b'{"ok":true}'
                if method == "POST" and path.startswith("/response/"):
                    name = path[len("/response/"):]
                    arrivals.setdefault(name, []).append(now)
                    bodies.setdefault(name, body)
                elif path == "/results":
                    out = json.dumps(arrivals).encode()
                elif path.startswith("/body/"):
                    out = bodies.get(path[len("/body/"):], b"")
                elif path == "/reset":
                    arrivals.clear()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(out)).encode() + b"\r\n\r\n" + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, c.HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def sink_get(port: int, path: str) -> bytes:
    status, raw = c.http_get(port, path, timeout=10.0)
    if status != 200:
        raise RuntimeError(f"sink answered {status} to {path}")
    return raw


# --- requests -------------------------------------------------------------------------------------------
def command_body(sink_port: int, name: str) -> bytes:
    form = {
        "token": "deprecated-verification-token", "team_id": "T0BENCH01", "team_domain": "bench",
        "channel_id": "C0STAGING1", "channel_name": "deploys", "user_id": "U0ALICE01", "user_name": "alice",
        "command": "/swarm-status", "text": "", "api_app_id": "A0BENCH01", "is_enterprise_install": "false",
        "response_url": f"http://{c.HOST}:{sink_port}/response/{name}",
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}",
    }
    return urlencode(form).encode()


@dataclass
class Target:
    name: str
    port: int
    proc: Popen[bytes]
    log: Path
    sent: dict[str, float] = field(default_factory=dict)  # response name -> send time
    errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{c.HOST}:{self.port}/slack/events"


async def send(client: httpx.AsyncClient, target: Target, secret: str, sink_port: int, name: str) -> None:
    body = command_body(sink_port, name)
    headers = c.slack_headers(secret, body)
    target.sent[name] = time.time()
    try:
        resp = await client.post(target.url, content=body, headers=headers)
        if resp.status_code != 200:
            target.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
    except httpx.HTTPError as exc:
        target.errors.append(f"{type(exc).__name__}: {exc}")


async def paced(target: Target, secret: str, sink_port: int, rate: float, seconds: float, tag: str) -> list[str]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    names = [f"{target.name}-{tag}-{i}" for i in range(int(rate * seconds))]
    async with httpx.AsyncClient(limits=limits, timeout=30, verify=TLS) as client:
        t0 = time.perf_counter() + 0.05
        tasks = []
        for i, name in enumerate(names):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, target, secret, sink_port, name)))
        await asyncio.gather(*tasks)
    return names


async def saturate(target: Target, secret: str, sink_port: int, count: int, clients: int, tag: str) -> list[str]:
    names = [f"{target.name}-{tag}-{i}" for i in range(count)]
    queue = list(reversed(names))
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    pool = [httpx.AsyncClient(limits=limits, timeout=30, verify=TLS) for _ in range(clients)]

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            await send(client, target, secret, sink_port, queue.pop())

    try:
        await asyncio.gather(*(worker(cl) for cl in pool))
    finally:
        for cl in pool:
            await cl.aclose()
    return names


def collect(target: Target, names: list[str], sink_port: int, timeout: float = 60.0) -> tuple[list[float], int]:
    """Latencies of `names` (seconds), waiting for late answers; and how many never arrived."""
    deadline = time.monotonic() + timeout
    while True:
        arrivals: dict[str, list[float]] = json.loads(sink_get(sink_port, "/results"))
        missing = [n for n in names if n not in arrivals]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [arrivals[n][0] - target.sent[n] for n in names if n in arrivals], len(missing)


def spread(names: list[str], target: Target, sink_port: int) -> float:
    arrivals: dict[str, list[float]] = json.loads(sink_get(sink_port, "/results"))
    got = [arrivals[n][0] for n in names if n in arrivals]
    first = min(target.sent[n] for n in names)
    return len(got) / (max(got) - first) if got else 0.0


# --- main -------------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description="answer latency (command -> reply at response_url) vs bare Bolt")
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each paced phase")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds of every phase")
    p.add_argument("--sat-count", type=int, default=600, help="commands per saturation block")
    p.add_argument("--sat-clients", type=int, default=32, help="concurrent senders at saturation")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    p.add_argument("--postgres", action="store_true",
                   help="the bot on a throwaway PostgreSQL (the production database) instead of SQLite")
    args = p.parse_args()
    if args.sink:
        run_sink(args.port)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="chatops-answer-bench-"))
    pg = None
    try:
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.harness.postgres import PostgresServer

            pg = PostgresServer().start()
            args.database_url = pg.url
        return run(args, tmp)
    finally:
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"logs and database kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    secret = secrets.token_hex(16)
    env = c.chatops_env(tmp, signing_secret=secret)
    if getattr(args, "database_url", None):
        env["CHATOPS_DATABASE_URL"] = args.database_url
    sink_port = c.free_port()
    env["CHATOPS_SLACK_RESPONSE_URL_PREFIXES"] = json.dumps([f"http://{c.HOST}:{sink_port}/response/"])
    procs: list[Popen[bytes]] = []
    try:
        procs.append(c.spawn([sys.executable, __file__, "--sink", "--port", str(sink_port)], env, tmp, "sink.log"))
        bot_port, base_port = c.free_port(), c.free_port()
        procs.append(c.spawn_chatops(bot_port, env, tmp))
        bot = Target("chatops", bot_port, procs[-1], tmp / "chatops.log")
        c.wait_ready(bot.proc, bot.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                sink_get(sink_port, "/results")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # the bot's own reply, for the bare app to post
        asyncio.run(paced(bot, secret, sink_port, 10, 0.1, "probe"))
        lat, missing = collect(bot, ["chatops-probe-0"], sink_port, timeout=15)
        if missing:
            print(f"the bot did not answer the probe\n{c.tail(bot.log)}", file=sys.stderr)
            return 1
        reply = tmp / "reply.json"
        reply.write_bytes(sink_get(sink_port, "/body/chatops-probe-0"))
        procs.append(c.spawn([sys.executable, str(c.BENCH_DIR / "bare_bolt_app.py"), "--host", c.HOST, "--port",
                              str(base_port), "--reply-file", str(reply)], env, tmp, "bare_bolt.log"))
        base = Target("bare-bolt", base_port, procs[-1], tmp / "bare_bolt.log")
        c.wait_ready(base.proc, base.port)
        print(f"ready: chatops on {bot_port}, bare Bolt on {base_port}, sink on {sink_port}; "
              f"reply {len(reply.read_bytes())} bytes; probe answered in {lat[0] * 1000:.1f} ms")

        results: dict[tuple[str, str], list[float]] = {}
        lost: dict[tuple[str, str], int] = {}
        rates: dict[str, list[float]] = {}
        for warm in (bot, base):  # warm both: connections, imports, caches
            names = asyncio.run(paced(warm, secret, sink_port, 20, 1.0, "warm"))
            collect(warm, names, sink_port)
        for r in range(args.rounds):
            for phase in ("20", "40", "sat"):
                order = (bot, base) if (r + len(phase)) % 2 == 0 else (base, bot)
                for t in order:
                    tag = f"{phase}-{r}"
                    if phase == "sat":
                        t0 = time.perf_counter()
                        names = asyncio.run(saturate(t, secret, sink_port, args.sat_count, args.sat_clients, tag))
                        lat, miss = collect(t, names, sink_port)
                        rates.setdefault(t.name, []).append(spread(names, t, sink_port))
                        print(f"  {t.name:9} saturation round {r}: {rates[t.name][-1]:6.1f} answers/s "
                              f"({len(names)} in {time.perf_counter() - t0:.1f}s, {miss} missing)")
                    else:
                        names = asyncio.run(paced(t, secret, sink_port, float(phase), args.seconds, tag))
                        lat, miss = collect(t, names, sink_port)
                        print(f"  {t.name:9} {phase}/s round {r}: p50 {c.percentile(lat, 50) * 1000:7.1f} ms  "
                              f"p99 {c.percentile(lat, 99) * 1000:7.1f} ms  ({miss} missing)")
                    results.setdefault((t.name, phase), []).extend(lat)
                    lost[(t.name, phase)] = lost.get((t.name, phase), 0) + miss
                    time.sleep(0.5)
    finally:
        for proc in reversed(procs):
            c.stop(proc)

    for t in (bot, base):
        if t.errors:
            print(f"{t.name}: {len(t.errors)} failed request(s), first: {t.errors[0]}", file=sys.stderr)
    print()
    print(f"{'command -> reply at response_url, ms':38} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'lost':>5}")
    for phase in ("20", "40", "sat"):
        for name in ("chatops", "bare-bolt"):
            v = results[(name, phase)]
            label = f"{phase}/s" if phase != "sat" else "saturation"
            print(f"  {label + ' ' + name:36} {c.percentile(v, 50) * 1000:8.1f} {c.percentile(v, 90) * 1000:8.1f} "
                  f"{c.percentile(v, 99) * 1000:8.1f} {max(v) * 1000:8.1f} {lost[(name, phase)]:5d}")
    ratio = {ph: c.percentile(results[("chatops", ph)], 99) / c.percentile(results[("bare-bolt", ph)], 99)
             for ph in ("20", "40")}
    bot_rate, base_rate = c.median(rates["chatops"]), c.median(rates["bare-bolt"])
    print()
    print(f"p99 ratio chatops / bare Bolt: 20/s {ratio['20']:.2f}, 40/s {ratio['40']:.2f} (target at 40/s <= 1.5)")
    print(f"saturation throughput (median of rounds): chatops {bot_rate:.0f}/s, bare Bolt {base_rate:.0f}/s, "
          f"ratio {bot_rate / base_rate:.2f} (target >= 0.5)")
    if bot.errors or base.errors or any(lost.values()):
        print("some requests failed or answers were lost; see above (--keep keeps the logs)", file=sys.stderr)
    print(f"answer_p99_ratio_40={ratio['40']:.3f} answers_per_s={bot_rate:.1f} bare_answers_per_s={base_rate:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
