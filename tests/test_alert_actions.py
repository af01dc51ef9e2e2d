"""The buttons on an alert root, on the real bot over HTTP with FakeSlack clicks: a real Alertmanager silence,
PagerDuty trigger / acknowledge / resolve on the stand-in, Roll back and Stop trading through their workflows,
each click checked for the clicker's role and audited."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from sqlalchemy import select

from bot.core.alerts import simulate as sim
from bot.ids import decode_value
from bot.persistence import audit as audit_log
from bot.persistence.models import AlertGroup, AuditRecord, Run
from integrations.alertmanager import AlertmanagerClient, Matcher
from tests.alerting import (
    PROD_INCIDENT,
    STAGING_INCIDENT,
    alert_config,
    alertmanager_api,
    pagerduty,
    post_alert,
    roots,
    start_alert_bot,
    thread,
)
from tests.bot_server import RunningBot
from tests.harness.alertmanager import AlertmanagerServer
from tests.harness.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.harness.signing import block_actions_payload
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import ROLLOUT_SECONDS, wait_until

__all__ = ["alertmanager_api", "pagerduty"]

ALICE, DAVE, ERIN = "U0ALICE01", "U0DAVE004", "U0ERIN005"
NAMES = {ALICE: "alice", DAVE: "dave", ERIN: "erin"}
KEY_VAR = "CHATOPS_TEST_PD_ROUTING_KEY"
_names = itertools.count(1)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(users=dict(NAMES)) as fake:
        yield fake


def make_bot(slack: FakeSlack, tmp_path: Path, alertmanager_url: str, pagerduty: FakePagerDuty,
             monkeypatch: pytest.MonkeyPatch, **alerts: Any) -> RunningBot:
    """The real bot: production and staging silence in the Alertmanager at `alertmanager_url` and page the
    stand-in; `alerts` go into the config's per-environment `alerts:` of both environments."""
    monkeypatch.setenv(KEY_VAR, DEFAULT_ROUTING_KEY)
    path = alert_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    for env in data["environments"].values():
        env["alertmanager"] = {"url": alertmanager_url, "timeout_seconds": 10}
        env["pagerduty"] = {"routing_key_env": KEY_VAR, "url": pagerduty.url}
        env["monitor_seconds"] = 0
        env.pop("jobs", None)
        if alerts:
            env["alerts"] = {**env.get("alerts", {}), **alerts}
    # staging deploys at once (no checklist to tick, no trading pauses), so a deploy can precede an alert
    data["environments"]["staging"]["procedure"] = [{"kind": "precheck", "name": "Pre-checks"},
                                                    {"kind": "rollout", "name": "Roll out"}]
    data["environments"]["staging"]["canary"] = {"steps": [50, 100], "interval_seconds": 3600}
    path.write_text(yaml.safe_dump(data))

    def fast(container: Any) -> Any:
        for world in container.sims.values():
            world.cluster.rollout_seconds = ROLLOUT_SECONDS
        return container

    return start_alert_bot(slack, tmp_path, config=path, prepare=fast)


@pytest.fixture
def bot(slack: FakeSlack, tmp_path: Path, alertmanager_api: AlertmanagerServer, pagerduty: FakePagerDuty,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBot]:
    running = make_bot(slack, tmp_path, alertmanager_api.url, pagerduty, monkeypatch)
    yield running
    running.stop()


def fire(bot: RunningBot, name: str = "TradingBotDown", *, env: str = "production", severity: str = "critical",
         status: str = "firing") -> dict[str, Any]:
    """Post an Alertmanager notification and return the group's root as Slack shows it."""
    alert = sim.alert(name, env=env, severity=severity, status=status, extra_labels={"instance": "10.0.0.7:9100"})
    assert post_alert(bot, sim.notification([alert])).status_code == 200
    bot.settle()
    channel = PROD_INCIDENT if env == "production" else STAGING_INCIDENT
    return next(r for r in roots(bot.fake, channel) if name in r["text"])


def root(bot: RunningBot, ts: str, env: str = "production") -> dict[str, Any]:
    bot.settle()
    return bot.fake.message(PROD_INCIDENT if env == "production" else STAGING_INCIDENT, ts)


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["text"]["text"]: e for b in message.get("blocks") or [] if b.get("type") == "actions"
            for e in b["elements"] if e["type"] == "button"}


def menu(message: dict[str, Any]) -> dict[str, Any]:
    """The root's *Silence for…* menu."""
    found: list[dict[str, Any]] = [e for b in message.get("blocks") or [] if b.get("type") == "actions"
                                   for e in b["elements"] if e["type"] == "static_select"]
    assert len(found) == 1
    return found[0]


