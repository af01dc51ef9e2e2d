"""A/B experiment, not product code: ack-time jobs group-committed by one writer thread.

Like core_statements_job.py, but the job only enqueues (key, audit entry), right on the event
loop: it is not handed to the TaskRunner's thread pool (a thread hand-off per request costs
more CPU than the write itself, see the README). One writer thread
takes everything queued (up to 500) and writes it in ONE transaction: one BEGIN IMMEDIATE,
one INSERT .. ON CONFLICT DO NOTHING per key, the head read once, the chain computed in
memory, one executemany INSERT of the records, one UPDATE of the head, one COMMIT. No timer:
while one batch is written the next one queues, so batching adds no latency when idle.
(Not shutdown-safe as written: a product version must flush the queue in Container.stop.)

    .venv/bin/python benchmarks/ack_latency.py --bot-wrapper benchmarks/experiments/group_commit_writer.py
"""

# ruff: noqa: I001 - isort sees this folder's imports differently from the project's
import logging
import queue
import sys
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot import tasks
from bot.persistence.audit import canonical_args, now_iso, record_hash
from bot.persistence.models import AuditHead, AuditRecord, ProcessedRequest

try:
    from commands import dispatch  # where the dispatcher lives now
except ImportError:  # older layout
    from bot.core import dispatch  # type: ignore[no-redef]
Prepared = dispatch.Prepared

CLAIM = sqlite_insert(ProcessedRequest).on_conflict_do_nothing(index_elements=["key"])
HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
ADD = insert(AuditRecord)
MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1)
PENDING: "queue.SimpleQueue[tuple[str, dict[str, Any], str, str]]" = queue.SimpleQueue()
_writer: threading.Thread | None = None
log = logging.getLogger("group_commit_writer")


def write_batches(db: Any, metrics: Any) -> None:
    while True:
        batch = [PENDING.get()]
        while len(batch) < 500:
            try:
                batch.append(PENDING.get_nowait())
            except queue.Empty:
                break
        try:
            counted = []
            with db.engine.begin() as conn:
                seq, prev = conn.execute(HEAD).one()
                records = []
                for key, partial, name, outcome in batch:
                    if conn.execute(CLAIM, {"key": key, "kind": "command",
                                            "created_at": datetime.now(UTC)}).rowcount != 1:
                        continue
                    values = dict(partial, seq=seq + 1, ts=now_iso(), prev_hash=prev)
                    values["hash"] = record_hash(values)
                    seq, prev = values["seq"], values["hash"]
                    records.append(values)
                    counted.append((name, outcome))
                if records:
                    conn.execute(ADD, records)
                    conn.execute(MOVE_HEAD, {"seq": seq, "hash": prev})
            for name, outcome in counted:
                metrics.commands.labels(name, outcome).inc()
        except Exception:
            log.exception("audit batch of %d failed", len(batch))


def _finish_now(self, inv, ctx, name, reply, outcome, audit_args, environment):  # noqa: ANN001, ANN202
    global _writer
    if _writer is None:
        _writer = threading.Thread(target=write_batches, args=(self.core.db, self.metrics), daemon=True,
                                   name="audit-writer")
        _writer.start()
    partial = {"actor_id": ctx.actor.user_id, "actor_name": ctx.actor.name, "channel": ctx.channel_id,
               "environment": environment, "action": f"command.{name}", "args": canonical_args(audit_args),
               "outcome": outcome, "correlation_id": ctx.correlation_id}
    item = (inv.idempotency_key[:200], partial, name, outcome)

    def job() -> None:
        PENDING.put(item)

    job.inline = True  # type: ignore[attr-defined]
    return Prepared(reply, job, name, outcome)


_submit = tasks.TaskRunner.submit


def submit(self, name, fn):  # noqa: ANN001, ANN201 - same signature as TaskRunner.submit
    if getattr(fn, "inline", False):  # a queue put: run it here instead of waking a pool thread
        fn()
        done: Future[None] = Future()
        done.set_result(None)
        return done
    return _submit(self, name, fn)


tasks.TaskRunner.submit = submit  # type: ignore[method-assign]


dispatch.Dispatcher._finish_now = _finish_now  # type: ignore[method-assign]

from bot.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
