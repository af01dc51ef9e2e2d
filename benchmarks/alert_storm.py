"""Alert storm: 10,000 alerts in 500 webhook posts across 50 groups against the real server and a
rate-limiting fake Slack.

Each group gets 10 posts of 20 alerts: 6 posts of newly firing alerts, one duplicate of an earlier
post (an HA peer's copy), 3 posts resolving 60 of the 120. Posts are sent by 16 concurrent clients
to `chatops serve` running in a process of its own.
Prints alerts accepted per second, Slack calls made (against the budget of 3 per group plus 1 per
state change, a state change being a notification that changed something: a thread line), 429s
met, alerts lost (state in the database or on Slack's roots not what was sent), and seconds until
Slack shows the final state (against the floor the rate limit sets). The last line is
`alerts_per_s=<x> lost=<n> slack_calls=<n> unhandled_429=<n> settle_s=<s>`.

    .venv/bin/python benchmarks/alert_storm.py [--groups 50] [--per-second 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HOST, chatops_env, free_port, spawn_chatops, stop, tail, wait_ready  # noqa: E402

from bot.core.alerts import simulate as sim  # noqa: E402
from bot.persistence.db import Database  # noqa: E402
from bot.persistence.models import AlertGroup, AlertInstance, OutboxMessage  # noqa: E402
from tests.alerting import TOKEN, RateLimitedSlack, alert_config, roots  # noqa: E402
from tests.bot_server import DEFAULT_TOKEN, SECRET  # noqa: E402

T0 = datetime.now(UTC) - timedelta(minutes=30)
ENVS = (("staging", "high"), ("production", "critical"), ("staging", "warning"))


def group_posts(g: int) -> list[dict[str, Any]]:
    env, severity = ENVS[g % len(ENVS)]
    name = f"Storm{g:02d}"

    def one(i: int, status: str) -> dict[str, Any]:
        return sim.alert(name, status=status, severity=severity, env=env, starts_at=T0 + timedelta(seconds=i),
                         ends_at=T0 + timedelta(minutes=20) if status == "resolved" else None,
                         extra_labels={"pod": f"{name}-{i:03d}"})

    posts = [sim.notification([one(i, "firing") for i in range(b * 20, b * 20 + 20)]) for b in range(6)]
    posts.append(posts[3])  # the HA peer's copy of an earlier notification
    posts += [sim.notification([one(i, "resolved") for i in range(b * 20, b * 20 + 20)]) for b in range(3)]
    return posts


def _settle(db: Database, timeout: float) -> None:
    """Wait until the server's outbox has nothing left to send (read from its database file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as s:
            if s.execute(select(func.count()).where(OutboxMessage.status == "pending")).scalar_one() == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("the outbox did not drain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--per-second", type=int, default=20, help="fake Slack's calls per channel per second")
    args = parser.parse_args()
    per_group = [group_posts(g) for g in range(args.groups)]
    # interleave the groups, keeping each group's own order (Alertmanager sends one group at a time)
    order = [(g, p) for p in range(10) for g in range(args.groups)]
    alerts_sent = sum(len(per_group[g][p]["alerts"]) for g, p in order)
    with tempfile.TemporaryDirectory() as tmp, RateLimitedSlack(per_second=args.per_second) as fake:
        work = Path(tmp)
        db_url = f"sqlite:///{work / 'storm.db'}"
        port = free_port()
        env = chatops_env(work, signing_secret=SECRET, db_name="storm.db")
        env.update(CHATOPS_CONFIG=str(alert_config(work)), CHATOPS_SLACK_API_URL=fake.base_url,
                   CHATOPS_SLACK_BOT_TOKEN=DEFAULT_TOKEN, CHATOPS_ALERTMANAGER_TOKEN=TOKEN)
        # the real server: `chatops serve` in a process of its own, so that the load generator and the fake
        # Slack in this process do not share its interpreter
        proc = spawn_chatops(port, env, work, "storm.log")
        try:
            wait_ready(proc, port, timeout=60)
            url = f"http://{HOST}:{port}"
            bodies = {(g, p): json.dumps(per_group[g][p]).encode() for g, p in order}
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            clients = [httpx.Client(timeout=30) for _ in range(16)]
            statuses: list[int] = []

            def send_round(p: int) -> None:
                def send(g: int) -> int:
                    client = clients[g % len(clients)]
                    return client.post(f"{url}/alerts/alertmanager", content=bodies[(g, p)],
                                       headers=headers).status_code

                with ThreadPoolExecutor(16) as pool:
                    statuses.extend(pool.map(send, range(args.groups)))

            started = time.perf_counter()
            for p in range(10):  # one round per notification index: a group's posts stay in order
                send_round(p)
            accepted_s = time.perf_counter() - started
            for c in clients:
                c.close()
            db = Database(db_url)
            _settle(db, timeout=600)
            settle_s = time.perf_counter() - started - accepted_s
            with db.read() as s:
                firing = s.execute(select(func.count()).where(AlertInstance.status == "firing")).scalar_one()
                resolved = s.execute(select(func.count()).where(AlertInstance.status == "resolved")).scalar_one()
                groups = s.execute(select(func.count()).select_from(AlertGroup)).scalar_one()
                dead = s.execute(select(func.count()).where(OutboxMessage.status == "dead")).scalar_one()
            db.dispose()
            expected_firing, expected_resolved = 60 * args.groups, 60 * args.groups
            lost = abs(expected_firing - firing) + abs(expected_resolved - resolved) + sum(
                1 for s_ in statuses if s_ != 200)
            channels = {m["channel"] for m in fake.messages.values()}
            shown = [r for ch in channels for r in roots(fake, ch)]
            lost += sum(1 for r in shown if "*60 firing*, 60 resolved" not in
                        str(fake.message(r["channel"], r["ts"])["blocks"]))
            lost += abs(len(shown) - args.groups)
            ok_calls = [c for c in fake.calls if c.method in RateLimitedSlack.METHODS and c.ok]
            lines = sum(1 for c in ok_calls if c.method == "chat.postMessage" and c.params.get("thread_ts"))
            per_channel = {ch: sum(1 for c in ok_calls if c.params.get("channel") == ch) for ch in channels}
            floor = max(per_channel.values()) / args.per_second
        except Exception:
            print(tail(work / "storm.log"), file=sys.stderr)
            raise
        finally:
            stop(proc)
    budget = 3 * args.groups + lines
    print(f"posts: {len(order)} ({alerts_sent} alerts) accepted in {accepted_s:.2f}s; groups stored: {groups}")
    print(f"slack calls: {len(ok_calls)} (budget {budget}: 3 x {args.groups} groups + {lines} state changes); "
          f"per channel {sorted(per_channel.values())}; 429s met: {fake.limited}; dead rows: {dead}")
    print(f"settle: {settle_s:.2f}s after the last post (rate-limit floor {floor:.2f}s at "
          f"{args.per_second}/s per channel; target floor + 5s)")
    print(f"alerts_per_s={alerts_sent / accepted_s:.0f} lost={lost} slack_calls={len(ok_calls)} "
          f"unhandled_429={dead} settle_s={settle_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
