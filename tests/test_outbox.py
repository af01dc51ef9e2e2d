"""The outbox against a real fake Slack: deadlines instead of an attempt count, capped backoff, dead-letter
hooks, and claims renewed while a slow call is in flight (two workers on one database).

Long outages run on a simulated clock: the worker is driven pass by pass and the clock jumps to the next
row's retry time, so three minutes of Slack answering 503 take a fraction of a second.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.model import Reply
from bot.metrics import Metrics
from bot.outbox import DeadLetter, Outbox, OutboxWorker, RetryPolicy
from bot.persistence import audit
from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database
from bot.persistence.models import AuditRecord, OutboxMessage
from bot.timeutil import aware, utcnow
from integrations.slack_web import SlackWebTransport
from tests.harness.slack_api import DEFAULT_TOKEN, FakeSlack

CHANNEL, INCIDENT = "C0STAGING1", "C0STAGEINC"


class SimClock:
    """utcnow() plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def jump_to(self, moment: datetime) -> None:
        self.offset += max(timedelta(0), moment - self())


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


def transport(fake: FakeSlack) -> SlackWebTransport:
    return SlackWebTransport(DEFAULT_TOKEN, fake.base_url, response_url_prefixes=[fake.response_url("")])


def worker(database: Database, fake: FakeSlack, outbox: Outbox, clock: Any = utcnow, **kw: Any) -> OutboxWorker:
    return OutboxWorker(database, transport(fake), Metrics(), outbox=outbox, clock=clock, **kw)


def enqueue(database: Database, outbox: Outbox, *texts: str, channel: str = CHANNEL, **kw: Any) -> None:
    with database.transaction() as session:
        for text in texts:
            outbox.post(session, channel, Reply(text, ephemeral=False), **kw)


