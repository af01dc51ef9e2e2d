"""A command's reply at its `response_url` is sent by the job itself right after its commit, with the outbox
row as the durable fallback; and a reply that said a post was *queued* says *posted* once it is delivered.

The real bot over HTTP against a FakeSlack (replies, held and failing calls), and the outbox on its own with a
simulated clock for the half-hour limit of a `response_url`.
"""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.model import Reply
from bot.metrics import Metrics
from bot.outbox import Outbox, OutboxWorker
from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage
from tests.bot_server import RunningBot, start_bot
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    PROD_DEPLOY,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    wait_until,
)
from tests.test_outbox import SimClock, drive, transport

CHANNEL = "C0STAGING1"


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, f"sqlite:///{tmp_path / 'bot.db'}", outbox_claim_seconds=1)
    yield running
    running.stop()


def reply_rows(running: RunningBot) -> list[OutboxMessage]:
    with running.container.db.read() as session:
        return list(session.execute(select(OutboxMessage).where(OutboxMessage.kind == "respond")
                                    .order_by(OutboxMessage.id)).scalars())


def status_command(running: RunningBot, name: str) -> None:
    resp = running.command("/swarm-status", "", ALICE, name=name, channel=CHANNEL)
    assert resp.status_code == 200 and not resp.content, resp.text  # deferred: the answer comes at response_url


