"""A/B experiment, not product code: the ack-time job written with Core statements.

For commands answered at ack time (/help, refusals, usage errors), `Dispatcher._finish_now`
schedules a job that claims the idempotency key and appends an audit record. Today both go
through the ORM (SAVEPOINT + add + flush + IntegrityError for the claim; SELECT head, add
record, mutate head, flush for the audit). Here the same transaction is four Core statements:
INSERT .. ON CONFLICT DO NOTHING (rowcount says whether we claimed it), SELECT the head,
INSERT the record, UPDATE the head. Same hash chain (`chatops audit verify` passes). SQLite only.

    .venv/bin/python benchmarks/ack_latency.py --bot-wrapper benchmarks/experiments/core_statements_job.py
"""

# ruff: noqa: I001 - isort sees this folder's imports differently from the project's
import sys
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

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


def _finish_now(self, inv, ctx, name, reply, outcome, audit_args, environment):  # noqa: ANN001, ANN202
    action = f"command.{name}"

    def job() -> None:
        with self.core.db.engine.begin() as conn:
            claimed = conn.execute(CLAIM, {"key": inv.idempotency_key[:200], "kind": "command",
                                           "created_at": datetime.now(UTC)}).rowcount == 1
            if not claimed:
                self.metrics.slack_duplicates.labels("command").inc()
                return
            seq, prev = conn.execute(HEAD).one()
            values = {"seq": seq + 1, "ts": now_iso(), "actor_id": ctx.actor.user_id,
                      "actor_name": ctx.actor.name, "channel": ctx.channel_id, "environment": environment,
                      "action": action, "args": canonical_args(audit_args), "outcome": outcome,
                      "correlation_id": ctx.correlation_id, "prev_hash": prev}
            values["hash"] = record_hash(values)
            conn.execute(ADD, values)
            conn.execute(MOVE_HEAD, {"seq": values["seq"], "hash": values["hash"]})
        self.metrics.commands.labels(name, outcome).inc()

    return Prepared(reply, job, name, outcome)


dispatch.Dispatcher._finish_now = _finish_now  # type: ignore[method-assign]

from bot.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