def _post_click(bot: RunningBot, message: dict[str, Any], action: dict[str, Any], user: str, env: str,
                answers: int) -> list[str]:
    name = f"a{next(_names)}"
    channel = PROD_INCIDENT if env == "production" else STAGING_INCIDENT
    value = action.get("value") or action["selected_option"]["value"]
    payload = block_actions_payload(action["action_id"], value, user, channel, message["ts"],
                                    bot.fake.response_url(name), f"alert:{decode_value(value)['g']}",
                                    user_name=NAMES[user], action_type=action["type"])
    if action["type"] == "static_select":  # what Slack sends for a menu: the chosen option, no `value`
        del payload["actions"][0]["value"]
        payload["actions"][0]["selected_option"] = action["selected_option"]
    assert bot.post(urlencode({"payload": json.dumps(payload)}).encode()).status_code == 200
    return [str(r.body.get("text", "")) for r in bot.fake.wait_for_response(name, count=answers, timeout=15)]


def click(bot: RunningBot, message: dict[str, Any], label: str, user: str, env: str = "production",
          answers: int = 1) -> str:
    """Click `label` on the root as `user`; the last of the `answers` replies that user sees."""
    return _post_click(bot, message, buttons(message)[label], user, env, answers)[-1]


def choose(bot: RunningBot, message: dict[str, Any], option: str, user: str, *, value: str | None = None,
           answers: int = 2) -> list[str]:
    """Pick `option` in the root's *Silence for…* menu as `user` (`value` forges the option's value)."""
    select = menu(message)
    [picked] = [o for o in select["options"] if o["text"]["text"] == option]
    chosen = {**picked, "value": value or picked["value"]}
    return _post_click(bot, message, {"type": "static_select", "action_id": select["action_id"],
                                      "selected_option": chosen}, user, "production", answers)


def audits(bot: RunningBot, prefix: str) -> list[dict[str, Any]]:
    with bot.container.db.read() as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
        return [audit_log.as_dict(r) for r in rows if r.action.startswith(prefix)]


def test_critical_root_offers_the_buttons_and_pages(bot: RunningBot, pagerduty: FakePagerDuty) -> None:
    """A critical production group: Acknowledge, Silence 1 h, the Silence for… menu (15 min to 7 days), Stop trading
    (no deploy: no Roll back), and a PagerDuty trigger whose dedup key comes from the group."""
    message = fire(bot)
    assert list(buttons(message)) == ["Acknowledge", "Silence 1 h", "Stop trading"]
    options = [o["text"]["text"] for o in menu(message)["options"]]
    assert options[0] == "15 min" and "4 h" in options and options[-1] == "7 days"
    [event] = pagerduty.wait_for(lambda events: len(events) == 1)
    assert event["event_action"] == "trigger" and event["payload"]["severity"] == "critical"
    assert event["dedup_key"].startswith("swarm-chatops:") and "TradingBotDown" in event["payload"]["summary"]


def test_silence_creates_a_real_alertmanager_silence_and_unsilence_expires_it(
        bot: RunningBot, alertmanager_api: AlertmanagerServer) -> None:
    """Silence 1 h: Alertmanager reports a silence on the group's labels by erin; the root says who until when;
    Unsilence expires it in Alertmanager. Both are audited."""
    message = fire(bot, "OrderLatencyHigh")
    reply = click(bot, message, "Silence 1 h", ERIN, answers=2)
    assert reply.startswith("Silenced *OrderLatencyHigh* until")
    with AlertmanagerClient(alertmanager_api.url) as am:
        [silence] = [s for s in am.list_silences(matchers=[Matcher("alertname", "OrderLatencyHigh")]) if s.active]
    assert set(silence.matchers) == {Matcher("alertname", "OrderLatencyHigh"), Matcher("env", "production")}
    assert silence.created_by == f"erin (Slack {ERIN})" and "OrderLatencyHigh" in silence.comment
    updated = root(bot, message["ts"])
    assert f"Silenced by <@{ERIN}> until" in str(updated["blocks"]) and "Unsilence" in buttons(updated)
    assert any("Silenced in Alertmanager by" in m["text"] for m in thread(bot.fake, PROD_INCIDENT, message["ts"]))
    assert click(bot, updated, "Unsilence", ERIN, answers=2).startswith("Unsilenced")
    with AlertmanagerClient(alertmanager_api.url) as am:
        assert am.get_silence(silence.id).state == "expired"
    assert "Silence 1 h" in buttons(root(bot, message["ts"]))
    assert [(a["action"], a["outcome"]) for a in audits(bot, "alertmanager.")] == [
        ("alertmanager.silence", "claimed"), ("alertmanager.silence", "ok"), ("alertmanager.unsilence", "ok")]


