"""PagerDuty Events API v2: the client against the stand-in over real HTTP, and paging through the outbox on
its own worker (retried on 5xx/429, never in Slack's way, the routing key never stored)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.core.model import Reply
from bot.errors import BackendUnavailable, IntegrationError
from bot.metrics import Metrics
from bot.outbox import PAGE_KIND, Outbox, OutboxWorker, RetryPolicy
from bot.persistence.db import Database
from bot.persistence.models import AuditRecord, OutboxMessage
from integrations.pagerduty import PagerDutyClient, PagerDutyEvent, PagerDutyRateLimited, PagerDutyTransport
from integrations.slack_web import SlackWebTransport
from tests.alerting import pagerduty
from tests.harness.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.harness.slack_api import DEFAULT_TOKEN, FakeSlack

__all__ = ["pagerduty"]
KEY = DEFAULT_ROUTING_KEY
CHANNEL = "C0STAGEINC"


@pytest.fixture
def client(pagerduty: FakePagerDuty) -> Iterator[PagerDutyClient]:
    pd = PagerDutyClient(pagerduty.url, timeout=1.0)
    yield pd
    pd.close()


def trigger(key: str = "am:production:{}:{alertname=\"Down\"}") -> PagerDutyEvent:
    return PagerDutyEvent("trigger", key, summary="[production] TradingBotDown: 3 bots down", severity="critical",
                          source="alertmanager/production", custom_details={"firing": 3},
                          links=(("http://prom/graph", "Prometheus"),))


def test_trigger_acknowledge_resolve_share_one_dedup_key(pagerduty: FakePagerDuty, client: PagerDutyClient) -> None:
    """The stand-in receives trigger, acknowledge and resolve with one dedup key, and the trigger's payload."""
    event = trigger()
    assert client.send(event, KEY) == event.dedup_key
    client.send(PagerDutyEvent("acknowledge", event.dedup_key), KEY)
    client.send(PagerDutyEvent("resolve", event.dedup_key), KEY)
    assert pagerduty.actions(event.dedup_key) == ["trigger", "acknowledge", "resolve"]
    first = pagerduty.events[0]
    assert first["payload"] == {"summary": event.summary, "source": "alertmanager/production",
                                "severity": "critical", "custom_details": {"firing": 3}}
    assert first["links"] == [{"href": "http://prom/graph", "text": "Prometheus"}]


def test_unknown_routing_key_is_refused_clearly_and_scrubbed(client: PagerDutyClient) -> None:
    """A 400 (unknown routing key) is an IntegrationError with PagerDuty's reason, never naming the key."""
    with pytest.raises(IntegrationError) as caught:
        client.send(trigger(), "WRONGKEY00000000000000000000000X")
    assert not isinstance(caught.value, BackendUnavailable)
    assert "Invalid routing key" in caught.value.message and "WRONGKEY" not in caught.value.message


def test_5xx_429_and_timeouts_are_transient(pagerduty: FakePagerDuty, client: PagerDutyClient) -> None:
    """503 and a stall past the timeout are BackendUnavailable; 429 carries PagerDuty's Retry-After."""
    pagerduty.fail_next(1, 503)
    with pytest.raises(BackendUnavailable, match="503"):
        client.send(trigger(), KEY)
    pagerduty.fail_next(1, 429, retry_after=7)
    with pytest.raises(PagerDutyRateLimited) as caught:
        client.send(trigger(), KEY)
    assert caught.value.retry_after == 7
    pagerduty.delay_next(1, 3.0)
    with pytest.raises(BackendUnavailable, match="timed out"):
        client.send(trigger(), KEY)
    assert pagerduty.events == []


def test_event_without_summary_is_refused_before_sending() -> None:
    """A trigger without a summary or with an unknown severity is a ValueError, not a request."""
    with pytest.raises(ValueError, match="summary"):
        PagerDutyEvent("trigger", "k", summary=" ")
    with pytest.raises(ValueError, match="severity"):
        PagerDutyEvent("trigger", "k", summary="x", severity="high")  # type: ignore[arg-type]


