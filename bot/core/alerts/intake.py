"""From an Alertmanager notification to alert state, a living root message and its thread.

`AlertIntake.accept()` is the webhook's unit of work: claim the notification's dedup key (a
retry or the HA peer's copy changes nothing), `ingest()` it, audit it and enqueue the Slack work,
all in one transaction. Per alert (by fingerprint) only a change is news: newly firing (or
firing again with a later `startsAt`) or newly resolved; a repeat, a stale retry or a moved
`endsAt` is stored quietly. News becomes one thread line per notification and an update of the
root, which the outbox coalesces (a newer pending update supersedes older ones) while the thread
lines, posts of their own, are never held back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.config import Config
from bot.core.alerts.batch import IntakeBatcher
from bot.core.alerts.hooks import ActionsProvider, AlertEvent, AlertHooks, root_actions
from bot.core.alerts.payload import Alert, Notification
from bot.core.alerts.render import render_changes, render_root
from bot.core.alerts.routing import Route, route
from bot.core.model import new_correlation_id
from bot.core.unit_of_work import ALERTMANAGER, Work, unit_of_work
from bot.outbox import Outbox
from bot.persistence.db import Database
from bot.persistence.idempotency import claim
from bot.persistence.models import AlertGroup, AlertInstance, SlackMessage
from bot.timeutil import aware, utcnow

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class IngestResult:
    duplicate: bool
    group_id: int | None = None
    status: str | None = None
    opened: bool = False
    firing: int = 0  # alerts newly firing in this notification
    resolved: int = 0  # alerts newly resolved
    channel: str | None = None


@dataclass
class _Changes:
    firing: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


def group_hash(group_key: str) -> str:
    return hashlib.sha256(group_key.encode()).hexdigest()


def group(session: Session, group_id: int, *, for_update: bool = False) -> AlertGroup | None:
    """An alert group by id (locked for the caller's transaction with `for_update`)."""
    stmt = select(AlertGroup).where(AlertGroup.id == group_id)
    return session.execute(stmt.with_for_update() if for_update else stmt).scalar_one_or_none()


def group_by_message(session: Session, channel: str, ts: str) -> AlertGroup | None:
    """The group whose root message is Slack's (channel, ts) — what a button click on the root carries."""
    key = session.execute(select(SlackMessage.key).where(SlackMessage.channel == channel, SlackMessage.ts == ts)
                          ).scalar_one_or_none()
    if key is None:
        return None
    return session.execute(select(AlertGroup).where(AlertGroup.message_key == key)).scalar_one_or_none()


def root_message(session: Session, grp: AlertGroup) -> tuple[str, str] | None:
    """(channel, ts) of the group's root once Slack has it, else None (still queued)."""
    msg = session.get(SlackMessage, grp.message_key)
    return (msg.channel, msg.ts) if msg is not None else None


def firing_instances(session: Session, group_id: int) -> list[AlertInstance]:
    return list(session.execute(select(AlertInstance).where(AlertInstance.group_id == group_id,
                                                            AlertInstance.status == "firing")
                                .order_by(AlertInstance.starts_at, AlertInstance.fingerprint)).scalars())


class AlertIntake:
    """Alert intake over one database and outbox. `hooks` and `actions` are its extension points."""

    def __init__(self, config: Config, db: Database, outbox: Outbox, *, clock: Clock = utcnow) -> None:
        self.config = config
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.hooks = AlertHooks()
        self.actions: ActionsProvider = root_actions
        self.batcher: IntakeBatcher[IngestResult] = IntakeBatcher(self.accept_many)

    def submit(self, notification: Notification) -> Future[IngestResult]:
        """The webhook's way in: `accept()` as part of the next group commit (see `batch.py`); the future's
        result is the `IngestResult`, or the exception that refused the delivery."""
        return self.batcher.submit(notification)

    def accept(self, notification: Notification) -> IngestResult:
        """The unit of work of one webhook delivery (raises `BackendUnavailable` when the database is down)."""
        with unit_of_work(self.db, notification.dedup_key(), "alertmanager", actor=ALERTMANAGER,
                          correlation_id=new_correlation_id()) as work:
            if work is None:
                return IngestResult(duplicate=True)
            return self.ingest(work, notification)

    def accept_many(self, notifications: Sequence[Notification]) -> list[IngestResult | Exception]:
        """`accept()` for a batch (the webhook's group commit, `batch.IntakeBatcher`): one transaction, each
        notification in a savepoint of its own. Per notification its `IngestResult`, or the exception that
        refused it (its part rolled back, the others kept); an exception from the commit itself is raised."""
        outcomes: list[IngestResult | Exception] = []
        with self.db.transaction() as session:
            for n in notifications:
                key = n.dedup_key()
                try:
                    with session.begin_nested():
                        if not claim(session, key, "alertmanager"):
                            outcomes.append(IngestResult(duplicate=True))
                            continue
                        outcomes.append(self.ingest(Work(session, key, ALERTMANAGER, new_correlation_id()), n))
                except Exception as exc:  # noqa: BLE001 - this delivery's own failure, answered to it
                    outcomes.append(exc)
        return outcomes

    def refresh_root(self, session: Session, grp: AlertGroup) -> None:
        """Enqueue an update of the root with the group's present state (after an ack, a silence, ...)."""
        self.outbox.update(session, grp.message_key, render_root(grp, firing_instances(session, grp.id),
                                                                 self.clock(), self.actions(grp)))

    # --- the change itself ----------------------------------------------------------------------
    def ingest(self, work: Work, n: Notification) -> IngestResult:
        session, now = work.session, self.clock()
        labels = {**n.common_labels, **n.group_labels}
        where = route(self.config, labels)
        grp, opened = self._current(session, n, where, now)
        changes = self._apply(session, grp, n.alerts, now)
        firing = session.execute(select(func.count()).where(AlertInstance.group_id == grp.id,
                                                            AlertInstance.status == "firing")).scalar_one()
        total = session.execute(select(func.count()).where(AlertInstance.group_id == grp.id)).scalar_one()
        was = grp.status
        grp.firing_count, grp.resolved_count = int(firing), int(total) - int(firing)
        grp.status = "firing" if firing else "resolved"
        # an acknowledged group is not announced again (its root's update and a reopen mention nobody)
        grp.severity, grp.mention = where.severity, "none" if grp.acked_by else where.mention
        grp.common_labels, grp.common_annotations = dict(n.common_labels), dict(n.common_annotations)
        grp.summary = n.common_annotations.get("summary") or grp.summary
        grp.external_url, grp.receiver = n.external_url or grp.external_url, n.receiver
        grp.generator_url = next((a.generator_url for a in n.alerts if a.status == "firing" and a.generator_url),
                                 grp.generator_url)
        grp.updated_at = now
        all_resolved_after: float | None = None
        reopened_after: float | None = None
        if grp.status == "resolved" and (was == "firing" or opened):
            grp.resolved_at = max((a.ends_at for a in changes.resolved if a.ended), default=now)
            all_resolved_after = (aware(grp.resolved_at) - aware(grp.opened_at)).total_seconds()  # type: ignore[operator]
        elif grp.status == "firing" and was == "resolved" and not opened:
            reopened_after = max(0.0, (_refired_at(n, now) - (aware(grp.resolved_at) or now)).total_seconds())
            grp.reopened += 1
            grp.resolved_at = None
        if not (changes.firing or changes.resolved) and not opened:
            return IngestResult(False, grp.id, grp.status, False, 0, 0, grp.channel)
        grp.version_no += 1
        session.flush()
        self._enqueue(session, grp, changes, opened, reopened_after, all_resolved_after, now)
        work.audit("alert.notification", "ok", environment=grp.environment, channel=grp.channel, args={
            "group_key": n.group_key[:300], "group_id": grp.id, "status": grp.status, "severity": grp.severity,
            "opened": opened, "reopened": reopened_after is not None,
            "firing": [a.fingerprint for a in changes.firing][:50],
            "resolved": [a.fingerprint for a in changes.resolved][:50]})
        self._emit(work, grp, n, changes, opened, reopened_after is not None, all_resolved_after is not None)
        return IngestResult(False, grp.id, grp.status, opened, len(changes.firing), len(changes.resolved),
                            grp.channel)

    def _current(self, session: Session, n: Notification, where: Route,
                 now: datetime) -> tuple[AlertGroup, bool]:
        """The group row this notification belongs to (locked) and whether it was just opened: a new
        group, or one that resolved longer than the reopen window ago (a new episode, a new root)."""
        ghash = group_hash(n.group_key)
        latest = self._latest(session, ghash, where.channel)
        if latest is not None:
            if latest.status == "firing" or not _beyond_window(latest, n, self.config.alerts.reopen_minutes):
                return latest, False
        episode = (latest.episode + 1) if latest is not None else 1
        opened_at = min((a.starts_at for a in n.alerts), default=now)
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        title = n.label("alertname") or ", ".join(sorted({a.name for a in n.alerts}))[:200]
        key = f"alert:{ghash[:16]}:{where.channel}:{episode}"
        session.execute(insert(AlertGroup).values(
            group_hash=ghash, group_key=n.group_key, channel=where.channel, episode=episode,
            environment=where.environment, receiver=n.receiver, severity=where.severity, mention=where.mention,
            status="firing", title=title, summary=None, group_labels=dict(n.group_labels),
            common_labels=dict(n.common_labels), common_annotations=dict(n.common_annotations),
            external_url=n.external_url or None, generator_url=None, firing_count=0, resolved_count=0,
            opened_at=opened_at, resolved_at=None, reopened=0, updated_at=now, message_key=key, version_no=0,
        ).on_conflict_do_nothing(index_elements=["group_hash", "channel", "episode"]))
        grp = self._latest(session, ghash, where.channel)
        assert grp is not None
        # another delivery may have opened it first (PostgreSQL, concurrently): then it is not ours to post
        return grp, grp.version_no == 0

    @staticmethod
    def _latest(session: Session, ghash: str, channel: str) -> AlertGroup | None:
        return session.execute(
            select(AlertGroup).where(AlertGroup.group_hash == ghash, AlertGroup.channel == channel)
            .order_by(AlertGroup.episode.desc()).limit(1).with_for_update()
        ).scalar_one_or_none()

    @staticmethod
    def _apply(session: Session, grp: AlertGroup, alerts: list[Alert], now: datetime) -> _Changes:
        known = {i.fingerprint: i for i in session.execute(
            select(AlertInstance).where(AlertInstance.group_id == grp.id,
                                        AlertInstance.fingerprint.in_({a.fingerprint for a in alerts}))).scalars()}
        changes = _Changes()
        for alert in alerts:
            row = known.get(alert.fingerprint)
            if row is None:
                row = AlertInstance(group_id=grp.id, fingerprint=alert.fingerprint, alertname=alert.name[:200],
                                    status=alert.status, starts_at=alert.starts_at, ends_at=alert.ended,
                                    labels=dict(alert.labels), annotations=dict(alert.annotations),
                                    generator_url=alert.generator_url or None, updated_at=now)
                session.add(row)
                known[alert.fingerprint] = row
                (changes.firing if alert.status == "firing" else changes.resolved).append(alert)
                continue
            starts = aware(row.starts_at)
            assert starts is not None
            if alert.starts_at < starts or (alert.status == row.status and alert.starts_at == starts):
                if alert.starts_at == starts:
                    row.ends_at = alert.ended  # a repeat (or a moved endsAt): nothing to say
                continue
            if alert.status == "firing" and alert.starts_at == starts:
                continue  # a late retry of a notification from before this alert resolved
            (changes.firing if alert.status == "firing" else changes.resolved).append(alert)
            row.status, row.starts_at, row.ends_at = alert.status, alert.starts_at, alert.ended
            row.labels, row.annotations = dict(alert.labels), dict(alert.annotations)
            row.generator_url, row.updated_at = alert.generator_url or row.generator_url, now
        session.flush()
        return changes

    def _enqueue(self, session: Session, grp: AlertGroup, changes: _Changes, opened: bool,
                 reopened_after: float | None, all_resolved_after: float | None, now: datetime) -> None:
        root = render_root(grp, firing_instances(session, grp.id), now, self.actions(grp))
        if opened:
            # critical and high go to incident channels: retried as long as any alert (at least an hour)
            until = now + self.outbox.alert_retry if grp.severity != "medium" else None
            self.outbox.post(session, grp.channel, root, key=grp.message_key, retry_until=until, ref=str(grp.id))
        else:
            self.outbox.update(session, grp.message_key, root)
        if changes.firing or changes.resolved or reopened_after is not None:
            line = render_changes(grp, changes.firing, changes.resolved, reopened_after=reopened_after,
                                  all_resolved_after=all_resolved_after)
            self.outbox.post(session, grp.channel, line, thread_key=grp.message_key)

    def _emit(self, work: Work, grp: AlertGroup, n: Notification, changes: _Changes, opened: bool,
              reopened: bool, resolved: bool) -> None:
        def event(kind: str, alerts: list[Alert]) -> None:
            self.hooks.emit(work, AlertEvent(kind, grp, tuple(alerts), n))

        if opened:
            event("opened", changes.firing)
        if reopened:
            event("reopened", changes.firing)
        if changes.firing:
            event("firing", changes.firing)
        if changes.resolved and not resolved:
            event("alert_resolved", changes.resolved)
        if resolved:
            event("resolved", changes.resolved)



def _refired_at(n: Notification, now: datetime) -> datetime:
    """When the group fired again: its newest firing alert's start (the alerts' own clock, not ours)."""
    return max((a.starts_at for a in n.alerts if a.status == "firing"), default=now)


def _beyond_window(latest: AlertGroup, n: Notification, reopen_minutes: float) -> bool:
    """Whether this notification fires a resolved group again later than the reopen window allows."""
    resolved_at = aware(latest.resolved_at)
    if resolved_at is None or not any(a.status == "firing" for a in n.alerts):
        return False
    return _refired_at(n, resolved_at) - resolved_at > timedelta(minutes=reopen_minutes)