def test_acknowledge_records_who_and_acknowledges_the_page(bot: RunningBot, pagerduty: FakePagerDuty) -> None:
    """Acknowledge: the root names erin, the button goes, PagerDuty gets acknowledge and, on resolve, resolve —
    all with the trigger's dedup key."""
    message = fire(bot, "ExchangeApiDown")
    assert click(bot, message, "Acknowledge", ERIN).startswith("You acknowledged")
    updated = root(bot, message["ts"])
    assert f"Acknowledged by <@{ERIN}>" in str(updated["blocks"]) and "Acknowledge" not in buttons(updated)
    fire(bot, "ExchangeApiDown", status="resolved")
    events = pagerduty.wait_for(lambda events: len(events) == 3)
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert len({e["dedup_key"] for e in events}) == 1
    with bot.container.db.read() as session:
        grp = session.execute(select(AlertGroup).where(AlertGroup.title == "ExchangeApiDown")).scalar_one()
    assert (grp.acked_by, grp.mention) == (ERIN, "none")


def test_clicks_are_checked_for_the_clickers_role(bot: RunningBot, alertmanager_api: AlertmanagerServer) -> None:
    """dave (viewer) may not silence or stop trading: refused, audited as denied, nothing created."""
    message = fire(bot, "DiskAlmostFull")
    assert ":no_entry:" in click(bot, message, "Silence 1 h", DAVE)
    assert ":no_entry:" in click(bot, message, "Stop trading", DAVE)
    with AlertmanagerClient(alertmanager_api.url) as am:
        assert not [s for s in am.list_silences(matchers=[Matcher("alertname", "DiskAlmostFull")])]
    denied = [a for a in audits(bot, "action.alert.") if a["outcome"] == "denied"]
    assert len(denied) == 2
    with bot.container.db.read() as session:
        assert session.execute(select(Run).where(Run.kind == "stop_trading")).first() is None


def test_stop_trading_runs_the_stop_trading_workflow(bot: RunningBot) -> None:
    """Stop trading (erin, operator) starts the /stop-trading run in production, with the alert as reason."""
    message = fire(bot, "TradingLossesHigh")
    click(bot, message, "Stop trading", ERIN)
    with bot.container.db.read() as session:
        run = session.execute(select(Run).where(Run.kind == "stop_trading")).scalar_one()
    assert run.environment == "production" and "TradingLossesHigh" in (run.reason or "")


def test_roll_back_is_offered_after_a_deploy_and_goes_through_rollback(bot: RunningBot) -> None:
    """After a staging deploy, a staging alert's root offers Roll back (the suspect deploy named above it);
    alice's click starts /rollback's run back to the previous version."""
    assert bot.command("/deploy", "v2.3", ALICE, name="dep").status_code == 200
    wait_until(lambda: _latest(bot, "deploy") == "succeeded", 40, "the staging deploy to finish")
    message = fire(bot, "HighErrorRate", env="staging", severity="high")
    assert "Roll back" in buttons(message)
    assert "after deploy v2.3 by <@U0ALICE01>" in str(message["blocks"])
    click(bot, message, "Roll back", ALICE, env="staging", answers=2)
    with bot.container.db.read() as session:
        run = session.execute(select(Run).where(Run.kind == "rollback")).scalar_one()
    assert run.environment == "staging" and "HighErrorRate" in (run.reason or "")


def _latest(bot: RunningBot, kind: str) -> str | None:
    with bot.container.db.read() as session:
        return session.execute(select(Run.state).where(Run.kind == kind).order_by(Run.created_at.desc())
                               .limit(1)).scalar_one_or_none()


def test_an_alert_through_the_webhook_fails_a_running_canary_at_once(bot: RunningBot) -> None:
    """A staging canary analysing hourly; a high staging alert posted to /alerts/alertmanager rolls it back at
    once, the run's thread names the alert, and the alert's root names the deploy."""
    assert bot.command("/deploy", "v2.4 --canary", ALICE, name="can").status_code == 200

    def analysing() -> bool:
        with bot.container.db.read() as session:
            run = session.execute(select(Run).where(Run.kind == "deploy")).scalar_one_or_none()
            steps = bot.container.core.runs.steps(session, run.id) if run else []
            return any(st.kind == "rollout" and st.status == "running" and (st.data or {}).get("applied") == 50
                       for st in steps)

    wait_until(analysing, 30, "the canary to analyse at 50%")
    message = fire(bot, "HighErrorRate", env="staging", severity="high")
    wait_until(lambda: _latest(bot, "deploy") == "rolled_back", 30, "the canary to roll back")
    with bot.container.db.read() as session:
        run = session.execute(select(Run).where(Run.kind == "deploy")).scalar_one()
    assert "alert HighErrorRate (high) fired in staging during the canary analysis" in (run.rollback_reason or "")
    assert "started during deploy v2.4 by <@U0ALICE01>" in str(message["blocks"])
