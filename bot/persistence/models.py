"""SQLAlchemy 2.x tables. Every change goes through an Alembic migration in `migrations/`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CursorResult,
    DateTime,
    Index,
    Integer,
    Result,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, for plain statements (SQLAlchemy types `__table__` as any FromClause)."""
    return cast(Table, model.__table__)


def affected(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (its result is a CursorResult; `Session.execute` is typed as any Result)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


class AuditRecord(Base):
    """One append-only, hash-chained audit entry. `seq` is gap-free: 1, 2, 3, ..."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))  # ISO-8601 UTC, part of the hashed content
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_name: Mapped[str | None] = mapped_column(String(128))
    channel: Mapped[str | None] = mapped_column(String(64))
    environment: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(128))
    args: Mapped[str] = mapped_column(Text)  # canonical JSON, secrets redacted
    outcome: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        # (column, seq): `/audit` pages newest first under a filter (migration 0003)
        Index("ix_audit_ts_seq", "ts", "seq"),
        Index("ix_audit_actor_seq", "actor_id", "seq"),
        Index("ix_audit_env_seq", "environment", "seq"),
        Index("ix_audit_action_seq", "action", "seq"),
    )


class AuditHead(Base):
    """A single row (id=1) naming the chain's last record: appenders lock it, verify compares it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class DbHeartbeat(Base):
    """One row (id=1) that `/readyz` upserts: readiness means the database accepted a write."""

    __tablename__ = "db_heartbeat"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    checked_by: Mapped[str] = mapped_column(String(100))


class ProcessedRequest(Base):
    """Idempotency keys of Slack deliveries already acted on (survives restarts and replicas)."""

    __tablename__ = "processed_requests"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxMessage(Base):
    """A Slack call waiting to be made. Written in the same transaction as the change it reports."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))  # post | update | ephemeral | respond
    channel: Mapped[str | None] = mapped_column(String(64))
    message_key: Mapped[str | None] = mapped_column(String(200))  # our name for a posted message
    payload: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # 0003: how long the call is worth retrying (NULL: created_at + the default), and what to run if it dies
    retry_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    on_dead: Mapped[str | None] = mapped_column(String(64))  # a dead-letter hook name, e.g. deploy.plan_dead
    ref: Mapped[str | None] = mapped_column(String(200))  # what the hook acts on, e.g. the run id

    __table_args__ = (Index("ix_outbox_pending", "status", "not_before"),)


class SlackMessage(Base):
    """Where a message we posted lives, so later updates can find it by our key."""

    __tablename__ = "slack_messages"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("channel", "ts", name="uq_slack_messages_channel_ts"),)


class Run(Base):
    """A workflow run (deploy, stop-trading, resume-trading, rollback, ...): its plan, approvals state and
    execution, persisted so any replica can resume it. `kind` names the workflow, `subject` is the
    workflow's typed subject as versioned JSON (for a deploy: version, image, previous image, strategy)."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    environment: Mapped[str] = mapped_column(String(64))
    subject: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    dry_run: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_name: Mapped[str | None] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(64))
    plan: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    plan_hash: Mapped[str] = mapped_column(String(64))
    approvals_required: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    version_no: Mapped[int] = mapped_column(Integer, default=1)  # compare-and-set on every transition
    abort_requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)
    rollback_reason: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    correlation_id: Mapped[str] = mapped_column(String(64))
    parent_run_id: Mapped[str | None] = mapped_column(String(32))  # e.g. the deploy a /rollback undoes

    __table_args__ = (Index("ix_runs_state", "state"), Index("ix_runs_env_created", "environment", "created_at"),
                      Index("ix_runs_kind", "kind"))


class RunStep(Base):
    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)  # runs.states.Phase
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # runs.states.StepStatus
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON, default=dict)  # type: ignore[type-arg]


class Approval(Base):
    __tablename__ = "approvals"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str | None] = mapped_column(String(128))
    plan_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EnvLock(Base):
    """One holder per environment: a deploy run, or a freeze from /lock."""

    __tablename__ = "env_locks"

    environment: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # run | freeze
    run_id: Mapped[str | None] = mapped_column(String(32))
    held_by: Mapped[str] = mapped_column(String(64))
    held_by_name: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TradingHalt(Base):
    """Trading in an environment is halted by a person (/stop-trading) until /resume-trading lifts it.

    While a halt stands no workflow resumes trading on its own (a deploy's resume step leaves it halted)."""

    __tablename__ = "trading_halts"

    environment: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    halted_by: Mapped[str] = mapped_column(String(64))
    halted_by_name: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))  # graceful | emergency
    halted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PendingCommand(Base):
    """A delivery acknowledged to Slack whose job has not finished yet (0005). Written before the ack,
    deleted in the job's own transaction; a row left behind by a crash is leased and run by any process."""

    __tablename__ = "pending_commands"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # the delivery's idempotency key
    kind: Mapped[str] = mapped_column(String(32))  # command | action | event
    payload: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]  # enough to prepare it again
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_pending_commands_claimed_until", "claimed_until"),)


