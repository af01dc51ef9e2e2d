"""The audit log at a million records: `/audit` filtered queries and `audit verify`, on SQLite and PostgreSQL.

  * data: N records (default 1,000,000) with a valid hash chain, computed by the product's own
    `bot.persistence.audit.record_hash` (and `canonical_args`), so `audit verify` passes. About a year
    of history: 40 actors (a few busy, most occasional), staging / production / none, a dozen actions
    (deploy steps, commands, outbox), a record every 0-60 s. The schema comes from the migrations
    (`Database.upgrade()`); rows go in by `executemany` (SQLite) and `COPY` (PostgreSQL), in one pass
    that feeds both databases the same rows;
  * PostgreSQL: a throwaway cluster started by tests/harness/postgres.py (fsync off), then ANALYZE;
  * queries: `bot.persistence.audit.page()` -- the function `/audit` (commands/audit.py) calls --
    with `limit = 11` (a page of 10 plus one to know whether there is an older page), for each kind:
    actor, environment, action prefix, time range (a week somewhere in the year), recent (--since 24h),
    environment + since, and an "Older records" page deep in the log (before_seq). Each query runs in
    a fresh read session; `--queries` per kind (default 100) after 5 warm-ups;
  * verify: `bot.persistence.audit.verify()` over the whole chain, timed, with the time to hash the
    same records in memory (no database) measured in the same run as the floor it is compared with.

    .venv/bin/python benchmarks/audit_scale.py [--records 1000000] [--queries 100] [--skip-pg]

The last line is `query_p95_ms_sqlite=… query_p95_ms_pg=… verify_s_per_million=…` (the slower
backend's verify, scaled to a million records). Targets: query p95 < 20 ms, verify < 10 s per million.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as c  # noqa: E402

from bot.persistence import audit  # noqa: E402
from bot.persistence.db import Database  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC)
ENVS = ("staging", "production", None)
ENV_WEIGHTS = (50, 30, 20)
ACTIONS = (("deploy.step.end", 25), ("deploy.step.start", 25), ("command.status", 20), ("command.deploy", 8),
           ("command.audit", 5), ("command.lock", 4), ("deploy.approve", 4), ("deploy.run.end", 4),
           ("command.help", 3), ("button.deploy.abort", 1), ("outbox.dead", 0.5), ("config.reload", 0.5))
PREFIXES = ("command.", "command.deploy", "deploy.step.", "deploy.approve", "button.", "outbox.")
COLUMNS = ("seq", "ts", "actor_id", "actor_name", "channel", "environment", "action", "args", "outcome",
           "correlation_id", "prev_hash", "hash")
CHUNK = 20_000


def actors() -> list[tuple[str, str, float]]:
    """(user id, name, weight): five busy people and 35 occasional ones."""
    out = []
    for i in range(40):
        weight = 12.0 if i < 5 else 1.0
        out.append((f"U0BENCH{i:03d}", f"person{i:02d}", weight))
    return out


def generate(n: int, seed: int = 7) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of rows in COLUMNS order, chained and hashed exactly as `audit.append` does."""
    rnd = random.Random(seed)
    people = actors()
    ids, weights = [p[:2] for p in people], [p[2] for p in people]
    names, action_w = [a for a, _ in ACTIONS], [w for _, w in ACTIONS]
    prev = audit.GENESIS
    ts = START
    chunk: list[tuple[Any, ...]] = []
    for seq in range(1, n + 1):
        ts += timedelta(microseconds=rnd.randrange(0, 60_000_000))
        (uid, name), = rnd.choices(ids, weights)
        env, = rnd.choices(ENVS, ENV_WEIGHTS)
        action, = rnd.choices(names, action_w)
        values: dict[str, Any] = {
            "seq": seq, "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "actor_id": uid, "actor_name": name, "channel": "C0DEPLOY01", "environment": env, "action": action,
            "args": audit.canonical_args({"command": "/" + action.split(".")[-1], "text": f"v2.{seq % 97}"}),
            "outcome": "ok" if rnd.random() < 0.9 else "denied", "correlation_id": f"bench-{seq}",
            "prev_hash": prev,
        }
        values["hash"] = prev = audit.record_hash(values)
        chunk.append(tuple(values[c_] for c_ in COLUMNS))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Loader:
    """Feeds one backend: opened with the product's schema, rows appended, head set at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.upgrade()
        self.raw: Any = db.engine.raw_connection()
        self.last: tuple[int, str] = (0, audit.GENESIS)
        if db.dialect == "sqlite":
            self.raw.driver_connection.execute("BEGIN")

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self.raw.driver_connection
        if self.db.dialect == "sqlite":
            conn.executemany(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             rows)
        else:
            with conn.cursor() as cur, cur.copy(f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        self.last = (rows[-1][0], rows[-1][-1])

    def finish(self) -> None:
        conn = self.raw.driver_connection
        params = {"seq": self.last[0], "hash": self.last[1]}
        if self.db.dialect == "sqlite":
            conn.execute("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1", params)
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
        else:
            with conn.cursor() as cur:
                cur.execute("UPDATE audit_head SET seq = %(seq)s, hash = %(hash)s WHERE id = 1", params)
            conn.commit()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM ANALYZE audit_log")
            conn.autocommit = False
        self.raw.close()


def query_kinds(n: int, rnd: random.Random) -> dict[str, Callable[[], tuple[audit.AuditFilter, int | None]]]:
    people = actors()
    span_end = START + timedelta(seconds=30 * n)  # the mean gap is 30 s

    def at(frac: float) -> str:
        return (START + (span_end - START) * frac).isoformat().replace("+00:00", "Z")

    def week() -> tuple[audit.AuditFilter, int | None]:
        f = rnd.random() * 0.95
        since = START + (span_end - START) * f
        until = (since + timedelta(days=7)).isoformat().replace("+00:00", "Z")
        return audit.AuditFilter(since=at(f), until=until), None

    return {
        "actor": lambda: (audit.AuditFilter(actor_ids=(rnd.choice(people)[0],)), None),
        "environment": lambda: (audit.AuditFilter(environment=rnd.choice(("staging", "production"))), None),
        "action_prefix": lambda: (audit.AuditFilter(action_prefix=rnd.choice(PREFIXES)), None),
        "time_range_week": week,
        "since_24h": lambda: (audit.AuditFilter(since=at(1.0 - 86400 / (30 * n))), None),
        "env_since_7d": lambda: (audit.AuditFilter(environment="production",
                                                   since=at(max(0.0, 1.0 - 7 * 86400 / (30 * n)))), None),
        "older_page_actor": lambda: (audit.AuditFilter(actor_ids=(rnd.choice(people)[0],)),
                                     rnd.randrange(1, n + 1)),
    }


def run_queries(db: Database, n: int, per_kind: int) -> tuple[dict[str, float], float]:
    """p95 in ms per kind and over every query."""
    rnd = random.Random(11)
    everything: list[float] = []
    per: dict[str, float] = {}
    for kind, make in query_kinds(n, rnd).items():
        times = []
        for i in range(per_kind + 5):
            flt, before = make()
            t0 = time.perf_counter()
            with db.read() as session:
                rows = audit.page(session, flt, before_seq=before, limit=11)
                _ = [r.seq for r in rows]
            dt = (time.perf_counter() - t0) * 1000
            if i >= 5:
                times.append(dt)
        per[kind] = c.percentile(times, 95)
        everything += times
    return per, c.percentile(everything, 95)


def hash_floor(n: int) -> float:
    """Seconds to re-hash n generated records in memory: what verify cannot go below in Python."""
    rows = [dict(zip(COLUMNS, row, strict=True)) for chunk in generate(min(n, 200_000)) for row in chunk]
    t0 = time.perf_counter()
    for values in rows:
        audit.record_hash(values)
    return (time.perf_counter() - t0) * n / len(rows)


def time_verify(db: Database, n: int) -> float:
    t0 = time.perf_counter()
    with db.read() as session:
        result = audit.verify(session)
    elapsed = time.perf_counter() - t0
    if not result.ok or result.checked != n:
        raise SystemExit(f"verify on {db.dialect} failed: {result}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100, help="timed queries per kind")
    ap.add_argument("--skip-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()
    n = args.records
    tmp = Path(tempfile.mkdtemp(prefix="chatops-audit-bench-"))
    pg: Any = None
    dbs: dict[str, Database] = {"sqlite": Database(f"sqlite:///{tmp}/audit.db")}
    try:
        if not args.skip_pg:
            from tests.harness.postgres import PostgresServer

            pg = PostgresServer().start()  # its own temp dir (owned by the postgres user as root)
            dbs["pg"] = Database(pg.url)
        loaders = [Loader(db) for db in dbs.values()]
        t0 = time.perf_counter()
        for chunk in generate(n):
            for loader in loaders:
                loader.add(chunk)
        for loader in loaders:
            loader.finish()
        print(f"loaded {n:,} records into {', '.join(dbs)} in {time.perf_counter() - t0:.1f}s", flush=True)
        floor = hash_floor(n)
        print(f"hash floor (in-memory re-hash of {n:,} records): {floor:.2f}s", flush=True)
        p95: dict[str, float] = {}
        verify_s: dict[str, float] = {}
        for name, db in dbs.items():
            per, p95[name] = run_queries(db, n, args.queries)
            detail = "  ".join(f"{k}={v:.2f}" for k, v in per.items())
            print(f"{name}: query p95 ms: {detail}  (all: {p95[name]:.2f})", flush=True)
            verify_s[name] = time_verify(db, n)
            print(f"{name}: verify {n:,} records in {verify_s[name]:.2f}s "
                  f"({verify_s[name] / floor:.2f}x the in-memory hash floor)", flush=True)
        size = (tmp / "audit.db").stat().st_size
        print(f"sqlite file: {size / 1e6:.0f} MB ({sqlite3.sqlite_version})")
        worst = max(verify_s.values()) * 1_000_000 / n
        pg_p95 = f"{p95['pg']:.2f}" if "pg" in p95 else "skipped"
        print(f"query_p95_ms_sqlite={p95['sqlite']:.2f} query_p95_ms_pg={pg_p95} verify_s_per_million={worst:.2f}")
        return 0
    finally:
        for db in dbs.values():
            db.dispose()
        if pg is not None:
            pg.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