# --- the job delivers its own reply ----------------------------------------------------------------------
def test_a_reply_does_not_wait_behind_its_channels_posts(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """A post to the channel is in flight (Slack holds chat.postMessage for 20 s): a /swarm-status typed in
    that channel is answered at its response_url meanwhile, by the job (the row is marked sent under the
    worker's direct owner), not after the post, as it was when replies queued in the channel's lane."""
    fake_slack.delay_next("chat.postMessage", 20)
    with bot.container.db.transaction() as session:
        bot.container.outbox.post(session, CHANNEL, Reply("a long deploy message", ephemeral=False))
    fake_slack.wait_for("chat.postMessage")  # the worker's call is now held by Slack
    status_command(bot, "status-1")
    [post] = fake_slack.wait_for_response("status-1", timeout=10)
    assert "staging" in str(post.body.get("text", "")).lower()
    with bot.container.db.read() as session:
        statuses = dict(session.execute(select(OutboxMessage.kind, OutboxMessage.status)).all())
    assert statuses["post"] == "pending"  # still in flight when the reply arrived
    wait_until(lambda: reply_rows(bot)[0].status == "sent", 10, "the reply row to be marked sent")
    assert reply_rows(bot)[0].claimed_by == bot.container.worker.direct_id


def test_a_burst_of_replies_is_delivered_once_each(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """30 commands at once: the jobs and the outbox worker never both send a reply (each claim is taken in
    the transaction that writes the row): one post per response_url, every row sent."""
    names = [f"burst-{i}" for i in range(30)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda n: status_command(bot, n), names))
    for name in names:
        fake_slack.wait_for_response(name, timeout=20)
    bot.settle(20)
    counts = {n: sum(1 for r in fake_slack.responses if r.name == n) for n in names}
    assert set(counts.values()) == {1}, counts
    assert {r.status for r in reply_rows(bot)} == {"sent"}


def test_a_failed_direct_reply_is_retried_by_the_outbox(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """Slack answers the job's own POST with a 503: the row goes back to the outbox worker, which sends it
    again; the user sees one reply."""
    fake_slack.fail_next("response/flaky", status=503)
    status_command(bot, "flaky")
    posts = fake_slack.wait_for_response("flaky", count=2, timeout=15)
    assert [p.faulted for p in posts] == [True, False]
    row = wait_until(lambda: (r := reply_rows(bot)[0]).status == "sent" and r, 10, "the reply to be sent")
    assert row.attempts == 2 and row.claimed_by == bot.container.worker.worker_id


def test_a_reply_left_by_a_dead_process_is_sent_by_a_survivor(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """A process committed a job with its reply claimed for its own direct delivery and died before making
    the call: once the claim lapses (1 s here) the surviving process's worker sends it, once."""
    dead_worker = OutboxWorker(bot.container.db, transport(fake_slack), Metrics(), claim_seconds=1,
                               worker_id="deadhost:4242:0")
    dead_outbox = Outbox()
    dead_outbox.attach(dead_worker)  # as its start() does
    with bot.container.db.transaction() as session:
        row_id = dead_outbox.respond(session, fake_slack.response_url("orphan"), Reply("the answer"),
                                     channel=CHANNEL, direct=True)
    assert row_id is not None  # ... and the process is gone before it calls deliver_now
    bot.container.worker.wakeup.set()
    [post] = fake_slack.wait_for_response("orphan", timeout=15)
    assert post.body["text"] == "the answer"
    row = wait_until(lambda: (r := reply_rows(bot)[0]).status == "sent" and r, 10, "the orphan to be sent")
    assert row.claimed_by == bot.container.worker.worker_id
    bot.settle(5)
    assert sum(1 for r in fake_slack.responses if r.name == "orphan") == 1


# --- "queued" until posted --------------------------------------------------------------------------------
def responses_about(fake: FakeSlack, run_id: str) -> list[Any]:
    return [r for r in fake.responses if isinstance(r.body, dict) and f"run `{run_id}`" in str(r.body.get("text"))]


def test_a_plan_delayed_by_a_slack_outage_is_reported_posted_once_it_is(deployer: Deployer) -> None:
    """chat.postMessage fails for a while (503s): the requester is told the plan is queued; once the outbox
    gets the plan into the deploy channel, a second reply at the same response_url (`replace_original`,
    which replaces it where Slack can; a slash command's reply gets it as a new ephemeral message) says it
    is posted, with the time the approval window ends."""
    fake = deployer.fake
    fake.fail_next("chat.postMessage", status=503, times=3)
    reply, run_id = deployer.deploy("v2.3 --env production --canary")
    assert "queued" in reply and "posted" not in reply
    [first, second] = wait_until(lambda: len(r := responses_about(fake, run_id)) == 2 and r, 30,
                                 "the follow-up reply")
    assert first.body.get("replace_original") is False
    assert second.body["replace_original"] is True and second.name == first.name
    assert "posted" in second.body["text"] and "queued" not in second.body["text"]
    assert f"<#{PROD_DEPLOY}>" in second.body["text"] and re.search(r"by \d\d:\d\d UTC", second.body["text"])
    posts = [c for c in fake.calls_to("chat.postMessage") if c.params.get("channel") == PROD_DEPLOY]
    assert [c.faulted for c in posts][:4] == [True, True, True, False]
    assert posts[3].at <= second.at  # said only after it was so
    assert deployer.run(run_id).state == "pending_approval"


def test_a_plan_posted_at_once_gets_no_second_message(deployer: Deployer) -> None:
    """Slack takes the plan on the first try: the requester's one reply is all they get."""
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.message_ts(run_id)  # the plan is in the channel
    deployer.bot.settle(10)
    assert len(responses_about(deployer.fake, run_id)) == 1


def test_a_plan_slack_refuses_is_never_reported_posted(deployer: Deployer) -> None:
    """The plan post dies (not_in_channel): no follow-up says it is posted (the requester gets the DM of
    the dead-letter hook instead)."""
    deployer.fake.fail_next("chat.postMessage", error="not_in_channel")
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    deployer.wait_state(run_id, "aborted")
    deployer.bot.settle(10)
    assert [("posted" in str(r.body.get("text"))) for r in responses_about(deployer.fake, run_id)] == [False]


# --- the follow-up on its own: the half-hour life of a response_url ----------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


def queue_plan_with_follow_up(database: Database, outbox: Outbox, fake: FakeSlack) -> None:
    with database.transaction() as session:
        outbox.post(session, PROD_DEPLOY, Reply("the plan", ephemeral=False), key="run:r-1",
                    retry_until=outbox.clock() + timedelta(hours=2))
        assert outbox.follow(session, "run:r-1", Reply("Plan posted"), response_url=fake.response_url("req"),
                             channel=CHANNEL, user_id=ALICE)


def test_after_half_an_hour_the_follow_up_is_ephemeral(database: Database, fake: FakeSlack) -> None:
    """The plan is delivered 40 (simulated) minutes after the command, when Slack no longer takes its
    response_url: the requester is told ephemerally in the channel where they typed it."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = OutboxWorker(database, transport(fake), Metrics(), outbox=outbox, clock=clock)
    queue_plan_with_follow_up(database, outbox, fake)
    fake.outage(503)
    drive(w, clock, database, for_seconds=40 * 60)
    fake.end_outage()
    drive(w, clock, database, for_seconds=120)
    assert [m["text"] for m in fake.messages_in(PROD_DEPLOY)] == ["the plan"]
    assert [r for r in fake.responses if not r.faulted] == []
    [call] = [c for c in fake.calls_to("chat.postEphemeral") if not c.faulted]
    assert (call.params["channel"], call.params["user"], call.params["text"]) == (CHANNEL, ALICE, "Plan posted")


def test_a_follow_up_slack_refuses_at_the_response_url_becomes_ephemeral(database: Database,
                                                                         fake: FakeSlack) -> None:
    """The response_url is refused for good (expired early, or used up): the follow-up is said ephemerally
    instead (the outbox's built-in dead-letter hook), and the dead row is audited."""
    clock = SimClock()
    outbox = Outbox(clock=clock)
    w = OutboxWorker(database, transport(fake), Metrics(), outbox=outbox, clock=clock)
    queue_plan_with_follow_up(database, outbox, fake)
    fake.fail_next("chat.postMessage", status=503)  # a short outage: the plan goes through on its retry
    fake.fail_next("response/req", status=404)
    drive(w, clock, database, for_seconds=60)
    [refused] = [r for r in fake.responses if r.name == "req"]
    assert refused.faulted and refused.body["replace_original"] is True
    [call] = [c for c in fake.calls_to("chat.postEphemeral") if not c.faulted]
    assert (call.params["channel"], call.params["user"], call.params["text"]) == (CHANNEL, ALICE, "Plan posted")