def rows(database: Database) -> list[OutboxMessage]:
    with database.read() as session:
        return list(session.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def audit_actions(database: Database) -> list[tuple[str, dict[str, Any]]]:
    with database.read() as session:
        records = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
        return [(r.action, audit.as_dict(r)["args"]) for r in records]


def drive(w: OutboxWorker, clock: SimClock, database: Database, *, for_seconds: float) -> None:
    """Run the worker pass by pass for `for_seconds` of simulated time, jumping to each next retry."""
    end = clock() + timedelta(seconds=for_seconds)
    while clock() < end:
        w.drain_once()
        pending = [when for r in rows(database) if r.status == "pending" and (when := aware(r.not_before))]
        if not pending:
            return
        later = [when for when in pending if when > clock()]  # rows queued behind a waiting one are "due"
        if later:
            clock.jump_to(min(*later, end))


def texts_in(fake: FakeSlack, channel: str) -> list[str]:
    return [str(m.get("text")) for m in fake.messages_in(channel)]


# --- long outages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [503, None], ids=["http-503", "connection-dropped"])
def test_three_minute_slack_outage_loses_nothing(database: Database, fake: FakeSlack, failure: int | None) -> None:
    """Slack down for 3 (simulated) minutes: every queued reply and alert is retried throughout, with backoff
    capped at 30 s, then delivered once each, in order; nothing is dead."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = worker(database, fake, outbox, clock)
    enqueue(database, outbox, "m0", "m1", "m2")
    with database.transaction() as session:
        outbox.alert(session, INCIDENT, Reply("rolling back", ephemeral=False))
    fake.outage(failure)
    drive(w, clock, database, for_seconds=180)
    failed = [c for c in fake.calls_to("chat.postMessage") if c.faulted]
    assert len(failed) > 8  # the old outbox gave up after 8 attempts (about a minute)
    assert all(r.status == "pending" for r in rows(database))
    fake.end_outage()
    drive(w, clock, database, for_seconds=60)
    assert texts_in(fake, CHANNEL) == ["m0", "m1", "m2"]
    assert texts_in(fake, INCIDENT) == ["rolling back"]
    assert [r.status for r in rows(database)] == ["sent"] * 4
    assert not any(action == "slack.delivery_failed" for action, _ in audit_actions(database))


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    """Delays grow 0.5, 1, 2, … s (plus jitter) and never exceed the 30 s cap; at the cap they still vary."""
    import random

    policy, rng = RetryPolicy(base_seconds=0.5, cap_seconds=30.0), random.Random(7)
    for n in range(40):
        full = min(30.0, 0.5 * 2 ** n)
        delays = [policy.delay(n, rng) for _ in range(50)]
        assert all(0.5 * full <= d <= 30.0 for d in delays)
        if full * 1.5 <= 30.0:
            assert all(d >= full for d in delays)  # below the cap: never sooner than plain doubling
    at_cap = {round(policy.delay(20, rng), 6) for _ in range(20)}
    assert len(at_cap) > 1 and max(at_cap) <= 30.0


def test_reply_is_retried_until_its_deadline_then_dead_and_audited(database: Database, fake: FakeSlack) -> None:
    """An ordinary reply during an outage longer than its deadline (15 min by default): tried until the
    deadline (the last try at the deadline itself), then dead, logged and audited once with the reason."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = worker(database, fake, outbox, clock)
    enqueue(database, outbox, "too late")
    fake.outage(503)
    drive(w, clock, database, for_seconds=20 * 60)
    [row] = rows(database)
    assert row.status == "dead" and "deadline" in (row.last_error or "")
    tries = [c.at for c in fake.calls_to("chat.postMessage")]
    assert len(tries) >= 15 * 60 / 30  # at least one try every 30 s (the cap) for 15 minutes
    failures = [args for action, args in audit_actions(database) if action == "slack.delivery_failed"]
    assert len(failures) == 1 and failures[0]["reason"] == "deadline" and failures[0]["text"] == "too late"


def test_alert_outlives_an_ordinary_reply(database: Database, fake: FakeSlack) -> None:
    """After a 40-minute outage the reply is dead (15 min) but the alert (1 hour) is still being retried and
    is delivered when Slack returns."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = worker(database, fake, outbox, clock)
    enqueue(database, outbox, "reply")
    with database.transaction() as session:
        outbox.alert(session, INCIDENT, Reply("alert", ephemeral=False))
    fake.outage(503)
    drive(w, clock, database, for_seconds=40 * 60)
    fake.end_outage()
    drive(w, clock, database, for_seconds=60)
    assert [(r.payload["text"], r.status) for r in rows(database)] == [("reply", "dead"), ("alert", "sent")]
    assert texts_in(fake, INCIDENT) == ["alert"] and texts_in(fake, CHANNEL) == []


def test_rate_limits_are_waited_out_but_the_deadline_still_holds(database: Database, fake: FakeSlack) -> None:
    """429 Retry-After 600 for a row whose deadline is 5 minutes away: the retry is brought forward to the
    deadline, tried once more there, and the row is dead after it."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = worker(database, fake, outbox, clock)
    enqueue(database, outbox, "limited", retry_until=clock() + timedelta(minutes=5))
    fake.fail_next("chat.postMessage", status=429, retry_after=600, times=2)
    drive(w, clock, database, for_seconds=15 * 60)
    assert len(fake.calls_to("chat.postMessage")) == 2
    assert rows(database)[0].status == "dead"


# --- dead-letter hooks -------------------------------------------------------------------------------------
def recording_hook(seen: list[DeadLetter]) -> Any:
    def hook(session: Session, dead: DeadLetter) -> None:
        seen.append(dead)
        append(session, AuditEntry(actor_id="bot", actor_name="test", channel=None, action="test.hook_ran",
                                   outcome="ok", correlation_id="t", args={"ref": dead.ref}))
    return hook


def test_permanent_error_runs_the_dead_hook_at_once(database: Database, fake: FakeSlack) -> None:
    """not_in_channel is final: the row is dead on the first try and its hook runs in the same transaction,
    with the poster's ref; a dead row without a hook does not call it."""
    outbox, seen = Outbox(), []
    outbox.on_dead("test.hook", recording_hook(seen))
    w = worker(database, fake, outbox)
    fake.fail_next("chat.postMessage", error="not_in_channel")
    enqueue(database, outbox, "plan", on_dead="test.hook", ref="r-1234")
    w.drain_once()
    [dead] = seen
    assert (dead.ref, dead.reason, dead.kind) == ("r-1234", "permanent", "post")
    assert "not_in_channel" in dead.error
    actions = [a for a, _ in audit_actions(database)]
    assert actions == ["slack.delivery_failed", "test.hook_ran"]
    fake.fail_next("chat.postMessage", error="channel_not_found")
    enqueue(database, outbox, "no hook")
    w.drain_once()
    assert len(seen) == 1


def test_deadline_runs_the_dead_hook(database: Database, fake: FakeSlack) -> None:
    """A row with a deadline (e.g. a plan until its approval window ends) that Slack never accepts runs its
    hook with reason "deadline" once the deadline has passed."""
    clock = SimClock()
    outbox, seen = Outbox(clock=clock), []
    outbox.on_dead("test.hook", recording_hook(seen))
    w = worker(database, fake, outbox, clock)
    enqueue(database, outbox, "plan", retry_until=clock() + timedelta(minutes=30), on_dead="test.hook", ref="r-9")
    fake.outage(503)
    drive(w, clock, database, for_seconds=29 * 60)
    assert seen == [] and rows(database)[0].status == "pending"
    drive(w, clock, database, for_seconds=2 * 60)
    assert [(d.ref, d.reason) for d in seen] == [("r-9", "deadline")]


def test_a_failing_hook_still_marks_the_row_dead_and_is_audited(database: Database, fake: FakeSlack) -> None:
    """A hook that raises: its own writes are rolled back, the row is dead, the failure audited; the chain
    stays valid."""
    outbox = Outbox()

    def broken(session: Session, dead: DeadLetter) -> None:
        append(session, AuditEntry(actor_id="bot", actor_name="test", channel=None, action="test.half_done",
                                   outcome="ok", correlation_id="t", args={}))
        raise RuntimeError("hook bug")

    outbox.on_dead("test.broken", broken)
    w = worker(database, fake, outbox)
    fake.fail_next("chat.postMessage", error="channel_not_found")
    enqueue(database, outbox, "x", on_dead="test.broken", ref="r-1")
    w.drain_once()
    assert rows(database)[0].status == "dead"
    actions = audit_actions(database)
    assert [a for a, _ in actions] == ["slack.delivery_failed", "slack.dead_hook_failed"]
    assert actions[1][1]["error"] == "hook bug"
    with database.read() as session:
        assert audit.verify(session).ok


def test_hook_names_are_registered_once() -> None:
    """Two different hooks under one name is a wiring mistake and says so."""
    outbox = Outbox()
    outbox.on_dead("x", recording_hook([]))
    with pytest.raises(ValueError, match="already registered"):
        outbox.on_dead("x", recording_hook([]))


def test_thread_replies_to_a_dead_post_die_instead_of_waiting(database: Database, fake: FakeSlack) -> None:
    """A thread reply whose parent post is dead can never be placed: dead at once, not retried for 15 min."""
    outbox = Outbox()
    w = worker(database, fake, outbox)
    fake.fail_next("chat.postMessage", error="not_in_channel")
    with database.transaction() as session:
        outbox.post(session, CHANNEL, Reply("parent", ephemeral=False), key="run:r-1")
        outbox.post(session, CHANNEL, Reply("child", ephemeral=False), thread_key="run:r-1")
    w.drain_once()
    w.drain_once()
    assert [r.status for r in rows(database)] == ["dead", "dead"]
    assert "could not be posted" in (rows(database)[1].last_error or "")


# --- claims -------------------------------------------------------------------------------------------------
def test_slow_call_keeps_its_claim_so_the_other_worker_never_sends_it_twice(database: Database,
                                                                         fake: FakeSlack) -> None:
    """Claims last 1 s here, and Slack takes 3 s to answer the first post: the heartbeat renews the claim
    while the call is in flight, so the second worker waits instead of posting it again; order holds."""
    outbox = Outbox()
    workers = [worker(database, fake, outbox, claim_seconds=1.0, worker_id=f"w{n}") for n in (1, 2)]
    fake.delay_next("chat.postMessage", 3.0)
    enqueue(database, outbox, "slow", "next")
    for w in workers:
        outbox.subscribe(w.wakeup)
        w.start(poll_seconds=0.1)
    try:
        fake.wait_for("chat.postMessage", count=2, timeout=15)
    finally:
        for w in workers:
            w.stop(flush_seconds=5)
    assert texts_in(fake, CHANNEL) == ["slow", "next"]
    assert [r.status for r in rows(database)] == ["sent", "sent"]


def test_claim_of_a_worker_that_stopped_renewing_is_taken_over(database: Database, fake: FakeSlack) -> None:
    """A row claimed by a worker that is gone (its claim not renewed) is sent by another once the claim
    lapses — seconds, not a minute — and the rest of its channel follows in order."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    enqueue(database, outbox, "m0", "m1")
    gone = worker(database, fake, outbox, clock, worker_id="gone")
    assert gone._claim(rows(database)[0].id)  # claimed, then the process "died" before sending
    survivor = worker(database, fake, outbox, clock, worker_id="survivor")
    assert survivor.drain_once() == 0  # the lane waits behind the live claim
    claimed_until = aware(rows(database)[0].claimed_until)
    assert claimed_until is not None and claimed_until - clock() <= timedelta(seconds=survivor.claim_seconds)
    clock.jump_to(claimed_until + timedelta(milliseconds=10))
    assert survivor.drain_once() == 2
    assert texts_in(fake, CHANNEL) == ["m0", "m1"]


def test_two_workers_share_a_burst_without_duplicates_or_reordering(database: Database, fake: FakeSlack) -> None:
    """Two workers draining 30 messages across three channels: each delivered once, in order per channel."""
    outbox = Outbox()
    channels = ["C0STAGING1", "C0PRODDEP1", "C0STAGEINC"]
    with database.transaction() as session:
        for n in range(30):
            outbox.post(session, channels[n % 3], Reply(f"{channels[n % 3]}-{n}", ephemeral=False))
    workers = [worker(database, fake, outbox, worker_id=f"w{n}") for n in (1, 2)]
    threads = [threading.Thread(target=lambda w=w: [w.drain_once() for _ in range(40)]) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for channel in channels:
        expected = [f"{channel}-{n}" for n in range(30) if channels[n % 3] == channel]
        assert texts_in(fake, channel) == expected