# --- through the outbox ---------------------------------------------------------------------------------
@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def workers(database: Database, outbox: Outbox, pagerduty: FakePagerDuty,
            slack: FakeSlack) -> tuple[OutboxWorker, OutboxWorker]:
    """The container's arrangement: Slack's worker skips pages, the PagerDuty worker sends only them."""
    web = SlackWebTransport(DEFAULT_TOKEN, slack.base_url, response_url_prefixes=[slack.response_url("")])
    slack_worker = OutboxWorker(database, web, Metrics(), outbox=outbox, skip_kinds=frozenset({PAGE_KIND}))
    pd = PagerDutyTransport(PagerDutyClient(pagerduty.url, timeout=1.0), {"production": KEY}.get)
    page_worker = OutboxWorker(database, pd, Metrics(), outbox=outbox, kinds=frozenset({PAGE_KIND}),
                               retry=RetryPolicy(base_seconds=0.05, cap_seconds=0.2))
    return slack_worker, page_worker


def test_pages_are_retried_through_the_outbox_and_keep_their_order(database: Database, pagerduty: FakePagerDuty,
                                                                   slack: FakeSlack) -> None:
    """Two 503s and a 429 later, trigger then resolve arrive once each, in order; the key is never stored."""
    outbox = Outbox()
    slack_worker, page_worker = workers(database, outbox, pagerduty, slack)
    event = trigger()
    with database.transaction() as session:
        outbox.page(session, "production", event.to_json())
        outbox.page(session, "production", PagerDutyEvent("resolve", event.dedup_key).to_json())
    pagerduty.fail_next(2, 503)
    pagerduty.fail_next(1, 429, retry_after=0.1)
    assert slack_worker.drain_once() == 0  # Slack's worker leaves pages alone
    page_worker.start(poll_seconds=0.05)
    try:
        pagerduty.wait_for(lambda events: len(events) >= 2)
    finally:
        page_worker.stop()
    assert pagerduty.actions(event.dedup_key) == ["trigger", "resolve"]
    with database.read() as session:
        stored = [r.payload for r in session.execute(select(OutboxMessage)).scalars()]
    assert stored and KEY not in json.dumps(stored)


def test_a_hanging_pagerduty_does_not_hold_up_slack(database: Database, pagerduty: FakePagerDuty,
                                                    slack: FakeSlack) -> None:
    """While PagerDuty stalls every request, the Slack post queued after the page is delivered."""
    outbox = Outbox()
    slack_worker, page_worker = workers(database, outbox, pagerduty, slack)
    pagerduty.delay_next(20, 5.0)
    with database.transaction() as session:
        outbox.page(session, "production", trigger().to_json())
        outbox.post(session, CHANNEL, Reply("alert: TradingBotDown", ephemeral=False))
    page_worker.start(poll_seconds=0.05)
    slack_worker.start(poll_seconds=0.05)
    try:
        slack.wait_for("chat.postMessage", timeout=4.0)
        assert pagerduty.events == []  # still stalled: Slack did not wait for it
    finally:
        slack_worker.stop(flush_seconds=0)
        page_worker._stop.set()  # noqa: SLF001 - do not flush a page that keeps stalling
        threading.Thread(target=page_worker.stop, args=(0,), daemon=True).start()


def test_a_refused_page_dies_with_a_pagerduty_audit_record(database: Database, slack: FakeSlack) -> None:
    """An environment without a routing key: the page dies at once, audited as pagerduty.delivery_failed."""
    with FakePagerDuty() as pagerduty:
        outbox = Outbox()
        _, page_worker = workers(database, outbox, pagerduty, slack)
        with database.transaction() as session:
            outbox.page(session, "staging", trigger().to_json())
        page_worker.drain_once()
    with database.read() as session:
        row = session.execute(select(OutboxMessage)).scalar_one()
        actions = list(session.execute(select(AuditRecord.action)).scalars())
    assert row.status == "dead" and "no PagerDuty routing key" in (row.last_error or "")
    assert "pagerduty.delivery_failed" in actions
