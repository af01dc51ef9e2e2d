"""The one outbound Slack path: a durable outbox and the worker that drains it.

Product code never calls Slack directly. It enqueues (`Outbox.post/update/ephemeral/respond/alert`)
in the same transaction as the change it reports; `OutboxWorker` delivers in order per
channel, waits out 429 `Retry-After`, backs off on 5xx and connection errors (doubling, capped,
jittered) and coalesces queued updates of one message. Each row carries a deadline
(`retry_until`): it is retried until then, for as long as it matters, and marked dead (logged,
audited, its dead-letter hook run) only when the deadline passes or Slack refuses it for good.
Rows are claimed with compare-and-set for `claim_seconds`, and the claim of the row being sent is
renewed by a heartbeat while the call is in flight, so several bot processes can share one
database and a survivor takes over a dead process's channel within seconds; pending rows
survive restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from bot.core.model import Reply
from bot.metrics import Metrics
from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage, SlackMessage, affected
from bot.timeutil import aware, utcnow

log = logging.getLogger(__name__)
#: how long a claim lasts unless renewed; the heartbeat renews it every third of that while a call is in flight
CLAIM_SECONDS = 10.0
#: an ordinary reply, thread line or update is worth retrying for this long by default
DEFAULT_RETRY = timedelta(minutes=15)
#: an alert to an incident channel: at least an hour
ALERT_RETRY = timedelta(hours=1)
#: the outbox kind of a PagerDuty event (`Outbox.page`); not a Slack call
PAGE_KIND = "pagerduty"
#: a row's `channel` that names a channel the outbox creates itself (`Outbox.create_channel`): the rows
#: for it share one lane, so they wait behind the create, and the real id is read once Slack made it
CHANNEL_REF = "ref:"


def channel_ref(key: str) -> str:
    """The `channel` for rows into the channel created under `key` (see `Outbox.create_channel`)."""
    return CHANNEL_REF + key
#: Slack accepts a response_url for 30 minutes after the command; a follow-up later than this is ephemeral
RESPONSE_URL_LIFETIME = timedelta(minutes=29)
#: the payload key of a post's follow-ups (`Outbox.follow`), never sent to Slack
THEN = "_then"
#: the built-in dead-letter hook of a follow-up sent to a response_url: say it ephemerally instead
REPLY_FALLBACK = "outbox.reply_fallback"

Clock = Callable[[], datetime]


# --- the transport port ----------------------------------------------------------------------
_Sel = TypeVar("_Sel", bound=Select[Any])

class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


class TransientError(Exception):
    """Worth retrying: 5xx, connection reset, timeout."""


class PermanentError(Exception):
    """Retrying cannot help: channel_not_found, invalid_auth, a refused response_url, ..."""


@dataclass(frozen=True)
class Delivered:
    channel: str | None = None
    ts: str | None = None


class Transport(Protocol):
    """Makes one Slack call for an outbox row (Slack Web API, or the console's renderer)."""

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered: ...


# --- dead letters and retry policy ----------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    """What a dead-letter hook is told about a row that will never be delivered."""

    row_id: int
    kind: str
    channel: str | None
    message_key: str | None
    ref: str | None  # what the poster passed as `ref` (e.g. a run id)
    reason: str  # "deadline" (retried until retry_until) or "permanent" (Slack refused it for good)
    error: str
    payload: dict[str, Any]


#: runs in the transaction that marks the row dead (and audits it), inside a savepoint
DeadHook = Callable[[Session, DeadLetter], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts of a transiently failing call: base * 2**n, capped, jittered.

    A random spread of up to `jitter` × the delay is added (so retries of many rows and replicas do not
    fall in step), or subtracted where adding it would pass the cap: a delay is never shorter than the
    plain doubling below the cap, and never longer than the cap.
    """

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    jitter: float = 0.5

    def delay(self, attempts: int, rng: random.Random) -> float:
        full = min(self.cap_seconds, self.base_seconds * 2 ** min(attempts, 30))
        spread = full * self.jitter * rng.random()
        return float(full + spread if full + spread <= self.cap_seconds else full - spread)


# --- enqueueing -----------------------------------------------------------------------------
class Outbox:
    """Enqueue Slack calls inside the caller's transaction, and hold the dead-letter hooks.

    Every enqueue takes `retry_until` (when the call stops being worth making; default: now +
    `default_retry`), `on_dead` (the name of a hook registered with `on_dead()`, run when the row
    dies) and `ref` (what that hook acts on, e.g. a run id).
    """

    def __init__(self, *, default_retry: timedelta = DEFAULT_RETRY, alert_retry: timedelta = ALERT_RETRY,
                 clock: Clock = utcnow) -> None:
        self._wakeups: list[threading.Event] = []
        self._hooks: dict[str, DeadHook] = {REPLY_FALLBACK: self._reply_fallback}
        self.default_retry = default_retry
        self.alert_retry = alert_retry
        self.clock = clock
        self._direct: OutboxWorker | None = None

    # the started worker of this process delivers the replies jobs send themselves
    def attach(self, worker: OutboxWorker) -> None:
        self._direct = worker

    def detach(self, worker: OutboxWorker) -> None:
        if self._direct is worker:
            self._direct = None

    def deliver_now(self, row_ids: list[int]) -> None:
        """Deliver the rows `respond(direct=True)` returned, now, in the caller's thread (after its commit).
        Without a started worker they are ordinary rows, already queued."""
        worker = self._direct
        if worker is not None and row_ids:
            worker.deliver_now(row_ids)

    def subscribe(self, event: threading.Event) -> None:
        self._wakeups.append(event)

    # dead-letter hooks
    def on_dead(self, name: str, hook: DeadHook) -> None:
        """Register `hook` under `name` (e.g. "deploy.plan_dead"); rows enqueued with `on_dead=name` run it
        when they die. One hook per name."""
        if name in self._hooks and self._hooks[name] is not hook:
            raise ValueError(f"a dead-letter hook named {name!r} is already registered")
        self._hooks[name] = hook

    def dead_hook(self, name: str) -> DeadHook | None:
        return self._hooks.get(name)

    def _add(self, session: Session, kind: str, channel: str | None, key: str | None,
             payload: dict[str, Any], *, retry_until: datetime | None = None, on_dead: str | None = None,
             ref: str | None = None, claimed_by: str | None = None, claim_seconds: float = 0.0) -> OutboxMessage:
        now = self.clock()
        # a pre-claimed row (delivered by the job that wrote it) is the worker's only once its claim lapses
        until = now + timedelta(seconds=claim_seconds) if claimed_by else None
        row = OutboxMessage(created_at=now, kind=kind, channel=channel, message_key=key, payload=payload,
                            status="pending", attempts=0, not_before=until or now,
                            retry_until=aware(retry_until) or now + self.default_retry,
                            on_dead=on_dead, ref=ref, claimed_by=claimed_by, claimed_until=until)
        session.add(row)
        # wake the local worker once the transaction commits (other processes poll)
        from sqlalchemy import event as sa_event

        wakeups = list(self._wakeups)

        def _after_commit(_session: Session) -> None:
            for ev in wakeups:
                ev.set()

        if not session.info.get("outbox_hooked"):
            session.info["outbox_hooked"] = True
            sa_event.listen(session, "after_commit", _after_commit, once=True)
        return row

    def post(self, session: Session, channel: str, reply: Reply, *, key: str | None = None,
             thread_key: str | None = None, retry_until: datetime | None = None, on_dead: str | None = None,
             ref: str | None = None) -> None:
        """Post a message; `key` names it for later updates, `thread_key` replies in that thread."""
        payload = reply.as_payload()
        if thread_key:
            payload["thread_key"] = thread_key
        self._add(session, "post", channel, key, payload, retry_until=retry_until, on_dead=on_dead, ref=ref)

    def alert(self, session: Session, channel: str, reply: Reply, *, on_dead: str | None = None,
              ref: str | None = None) -> None:
        """Post an alert (an incident channel): retried for `alert_retry` (at least an hour)."""
        self.post(session, channel, reply, retry_until=self.clock() + self.alert_retry, on_dead=on_dead, ref=ref)

    def update(self, session: Session, key: str, reply: Reply, *, retry_until: datetime | None = None) -> None:
        channel = _channel_of(session, key)
        self._add(session, "update", channel, key, reply.as_payload(), retry_until=retry_until)

    def ephemeral(self, session: Session, channel: str, user_id: str, reply: Reply, *,
                  retry_until: datetime | None = None) -> None:
        payload = reply.as_payload()
        payload["user"] = user_id
        self._add(session, "ephemeral", channel, None, payload, retry_until=retry_until)

    def create_channel(self, session: Session, key: str, names: list[str], *, retry_until: datetime | None = None,
                       on_dead: str | None = None, ref: str | None = None) -> None:
        """Create a public channel (conversations.create), trying `names` in order while Slack answers
        name_taken; the channel's id is recorded under `key` in `slack_messages`. Post into it (and
        invite to it) with `channel=channel_ref(key)`: those rows share the create's lane, so they wait
        for it, and they die if it dies."""
        if not names:
            raise ValueError("create_channel needs at least one name")
        self._add(session, "create_channel", channel_ref(key), key, {"names": list(names)},
                  retry_until=retry_until, on_dead=on_dead, ref=ref)

    def invite(self, session: Session, channel: str, users: list[str], usergroups: list[str] | None = None, *,
               retry_until: datetime | None = None) -> None:
        """Invite people (user ids) and the members of Slack user groups (subteam ids) to `channel`
        (conversations.invite; a channel id or `channel_ref(key)`)."""
        self._add(session, "invite", channel, None, {"users": list(users), "usergroups": list(usergroups or [])},
                  retry_until=retry_until)

    def home(self, session: Session, user_id: str, view: dict[str, Any]) -> None:
        """Publish a user's App Home tab (views.publish)."""
        self._add(session, "home", f"home:{user_id}", None, {"user": user_id, "view": view})

    def page(self, session: Session, env: str, event: dict[str, Any]) -> None:
        """Send a PagerDuty Events API v2 event (`integrations.pagerduty.PagerDutyEvent.to_json()`) for `env`.

        Kind `pagerduty`, delivered by its own worker (`kinds={PAGE_KIND}`), so paging never waits
        behind Slack nor Slack behind paging. The lane is the dedup key: trigger, acknowledge and resolve
        of one alert group keep their order, other groups do not wait for it. Retried like an alert (at
        least an hour). The row holds the environment's name, never the routing key (a secret)."""
        lane = f"pagerduty:{str(event.get('dedup_key', ''))[:180]}"
        self._add(session, PAGE_KIND, lane, None, {"env": env, "event": event},
                  retry_until=self.clock() + self.alert_retry)

    def respond(self, session: Session, response_url: str, reply: Reply, *, channel: str | None = None,
                retry_until: datetime | None = None, direct: bool = False, on_dead: str | None = None,
                ref: str | None = None) -> int | None:
        """Reply at a response_url. With `direct`, and a started worker in this process, the row is written
        claimed for that worker's direct deliveries and its id returned: the caller passes it to
        `deliver_now()` right after its commit (the reply then crosses no lane and no worker pass); the
        row is the durable fallback if that call fails or the process dies."""
        payload = reply.as_payload()
        payload.update(response_url=response_url, response_type="ephemeral" if reply.ephemeral else "in_channel",
                       replace_original=reply.replace_original)
        worker = self._direct if direct else None
        row = self._add(session, "respond", channel, None, payload, retry_until=retry_until, on_dead=on_dead,
                        ref=ref, claimed_by=worker.direct_id if worker else None,
                        claim_seconds=worker.claim_seconds if worker else 0.0)
        if worker is None:
            return None
        session.flush()
        return row.id

    # follow-ups: what to say once a post is delivered (e.g. "queued" -> "posted")
    def follow(self, session: Session, post_key: str, reply: Reply, *, response_url: str | None,
               channel: str | None, user_id: str) -> bool:
        """Once the pending post named `post_key` (written in this transaction) is delivered, replace the
        requester's reply with `reply`: at `response_url` (`replace_original`) while Slack still accepts it,
        else ephemerally in `channel`. False when there is no such pending post."""
        session.flush()
        row = session.execute(select(OutboxMessage).where(
            OutboxMessage.message_key == post_key, OutboxMessage.kind == "post",
            OutboxMessage.status == "pending").order_by(OutboxMessage.id.desc()).limit(1)).scalar_one_or_none()
        if row is None:
            return False
        spec = {"text": reply.text, "blocks": reply.blocks, "response_url": response_url, "channel": channel,
                "user": user_id, "until": (self.clock() + RESPONSE_URL_LIFETIME).isoformat()}
        row.payload = {**row.payload, THEN: [*row.payload.get(THEN, []), spec]}
        return True

    def enqueue_follow_ups(self, session: Session, follow_ups: list[dict[str, Any]]) -> None:
        """Called by the worker in the transaction that marks the post delivered."""
        for spec in follow_ups:
            reply = Reply(str(spec.get("text") or ""), blocks=spec.get("blocks"), replace_original=True)
            until = aware(datetime.fromisoformat(str(spec["until"]))) if spec.get("until") else None
            if spec.get("response_url") and until is not None and self.clock() < until:
                self.respond(session, str(spec["response_url"]), reply, channel=spec.get("channel"),
                             retry_until=until, on_dead=REPLY_FALLBACK, ref=str(spec["user"]))
            elif spec.get("channel"):
                self.ephemeral(session, str(spec["channel"]), str(spec["user"]), reply)

    def _reply_fallback(self, session: Session, dead: DeadLetter) -> None:
        """A follow-up Slack no longer takes at its response_url (expired, used up): say it ephemerally."""
        if dead.channel and dead.ref:
            self.ephemeral(session, dead.channel, dead.ref, Reply(str(dead.payload.get("text") or ""),
                                                              blocks=dead.payload.get("blocks")))


def _lane(row: OutboxMessage) -> str:
    """Rows of one lane are sent in order. A reply at a response_url is per request, not rate-limited per
    channel like chat.postMessage: it waits only for earlier replies at the same URL."""
    if row.kind == "respond" and row.payload.get("response_url"):
        return f"respond:{row.payload['response_url']}"
    return row.channel or f"row:{row.id}"


def _channel_of(session: Session, key: str) -> str | None:
    row = session.get(SlackMessage, key)
    if row is not None:
        return row.channel
    return session.execute(
        select(OutboxMessage.channel).where(OutboxMessage.message_key == key, OutboxMessage.kind == "post")
    ).scalar_one_or_none()


# --- the claim heartbeat --------------------------------------------------------------------
class _Heartbeat:
    """Renews the claims on the rows whose calls are in flight, every `every` seconds, from its own thread.

    A quick call (milliseconds) is never renewed; a slow one keeps its claim however long it takes, so
    no other process sends the same row meanwhile. Several rows can be in flight at once (the worker's
    one, and the replies jobs deliver themselves), each under its own owner. If this process dies,
    renewals stop and the claims lapse `claim_seconds` later.
    """

    def __init__(self, renew: Callable[[int, str], bool], every: float) -> None:
        self._renew = renew
        self.every = every
        self._rows: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, row_id: int, owner: str) -> Iterator[None]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="chatops-outbox-heartbeat", daemon=True)
                self._thread.start()
            self._rows[row_id] = owner
        try:
            yield
        finally:
            with self._lock:
                self._rows.pop(row_id, None)

    def _in_flight(self, row_id: int) -> bool:
        with self._lock:
            return row_id in self._rows

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                held = list(self._rows.items())
            for row_id, owner in held:
                try:
                    if not self._renew(row_id, owner) and self._in_flight(row_id):  # not just finished meanwhile
                        log.warning("outbox row %s: lost its claim while the call was in flight (another replica "
                                    "may send it too)", row_id)
                except Exception as exc:  # database down: the claim may lapse; nothing else to do
                    log.warning("outbox row %s: could not renew its claim: %s", row_id, exc)