class RunSignal(Base):
    """An outside event a running workflow must act on at once (0008): e.g. a critical alert in the run's
    environment, which fails a canary analysis or monitoring window. Written by the event's transaction,
    read by the run's analysis loop, marked consumed when the run acted on it; `dedup_key` makes a
    repeated delivery of the same event a no-op."""

    __tablename__ = "run_signals"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))  # fail_analysis
    source: Mapped[str] = mapped_column(String(64))  # alertmanager
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    dedup_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    consumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("run_id", "dedup_key", name="uq_run_signals_run_dedup"),
                      Index("ix_run_signals_run", "run_id", "consumed_at"))


class Checklist(Base):
    """A tickable checklist posted in Slack (an incident's, a finished rollback's: runbook 8.3) (0007).
    `key` is the owner's name for it (`incident:12`, `rollback:r-…`); `message_key` the outbox key of
    its message, which is re-rendered on every tick."""

    __tablename__ = "checklists"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # the role that may tick items (bot.config.Role)
    message_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version_no: Mapped[int] = mapped_column(Integer, default=1)


class ChecklistItem(Base):
    __tablename__ = "checklist_items"

    checklist_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(300))
    done_by: Mapped[str | None] = mapped_column(String(64))
    done_by_name: Mapped[str | None] = mapped_column(String(128))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Incident(Base):
    """A declared incident (`/incident declare`, or an alert): its channel, suspect deploy, alert group and
    time to recover (0007). `channel_key` names the created channel in `slack_messages` once Slack made it."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    title: Mapped[str] = mapped_column(String(200))
    severity: Mapped[int] = mapped_column(Integer)
    environment: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # open | resolved
    channel_name: Mapped[str] = mapped_column(String(80))  # the name asked for (Slack may add a suffix)
    declared_by: Mapped[str] = mapped_column(String(64))
    declared_by_name: Mapped[str | None] = mapped_column(String(128))
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when it began (an alert's startsAt)
    suspect_run_id: Mapped[str | None] = mapped_column(String(32))
    alert_group_id: Mapped[str | None] = mapped_column(String(200))
    alert_link: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolved_by_name: Mapped[str | None] = mapped_column(String(128))
    resolution: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_incidents_env_declared", "environment", "declared_at"),
                      Index("ix_incidents_status", "status"))


class IncidentNote(Base):
    """A note (`/incident note`) or status update (`/incident status`) of an incident, for its timeline."""

    __tablename__ = "incident_notes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    incident_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    kind: Mapped[str] = mapped_column(String(16))  # note | status
    text: Mapped[str] = mapped_column(Text)
    author_id: Mapped[str] = mapped_column(String(64))
    author_name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_incident_notes_incident", "incident_id", "created_at"),)
class AlertGroup(Base):
    """One Alertmanager group (`groupKey`) in one channel, for one firing episode (0007): its root message
    (`message_key` → `slack_messages`), state and counts. A group firing again within the reopen window
    keeps its row; later it starts a new episode (a new row and root). `acked_*` and `silence*` belong to
    the root's buttons."""

    __tablename__ = "alert_groups"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    group_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of group_key (keys can be long)
    group_key: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(64))
    episode: Mapped[int] = mapped_column(Integer)
    environment: Mapped[str | None] = mapped_column(String(64))
    receiver: Mapped[str] = mapped_column(String(500), default="")
    severity: Mapped[str] = mapped_column(String(16))  # critical | high | medium
    mention: Mapped[str] = mapped_column(String(16), default="none")  # here | channel | none
    status: Mapped[str] = mapped_column(String(16))  # firing | resolved
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    group_labels: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    common_labels: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    common_annotations: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    external_url: Mapped[str | None] = mapped_column(Text)
    generator_url: Mapped[str | None] = mapped_column(Text)
    firing_count: Mapped[int] = mapped_column(Integer, default=0)
    resolved_count: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message_key: Mapped[str] = mapped_column(String(200))
    acked_by: Mapped[str | None] = mapped_column(String(64))
    acked_by_name: Mapped[str | None] = mapped_column(String(128))
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    silence_id: Mapped[str | None] = mapped_column(String(64))
    silenced_by: Mapped[str | None] = mapped_column(String(64))
    silenced_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version_no: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (UniqueConstraint("group_hash", "channel", "episode", name="uq_alert_groups_episode"),
                      Index("ix_alert_groups_env_status", "environment", "status"))


class AlertInstance(Base):
    """One alert (by fingerprint) of a group: its last known status and times, for dedup and the root's counts."""

    __tablename__ = "alert_instances"

    group_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    alertname: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    labels: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    annotations: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    generator_url: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
