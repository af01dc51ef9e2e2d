"""Slash-command ack latency of `chatops serve` against a bare Bolt app on the same stack.

Starts both servers on 127.0.0.1 (free ports), sends correctly signed `/help` slash commands
(each with a fresh trigger_id, so every one is a new command for the bot) over keep-alive
connections, and measures the client-observed time from sending a request to having read the
whole response:

  * sequential: one connection, one request at a time (after a warm-up);
  * concurrent: N clients (one keep-alive connection each), each sending its requests back to back.

The two servers take turns in short blocks (ABBA order), so that noise on a small machine
falls on both; after each block against the bot, the benchmark waits until the bot's
background tasks (audit and idempotency writes) have drained, so that they do not slow
the baseline's next block (the wait is reported). The bot's own `chatops_ack_latency_seconds`
histogram is scraped from /metrics before and after each phase to show the server-side ack
time, and /proc gives the CPU time each server spent per request.

    .venv/bin/python benchmarks/ack_latency.py     # defaults: 30 warm-up, 300 sequential, 20 x 50 concurrent

The last line is `ack_ratio_p99=<bot p99 / baseline p99, concurrent> seq_p50_ms=<bot sequential p50>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
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

RESPONSE_URL = "https://hooks.slack.com/commands/x"
# every httpx client builds a TLS context unless given one (~30 ms of CPU each); plain http here, so share one
TLS = ssl.create_default_context()
_counter = itertools.count(1)


def command_body(run_id: str) -> bytes:
    form = {
        "token": "deprecated-verification-token",
        "team_id": "T0BENCH01",
        "team_domain": "bench",
        "channel_id": "C0STAGING1",
        "channel_name": "deploys",
        "user_id": "U0ALICE01",
        "user_name": "alice",
        "command": "/help",
        "text": "",
        "api_app_id": "A0BENCH01",
        "is_enterprise_install": "false",
        "response_url": RESPONSE_URL,
        "trigger_id": f"{next(_counter)}.{run_id}.{uuid.uuid4().hex}",
    }
    return urlencode(form).encode()


@dataclass
class Target:
    name: str
    port: int
    proc: Popen[bytes]
    log: Path
    secret: str
    is_bot: bool
    seq: list[float] = field(default_factory=list)
    conc: list[float] = field(default_factory=list)
    conc_turns: list[list[float]] = field(default_factory=list)  # the concurrent samples, turn by turn
    errors: list[str] = field(default_factory=list)
    sent: int = 0  # every request, warm-up included
    drain_wait: float = 0.0  # seconds spent after its turns waiting for background work to finish

    @property
    def url(self) -> str:
        return f"http://{c.HOST}:{self.port}/slack/events"


# --- one request -------------------------------------------------------------------------------------
def _done(target: Target, resp: httpx.Response) -> None:
    target.sent += 1
    if resp.status_code != 200:
        target.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")


def send_sync(client: httpx.Client, target: Target, run_id: str) -> float:
    body = command_body(run_id)
    headers = c.slack_headers(target.secret, body)  # signing is not part of the measured time
    t0 = time.perf_counter()
    resp = client.post(target.url, content=body, headers=headers)
    resp.read()
    elapsed = time.perf_counter() - t0
    _done(target, resp)
    return elapsed


async def send_async(client: httpx.AsyncClient, target: Target, run_id: str) -> float:
    body = command_body(run_id)
    headers = c.slack_headers(target.secret, body)
    t0 = time.perf_counter()
    resp = await client.post(target.url, content=body, headers=headers)
    await resp.aread()
    elapsed = time.perf_counter() - t0
    _done(target, resp)
    return elapsed


# --- the bot's /metrics --------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
ACK = "chatops_ack_latency_seconds"


def scrape(port: int) -> dict[str, float]:
    """The samples we need from /metrics: ack histogram buckets, _sum, _count, tasks in flight."""
    status, raw = c.http_get(port, "/metrics", timeout=5.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in raw.decode().splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m["name"], m["labels"] or "", float(m["value"])
        if name == f"{ACK}_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                out[f"bucket:{le.group(1)}"] = value
        elif name in (f"{ACK}_sum", f"{ACK}_count", "chatops_background_tasks_in_flight"):
            out[name] = value
        elif name == "chatops_background_tasks_failed_total":
            out["tasks_failed"] = out.get("tasks_failed", 0.0) + value
    return out


def histogram_summary(before: dict[str, float], after: dict[str, float]) -> str:
    count = after.get(f"{ACK}_count", 0) - before.get(f"{ACK}_count", 0)
    total = after.get(f"{ACK}_sum", 0) - before.get(f"{ACK}_sum", 0)
    if count <= 0:
        return "no samples"
    bounds = sorted((float(k[7:]), after[k] - before.get(k, 0)) for k in after if k.startswith("bucket:"))

    def quantile(q: float) -> str:
        # as Prometheus' histogram_quantile: linear inside the bucket that holds the rank
        rank = q * count
        prev_bound, prev_count = 0.0, 0.0
        for bound, cum in bounds:
            if cum >= rank:
                if bound == float("inf"):
                    return f">{prev_bound * 1000:g}"
                frac = (rank - prev_count) / (cum - prev_count) if cum > prev_count else 1.0
                return f"{(prev_bound + (bound - prev_bound) * frac) * 1000:.2f}"
            prev_bound, prev_count = bound, cum
        return "?"

    cumulative = dict(bounds)

    def share(bound: float) -> str:
        return f"{100.0 * cumulative.get(bound, 0) / count:.0f}%"

    return (f"n={int(count)} mean={total / count * 1000:.2f} ms  ~p50={quantile(0.5)} ms  "
            f"~p99={quantile(0.99)} ms  (<=2ms {share(0.002)}, <=5ms {share(0.005)}, <=10ms {share(0.01)})")


def wait_drained(target: Target, timeout: float = 60.0) -> float:
    """Wait until the bot has no background task queued or running; seconds waited."""
    t0 = time.perf_counter()
    waited = timeout
    while time.perf_counter() - t0 < timeout:
        if scrape(target.port).get("chatops_background_tasks_in_flight", 0) == 0:
            waited = time.perf_counter() - t0
            break
        time.sleep(0.05)
    else:
        print(f"  warning: {target.name} still had background tasks after {timeout:.0f}s", file=sys.stderr)
    target.drain_wait += waited
    return waited


# --- phases ----------------------------------------------------------------------------------------------
def abba(round_no: int, a: Target, b: Target) -> tuple[Target, Target]:
    return (a, b) if round_no % 2 == 0 else (b, a)


def run_sequential(targets: list[Target], clients: dict[str, httpx.Client], run_id: str, *, warmup: int,
                   total: int, block: int) -> None:
    for t in targets:
        for _ in range(warmup):
            send_sync(clients[t.name], t, run_id)
        if t.is_bot:
            wait_drained(t)
    rounds = (total + block - 1) // block
    for r in range(rounds):
        n = min(block, total - r * block)
        for t in abba(r, targets[0], targets[1]):
            for _ in range(n):
                t.seq.append(send_sync(clients[t.name], t, run_id))
            if t.is_bot:
                wait_drained(t)


async def _concurrent_block(target: Target, pool: list[httpx.AsyncClient], per_client: int, run_id: str,
                            sink: list[float] | None) -> None:
    async def one_client(client: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            elapsed = await send_async(client, target, run_id)
            if sink is not None:
                sink.append(elapsed)

    await asyncio.gather(*(one_client(cl) for cl in pool))


async def run_concurrent(targets: list[Target], n_clients: int, per_client: int, rounds: int,
                         run_id: str) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
    pools = {t.name: [httpx.AsyncClient(limits=limits, timeout=30, verify=TLS) for _ in range(n_clients)]
             for t in targets}
    try:
        for t in targets:  # open every connection, warm both servers at this concurrency
            await _concurrent_block(t, pools[t.name], 3, run_id, None)
            if t.is_bot:
                await asyncio.to_thread(wait_drained, t)
        base, extra = divmod(per_client, rounds)
        for r in range(rounds):
            n = base + (1 if r < extra else 0)
            if n == 0:
                continue
            for t in abba(r, targets[0], targets[1]):
                turn: list[float] = []
                await _concurrent_block(t, pools[t.name], n, run_id, turn)
                t.conc.extend(turn)
                t.conc_turns.append(turn)
                if t.is_bot:
                    await asyncio.to_thread(wait_drained, t)
    finally:
        for pool in pools.values():
            for cl in pool:
                await cl.aclose()


@dataclass
class Snapshot:
    """What changes over a phase: the bot's metrics, each server's CPU and requests, our own CPU."""

    metrics: dict[str, float]
    cpu: dict[str, tuple[float, int]]
    client_cpu: float

    @classmethod
    def take(cls, bot: Target, base: Target) -> Snapshot:
        return cls(scrape(bot.port), {t.name: (c.cpu_seconds(t.proc.pid), t.sent) for t in (bot, base)},
                   time.process_time())


# --- report ------------------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return f"{x * 1000:7.2f}"


def report(bot: Target, base: Target, snaps: list[Snapshot], args: argparse.Namespace,
           walls: tuple[float, float]) -> dict[tuple[str, int], float]:
    print()
    print(f"sequential: {args.warmup} warm-up then {args.seq} measured per server, one keep-alive "
          f"connection, turns of {args.seq_block} (ABBA)  [{walls[0]:.1f}s]")
    print(f"concurrent: {args.clients} clients x {args.per_client} requests per server, one keep-alive "
          f"connection per client, {args.rounds} turns (ABBA)  [{walls[1]:.1f}s]")
    print()
    print(f"{'client-observed latency, ms':34} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'mean':>7}")
    rows = [("sequential", "seq"), ("concurrent", "conc")]
    for label, attr in rows:
        for t in (bot, base):
            v = getattr(t, attr)
            print(f"  {label + ' ' + t.name:32} {ms(c.percentile(v, 50))} {ms(c.percentile(v, 90))} "
                  f"{ms(c.percentile(v, 99))} {ms(max(v))} {ms(sum(v) / len(v))}")
    print()
    print("ratios chatops / bare Bolt:")
    ratios = {}
    for label, attr in rows:
        for q in (50, 99):
            ratios[(attr, q)] = c.percentile(getattr(bot, attr), q) / c.percentile(getattr(base, attr), q)
            print(f"  {label:11} p{q}: {ratios[(attr, q)]:.3f}")
    pairs = [c.percentile(a, 99) / c.percentile(b, 99)
             for a, b in zip(bot.conc_turns, base.conc_turns, strict=True)]
    if pairs:
        print(f"  (noise check: concurrent p99 ratio turn by turn: min {min(pairs):.2f}, median "
              f"{c.median(pairs):.2f}, max {max(pairs):.2f} over {len(pairs)} turns)")
    print()
    print("server-side ack time (chatops_ack_latency_seconds from /metrics, bucket estimates):")
    print(f"  sequential (incl. warm-up): {histogram_summary(snaps[0].metrics, snaps[1].metrics)}")
    print(f"  concurrent (incl. warm-up): {histogram_summary(snaps[1].metrics, snaps[2].metrics)}")
    print()
    print("CPU time (user+sys, all threads) per request, warm-up and drain waits included:")
    for label, a, b in (("sequential", snaps[0], snaps[1]), ("concurrent", snaps[1], snaps[2])):
        parts, sent = [], 0
        for t in (bot, base):
            (cpu_a, n_a), (cpu_b, n_b) = a.cpu[t.name], b.cpu[t.name]
            parts.append(f"{t.name} {(cpu_b - cpu_a) / max(1, n_b - n_a) * 1000:.2f} ms")
            sent += n_b - n_a
        parts.append(f"load generator {(b.client_cpu - a.client_cpu) / max(1, sent) * 1000:.2f} ms")
        print(f"  {label:11} " + ",  ".join(parts))
    print(f"  chatops: {bot.drain_wait:.1f}s spent after its turns waiting for its background tasks to drain")
    failed = int(snaps[2].metrics.get("tasks_failed", 0))
    if failed:
        print(f"  note: {failed} background task(s) failed (see the server log)")
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description="ack latency of `chatops serve` vs a bare Bolt app")
    p.add_argument("--warmup", type=int, default=30, help="sequential warm-up requests per server")
    p.add_argument("--seq", type=int, default=300, help="measured sequential requests per server")
    p.add_argument("--seq-block", type=int, default=25, help="sequential requests per turn")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients")
    p.add_argument("--per-client", type=int, default=50, help="requests per concurrent client")
    p.add_argument("--rounds", type=int, default=10, help="turns per server in the concurrent phase")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    p.add_argument("--bot-wrapper", metavar="SCRIPT",
                   help="A/B experiments: run `python SCRIPT serve ...` instead of `chatops serve` "
                        "(SCRIPT may patch the bot, then call bot.cli.main(sys.argv[1:]))")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chatops-ack-bench-"))
    try:
        return run(args, tmp)
    finally:
        if args.keep:
            print(f"logs and database kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    secret = secrets.token_hex(16)
    run_id = secrets.token_hex(4)
    env = c.chatops_env(tmp, signing_secret=secret)
    procs: list[Popen[bytes]] = []
    try:
        bot_port, base_port = c.free_port(), c.free_port()
        if args.bot_wrapper:
            procs.append(c.spawn([sys.executable, str(Path(args.bot_wrapper).resolve()), "serve", "--host",
                                  c.HOST, "--port", str(bot_port)], env, tmp, "chatops.log"))
        else:
            procs.append(c.spawn_chatops(bot_port, env, tmp))
        procs.append(c.spawn_bare_bolt(base_port, env, tmp))
        bot = Target("chatops", bot_port, procs[0], tmp / "chatops.log", secret, True)
        base = Target("bare-bolt", base_port, procs[1], tmp / "bare_bolt.log", secret, False)
        for t in (bot, base):
            try:
                took = c.wait_ready(t.proc, t.port, timeout=30.0)
            except (RuntimeError, TimeoutError) as exc:
                print(f"{t.name} did not become ready: {exc}\n{c.tail(t.log)}", file=sys.stderr)
                return 1
            print(f"{t.name}: ready on 127.0.0.1:{t.port} after {took:.2f}s")

        one_connection = httpx.Limits(max_connections=1)
        clients = {t.name: httpx.Client(timeout=30, limits=one_connection, verify=TLS) for t in (bot, base)}
        try:
            for t in (bot, base):  # is it a real, signed, successful slash command? is a bad one refused?
                body = command_body(run_id)
                resp = clients[t.name].post(t.url, content=body, headers=c.slack_headers(secret, body))
                print(f"{t.name}: probe -> HTTP {resp.status_code} {resp.text.replace(chr(10), ' ')[:90]!r}")
                bad = clients[t.name].post(t.url, content=body, headers=c.slack_headers("wrong-secret", body))
                print(f"{t.name}: badly signed probe -> HTTP {bad.status_code} (must be 401)")
                if resp.status_code != 200 or bad.status_code != 401:
                    print(f"{t.name} does not behave like a Slack endpoint; stopping\n{c.tail(t.log)}",
                          file=sys.stderr)
                    return 1
            wait_drained(bot)
            bot.drain_wait = 0.0

            snaps = [Snapshot.take(bot, base)]
            t0 = time.perf_counter()
            run_sequential([bot, base], clients, run_id, warmup=args.warmup, total=args.seq,
                           block=args.seq_block)
            seq_wall = time.perf_counter() - t0
            snaps.append(Snapshot.take(bot, base))
        finally:
            for cl in clients.values():
                cl.close()
        t0 = time.perf_counter()
        asyncio.run(run_concurrent([bot, base], args.clients, args.per_client, args.rounds, run_id))
        conc_wall = time.perf_counter() - t0
        snaps.append(Snapshot.take(bot, base))
    finally:
        for proc in procs:
            c.stop(proc)

    for t in (bot, base):
        if t.errors:
            print(f"{t.name}: {len(t.errors)} failed request(s), first: {t.errors[0]}", file=sys.stderr)
    if bot.errors or base.errors:
        print("requests failed; figures are not valid (--keep keeps the server logs)", file=sys.stderr)
        return 1

    ratios = report(bot, base, snaps, args, (seq_wall, conc_wall))
    print()
    print("ack_ratio_p99 = chatops p99 / bare Bolt p99 under the concurrent load; "
          "seq_p50_ms = chatops sequential p50")
    print(f"ack_ratio_p99={ratios[('conc', 99)]:.3f} seq_p50_ms={c.percentile(bot.seq, 50) * 1000:.2f}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
