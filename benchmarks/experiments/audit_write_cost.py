"""In-process micro-benchmark: CPU cost of the write behind one ack-time command (/help).

Builds the real container on a temporary SQLite file and times, single-threaded and without
HTTP, the job `Dispatcher.prepare()` returns for /help (claim the idempotency key, append the
audit record) against the same transaction written with Core statements, a batch of 20 in
one transaction, and the raw sqlite3 floor.

    .venv/bin/python benchmarks/experiments/audit_write_cost.py
"""

import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

REPO = Path(__file__).resolve().parents[2]
TMP = Path(tempfile.mkdtemp(prefix="chatops-audit-cost-"))
DB = TMP / "bench.db"
os.environ.update(CHATOPS_CONFIG=str(REPO / "chatops.example.yml"), CHATOPS_DATABASE_URL=f"sqlite:///{DB}",
                  CHATOPS_SLACK_BOT_TOKEN="xoxb-bench", CHATOPS_SLACK_SIGNING_SECRET="bench",
                  CHATOPS_SLACK_API_URL="http://127.0.0.1:9/api/")

from bot.container import build  # noqa: E402
from bot.persistence.audit import canonical_args, now_iso, record_hash  # noqa: E402
from bot.persistence.models import AuditHead, AuditRecord, ProcessedRequest  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.slack.app import command_invocation  # noqa: E402

CLAIM = sqlite_insert(ProcessedRequest).on_conflict_do_nothing(index_elements=["key"])
HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
ADD = insert(AuditRecord)
MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1)


def record(seq: int, prev: str) -> dict[str, object]:
    values: dict[str, object] = {
        "seq": seq + 1, "ts": now_iso(), "actor_id": "U0ALICE01", "actor_name": "alice",
        "channel": "C0STAGING1", "environment": None, "action": "command.help",
        "args": canonical_args({"command": "/help", "text": ""}), "outcome": "help",
        "correlation_id": uuid.uuid4().hex[:12], "prev_hash": prev}
    values["hash"] = record_hash(values)
    return values


def bench(label: str, fn: Callable[[], None], n: int, per_call: int = 1) -> None:
    for _ in range(max(3, n // 10)):
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"  {label:52} {cpu / n / per_call * 1000:6.3f} ms CPU  {wall / n / per_call * 1000:6.3f} ms wall")


def main() -> int:
    container = build(Settings())
    container.db.upgrade()
    engine = container.db.engine

    def body() -> dict[str, str]:
        return {"command": "/help", "text": "", "user_id": "U0ALICE01", "user_name": "alice",
                "channel_id": "C0STAGING1", "team_id": "T0BENCH01", "trigger_id": uuid.uuid4().hex,
                "response_url": "https://hooks.slack.com/commands/x"}

    def prepare() -> None:
        container.dispatcher.prepare(command_invocation(container, body()))

    def current_job() -> None:
        container.dispatcher.prepare(command_invocation(container, body())).job()

    def core_job() -> None:
        with engine.begin() as conn:
            key = {"key": f"cmd:T0BENCH01:{uuid.uuid4().hex}", "kind": "command",
                   "created_at": datetime.now(UTC)}
            if conn.execute(CLAIM, key).rowcount != 1:
                return
            seq, prev = conn.execute(HEAD).one()
            values = record(seq, prev)
            conn.execute(ADD, values)
            conn.execute(MOVE_HEAD, {"seq": values["seq"], "hash": values["hash"]})

    def batch_job(size: int = 20) -> None:
        with engine.begin() as conn:
            seq, prev = conn.execute(HEAD).one()
            rows = []
            for _ in range(size):
                key = {"key": f"cmd:T0BENCH01:{uuid.uuid4().hex}", "kind": "command",
                       "created_at": datetime.now(UTC)}
                if conn.execute(CLAIM, key).rowcount == 1:
                    values = record(seq, prev)
                    seq, prev = int(values["seq"]), str(values["hash"])  # type: ignore[call-overload]
                    rows.append(values)
            conn.execute(ADD, rows)
            conn.execute(MOVE_HEAD, {"seq": seq, "hash": prev})

    raw = sqlite3.connect(DB, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")

    def raw_job() -> None:
        raw.execute("BEGIN IMMEDIATE")
        cur = raw.execute("INSERT INTO processed_requests (key, kind, created_at) VALUES (?, ?, ?) "
                          "ON CONFLICT DO NOTHING",
                          (f"cmd:T0BENCH01:{uuid.uuid4().hex}", "command", datetime.now(UTC).isoformat()))
        if cur.rowcount == 1:
            seq, prev = raw.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            values = record(seq, prev)
            cols = list(values)
            raw.execute(f"INSERT INTO audit_log ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [values[c] for c in cols])
            raw.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
                        (values["seq"], values["hash"]))
        raw.execute("COMMIT")

    print("per /help command, single thread, no HTTP:")
    bench("Dispatcher.prepare() (the part before the ack)", prepare, 500)
    bench("its job as today (ORM: SAVEPOINT+flush, append)", current_job, 400)
    bench("same transaction, Core statements", core_job, 400)
    bench("Core statements, 20 commands per transaction", batch_job, 40, per_call=20)
    bench("raw sqlite3, same statements (floor)", raw_job, 400)
    raw.close()
    container.db.dispose()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        import shutil

        shutil.rmtree(TMP, ignore_errors=True)