# --- delivering -----------------------------------------------------------------------------
class OutboxWorker:
    """Delivers pending rows. `outbox` supplies the dead-letter hooks and the default deadline of rows
    written before deadlines existed; `clock` and `retry` exist so tests can simulate long outages.
    `max_attempts`, when given, is an extra cap on counted attempts (the deadline alone limits them
    otherwise)."""

    def __init__(self, db: Database, transport: Transport, metrics: Metrics, *, outbox: Outbox | None = None,
                 max_attempts: int | None = None, claim_seconds: float = CLAIM_SECONDS,
                 retry: RetryPolicy | None = None, clock: Clock = utcnow, rng: random.Random | None = None,
                 worker_id: str | None = None, kinds: frozenset[str] | None = None,
                 skip_kinds: frozenset[str] = frozenset()) -> None:
        self.db = db
        self.transport = transport
        self.metrics = metrics
        self.outbox = outbox
        self.max_attempts = max_attempts
        self.claim_seconds = claim_seconds
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        #: rows this worker sends: only `kinds` when given, never `skip_kinds` (a second worker with its own
        #: transport, e.g. PagerDuty's, takes those)
        self.kinds = kinds
        self.skip_kinds = skip_kinds
        #: the owner of the replies the jobs of this process deliver themselves (see `deliver_now`)
        self.direct_id = f"{self.worker_id}/direct"
        self.wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._heartbeat = _Heartbeat(self._renew, every=max(0.05, claim_seconds / 3))

    # life cycle
    def start(self, poll_seconds: float = 1.0) -> None:
        self._thread = threading.Thread(target=self._loop, args=(poll_seconds,), name="chatops-outbox",
                                        daemon=True)
        self._thread.start()
        if self.outbox is not None and self._sends("respond"):
            self.outbox.attach(self)  # the worker whose transport makes response_url calls

    def stop(self, flush_seconds: float = 5.0) -> None:
        deadline = utcnow() + timedelta(seconds=flush_seconds)
        while utcnow() < deadline and self.pending_due() > 0:
            self.wakeup.set()
            self._idle.wait(0.05)
        if self.outbox is not None:
            self.outbox.detach(self)
        self._stop.set()
        self.wakeup.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._heartbeat.stop()

    def _loop(self, poll_seconds: float) -> None:
        failing_since: float | None = None
        next_prune = time.monotonic() + 60
        while not self._stop.is_set():
            self.wakeup.clear()
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    self.prune()
                worked = self.drain_once()
                wait = 0.0 if worked else self._next_wait(poll_seconds)
                if failing_since is not None:
                    log.warning("outbox worker recovered after %.0fs", time.monotonic() - failing_since)
                    failing_since = None
            except Exception:
                # database down or similar: rows stay pending; say it once, then keep trying quietly
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.exception("outbox worker cannot reach the database; retrying every %.0fs", poll_seconds)
                worked, wait = 0, poll_seconds
            if not worked:
                self._idle.set()
                self.wakeup.wait(wait)
                self._idle.clear()

    def prune(self, older_than: timedelta = timedelta(days=7)) -> int:
        """Forget delivered outbox rows and idempotency keys older than `older_than` (Slack stops
        retrying a delivery within minutes; a week keeps plenty of margin)."""
        from sqlalchemy import delete

        from bot.persistence.models import ProcessedRequest

        cutoff = utcnow() - older_than
        with self.db.transaction() as session:
            sent = affected(session.execute(delete(OutboxMessage).where(OutboxMessage.status == "sent",
                                                                        OutboxMessage.sent_at < cutoff)))
            keys = affected(session.execute(delete(ProcessedRequest).where(ProcessedRequest.created_at < cutoff)))
        return sent + keys

    def _next_wait(self, poll_seconds: float) -> float:
        with self.db.read() as session:
            soonest = session.execute(
                self._mine(select(OutboxMessage.not_before).where(OutboxMessage.status == "pending"))
                .order_by(OutboxMessage.not_before).limit(1)
            ).scalar_one_or_none()
        if soonest is None:
            return poll_seconds
        delta = (aware(soonest) - self.clock()).total_seconds()  # type: ignore[operator]
        return max(0.01, min(poll_seconds, delta))

    def pending_due(self) -> int:
        with self.db.read() as session:
            return int(session.execute(
                self._mine(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "pending"))
            ).scalar_one())

    def drain_once(self) -> int:
        """Deliver every due row, in id order per channel. Returns how many calls were attempted."""
        now = self.clock()
        with self.db.read() as session:
            rows = list(session.execute(
                self._mine(select(OutboxMessage).where(OutboxMessage.status == "pending"))
                .order_by(OutboxMessage.id).limit(500)
            ).scalars())
        blocked: set[str] = set()
        attempted = 0
        for row in rows:
            lane = _lane(row)
            claimed_until = aware(row.claimed_until)
            if lane in blocked:
                continue
            if aware(row.not_before) > now or (claimed_until is not None and claimed_until > now  # type: ignore[operator]
                                                 and row.claimed_by != self.worker_id):
                blocked.add(lane)  # keep the order: nothing overtakes a waiting row of its channel
                continue
            if not self._claim(row.id):
                blocked.add(lane)
                continue
            attempted += 1
            if not self._deliver(row):
                blocked.add(lane)
        return attempted

    def _sends(self, kind: str) -> bool:
        return (self.kinds is None or kind in self.kinds) and kind not in (self.skip_kinds or ())

    def _mine(self, stmt: _Sel) -> _Sel:
        """`stmt` narrowed to the kinds of rows this worker sends."""
        if self.kinds is not None:
            stmt = stmt.where(OutboxMessage.kind.in_(sorted(self.kinds)))
        if self.skip_kinds:
            stmt = stmt.where(OutboxMessage.kind.not_in(sorted(self.skip_kinds)))
        return stmt
    # the replies a job delivers itself, right after its commit
    def deliver_now(self, row_ids: list[int]) -> None:
        """Deliver rows enqueued pre-claimed by `Outbox.respond(direct=True)`, from the caller's thread.

        The row was claimed (for `direct_id`) in the transaction that wrote it, so the worker leaves it
        alone while this call is made; a transient failure hands it back to the worker (its claim is
        dropped and its retry scheduled), and if this process dies the claim lapses and any replica
        sends it. A call that starts late (its claim half gone) claims the row again first.
        """
        with self.db.read() as session:
            rows = list(session.execute(
                select(OutboxMessage).where(OutboxMessage.id.in_(row_ids), OutboxMessage.status == "pending",
                                            OutboxMessage.claimed_by == self.direct_id)
                .order_by(OutboxMessage.id)).scalars())
        for row in rows:
            left = (aware(row.claimed_until) or self.clock()) - self.clock()
            if left.total_seconds() < self.claim_seconds / 2 and not self._claim(row.id, self.direct_id):
                continue  # the worker (or another replica) has it now
            if not self._deliver(row, owner=self.direct_id):
                self.wakeup.set()  # handed back to the worker, which retries it

    # claims: compare-and-set, renewed by the heartbeat while the call is in flight
    def _claim(self, row_id: int, owner: str | None = None) -> bool:
        # the time is read here, not at the start of the pass: a pass that spent seconds on a slow call
        # would otherwise hand out claims that are already expired
        now = self.clock()
        owner = owner or self.worker_id
        with self.db.transaction() as session:
            result = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, OutboxMessage.status == "pending",
                       or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now,
                           OutboxMessage.claimed_by == owner))
                .values(claimed_by=owner, claimed_until=now + timedelta(seconds=self.claim_seconds))
            )
            return affected(result) == 1

    def _renew(self, row_id: int, owner: str) -> bool:
        with self.db.transaction() as session:
            result = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, OutboxMessage.status == "pending",
                       OutboxMessage.claimed_by == owner)
                .values(claimed_until=self.clock() + timedelta(seconds=self.claim_seconds))
            )
            return affected(result) == 1

    # deadlines
    def _deadline(self, row: OutboxMessage) -> datetime:
        explicit = aware(row.retry_until)
        if explicit is not None:
            return explicit
        default = self.outbox.default_retry if self.outbox is not None else DEFAULT_RETRY
        return (aware(row.created_at) or self.clock()) + default

    def _deliver(self, row: OutboxMessage, owner: str | None = None) -> bool:
        """Make the call; True when the row is finished (sent, superseded or dead)."""
        now = self.clock()
        deadline = self._deadline(row)
        # a row still waiting for its first try (or a retry scheduled before the deadline) when the deadline
        # passed is no longer worth sending; a retry scheduled *at* the deadline is the last attempt
        if now > deadline and aware(row.not_before) < deadline - timedelta(milliseconds=1):  # type: ignore[operator]
            self._dead(row, self._deadline_error(row, deadline), reason="deadline")
            return True
        payload = dict(row.payload)
        then = payload.pop(THEN, None)  # follow-ups, enqueued once this call succeeds
        try:
            if row.kind == "update" and self._superseded(row):
                self._finish(row.id, "sent", error="superseded by a newer update")
                return True
            payload = self._resolve_refs(row, payload)
            channel = self._resolve_channel(row)
            with self._heartbeat.holding(row.id, owner or self.worker_id):
                delivered = self.transport.deliver(row.kind, channel, payload)
        except RateLimited as exc:
            self.metrics.outbox_retries.labels("rate_limited").inc()
            return self._retry_or_die(row, exc.retry_after, f"429 rate limited (Retry-After {exc.retry_after}s)",
                                      count=False, deadline=deadline)
        except TransientError as exc:
            self.metrics.outbox_retries.labels("transient").inc()
            if self.max_attempts is not None and row.attempts + 1 >= self.max_attempts:
                self._dead(row, f"gave up after {row.attempts + 1} attempts: {exc}", reason="attempts")
                return True
            return self._retry_or_die(row, self.retry.delay(row.attempts, self.rng), str(exc), count=True,
                                      deadline=deadline)
        except PermanentError as exc:
            self._dead(row, str(exc), reason="permanent")
            return True
        with self.db.transaction() as session:
            if row.kind == "post" and row.message_key and delivered.ts:
                session.merge(SlackMessage(key=row.message_key, channel=delivered.channel or row.channel or "",
                                           ts=delivered.ts, thread_ts=payload.get("thread_ts"), created_at=utcnow()))
            if row.kind == "create_channel" and row.message_key and delivered.channel:
                # a channel has no ts: "" (one create per channel keeps (channel, ts) unique)
                session.merge(SlackMessage(key=row.message_key, channel=delivered.channel, ts="", thread_ts=None,
                                           created_at=utcnow()))
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id)
                            .values(status="sent", sent_at=utcnow(), attempts=row.attempts + 1,
                                    claimed_until=None))
            if then and row.last_error and self.outbox is not None:
                # delivered after failing (an outage): tell whoever was told it is queued; a post that went
                # through at once needs no second message
                self.outbox.enqueue_follow_ups(session, then)
        self.metrics.outbox_sent.labels(row.kind).inc()
        return True

    def _retry_or_die(self, row: OutboxMessage, delay: float, error: str, *, count: bool,
                      deadline: datetime) -> bool:
        """Schedule the next attempt, no later than the deadline; at the deadline, the row is dead."""
        now = self.clock()
        if now >= deadline:
            attempts = row.attempts + (1 if count else 0)
            self._dead(row, f"still failing at its deadline after {attempts} attempt(s): {error}", reason="deadline")
            return True
        self._retry(row, min(now + timedelta(seconds=delay), deadline), error, count=count)
        return False

    @staticmethod
    def _deadline_error(row: OutboxMessage, deadline: datetime) -> str:
        last = f"; last error: {row.last_error}" if row.last_error else ""
        return f"not delivered by its deadline {deadline.isoformat(timespec='seconds')}{last}"

    def _superseded(self, row: OutboxMessage) -> bool:
        with self.db.read() as session:
            newer = session.execute(
                select(OutboxMessage.id).where(OutboxMessage.kind == "update",
                                               OutboxMessage.message_key == row.message_key,
                                               OutboxMessage.status == "pending", OutboxMessage.id > row.id)
                .limit(1)
            ).scalar_one_or_none()
        return newer is not None

    def _resolve_refs(self, row: OutboxMessage, payload: dict[str, Any]) -> dict[str, Any]:
        """Turn our message keys into Slack timestamps (the post was delivered before, in order)."""
        with self.db.read() as session:
            if row.kind == "update":
                msg = session.get(SlackMessage, row.message_key)
                if msg is None:
                    raise PermanentError(f"message {row.message_key!r} was never posted")
                payload["ts"] = msg.ts
                payload["channel"] = msg.channel
            thread_key = payload.pop("thread_key", None)
            if thread_key:
                parent = session.get(SlackMessage, thread_key)
                if parent is None:
                    if self._post_is_dead(session, thread_key):
                        raise PermanentError(f"thread parent {thread_key!r} could not be posted")
                    raise TransientError(f"thread parent {thread_key!r} not posted yet")
                payload["thread_ts"] = parent.ts
        return payload

    @staticmethod
    def _post_is_dead(session: Session, key: str, kind: str = "post") -> bool:
        statuses = set(session.execute(select(OutboxMessage.status).where(
            OutboxMessage.message_key == key, OutboxMessage.kind == kind)).scalars())
        return bool(statuses) and statuses <= {"dead"}

    def _resolve_channel(self, row: OutboxMessage) -> str | None:
        """The Slack channel id of a row addressed to `channel_ref(key)`: the channel created under `key`."""
        if row.kind == "create_channel" or not (row.channel or "").startswith(CHANNEL_REF):
            return row.channel
        key = (row.channel or "")[len(CHANNEL_REF):]
        with self.db.read() as session:
            created = session.get(SlackMessage, key)
            if created is not None:
                return created.channel
            if self._post_is_dead(session, key, "create_channel"):
                raise PermanentError(f"channel {key!r} could not be created")
        raise TransientError(f"channel {key!r} not created yet")

    def _retry(self, row: OutboxMessage, when: datetime, error: str, *, count: bool) -> None:
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(
                not_before=when, last_error=error[:1000],
                attempts=row.attempts + (1 if count else 0), claimed_until=None))
        log.warning("outbox row %s (%s to %s) will be retried in %.1fs: %s", row.id, row.kind, row.channel,
                    (when - self.clock()).total_seconds(), error)

    def _finish(self, row_id: int, status: str, *, error: str | None = None) -> None:
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row_id).values(
                status=status, sent_at=utcnow(), last_error=error, claimed_until=None))

    def _dead(self, row: OutboxMessage, error: str, *, reason: str) -> None:
        """Mark the row dead, audit it and run its dead-letter hook, all in one transaction (if the
        database fails half-way the row stays pending and dies again on the next pass)."""
        log.error("outbox row %s (%s to %s) could not be delivered: %s", row.id, row.kind, row.channel, error)
        with self.db.transaction() as session:
            marked = session.execute(
                update(OutboxMessage).where(OutboxMessage.id == row.id, OutboxMessage.status == "pending").values(
                    status="dead", last_error=error[:1000], attempts=row.attempts + 1, claimed_until=None)
            ).rowcount  # type: ignore[attr-defined]
            if marked != 1:  # another replica finished it meanwhile
                return
            append(session, AuditEntry(actor_id="bot", actor_name="swarm-chatops", channel=row.channel,
                                       action=("pagerduty" if row.kind == PAGE_KIND else "slack")
                                       + ".delivery_failed", outcome="dead",
                                       correlation_id=f"outbox-{row.id}",
                                       args={"kind": row.kind, "error": error, "reason": reason,
                                             "text": str(row.payload.get("text", ""))[:300],
                                             **({"on_dead": row.on_dead, "ref": row.ref} if row.on_dead else {})}))
            if row.on_dead:
                self._run_dead_hook(session, row, error, reason)
        self.metrics.outbox_dead.inc()

    def _run_dead_hook(self, session: Session, row: OutboxMessage, error: str, reason: str) -> None:
        hook = self.outbox.dead_hook(row.on_dead) if self.outbox is not None and row.on_dead else None
        if hook is None:
            log.error("outbox row %s: no dead-letter hook %r is registered in this process", row.id, row.on_dead)
            return
        letter = DeadLetter(row_id=row.id, kind=row.kind, channel=row.channel, message_key=row.message_key,
                            ref=row.ref, reason=reason, error=error, payload=dict(row.payload))
        try:
            with session.begin_nested():
                hook(session, letter)
        except Exception as exc:
            # the row is dead either way; the hook's own changes were rolled back to the savepoint
            log.exception("outbox row %s: dead-letter hook %r failed", row.id, row.on_dead)
            append(session, AuditEntry(actor_id="bot", actor_name="swarm-chatops", channel=row.channel,
                                       action="slack.dead_hook_failed", outcome="error",
                                       correlation_id=f"outbox-{row.id}",
                                       args={"hook": row.on_dead, "ref": row.ref, "error": str(exc)[:300]}))
