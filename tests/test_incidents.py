"""/incident on the real bot with a fake Slack: declaring creates the channel (suffixed when the name is
taken), invites the declarer and the on-call people, posts the message and the tickable checklist,
names the suspect deploy; updates, notes, the timeline from the audit log, resolve and MTTR."""

# ruff: noqa: F811  - fixtures imported from the support modules are test parameters here

from __future__ import annotations

from statistics import mean

from sqlalchemy import select

from bot.core.runs.context import describe_duration
from bot.persistence.models import AuditRecord
from tests.test_deploy_support import STAGING_INCIDENT, wait_until
from tests.test_incidents_support import (  # noqa: F401  (fixtures)
    ALICE,
    CAROL,
    ERIN,
    Responder,
    db_url,
    item_buttons,
    oncall_slack,
    responder,
    text_of,
    today_name,
)


def deployed(r: Responder) -> str:
    _, run_id = r.d.deploy("v2.3 --env staging")
    r.d.tick(run_id)
    assert r.d.wait_state(run_id).state == "succeeded"
    return run_id


def test_declare_creates_the_channel_invites_on_call_and_posts_the_checklist(responder: Responder) -> None:
    """The channel is inc-YYYYMMDD-<slug>; declarer, on-call people and user group are invited; the message
    names the suspect deploy and the checklist has one Tick button per runbook 8.3 item."""
    run_id = deployed(responder)
    reply = responder.incident('declare "Fills rejected by the exchange!" --sev 1 --env staging')
    assert "SEV1, staging" in reply and f"run `{run_id}`" in reply, reply
    incident_id = int(reply.split("INC-")[1].split(" ")[0])
    channel = responder.channel(incident_id)
    assert responder.fake.channels[channel] == today_name("fills-rejected-by-the-exchange")
    invite = responder.fake.wait_for("conversations.invite")[0]
    assert invite.params["channel"] == channel
    assert set(responder.fake.channel_members[channel]) == {"U0BOT", ERIN, CAROL}  # erin once, carol by group
    intro = text_of(responder.intro(incident_id))
    assert "SEV1" in intro and "Fills rejected by the exchange!" in intro and run_id in intro and "v2.3" in intro
    checklist = responder.checklist(f"incident:{incident_id}")
    assert [b["text"]["text"] for b in item_buttons(checklist)] == [f"Tick {n}" for n in range(1, 6)]
    assert "Conduct incident retrospective" in text_of(checklist)
    assert any(f"INC-{incident_id}" in t for t in responder.d.channel_texts(STAGING_INCIDENT))
    declared = responder.d.audit("incident.declared")
    assert declared[-1]["args"]["suspect_run"] == run_id and declared[-1]["environment"] == "staging"


def test_a_taken_name_gets_a_suffix(responder: Responder) -> None:
    """A channel name Slack already has (another team's, or an earlier incident's) gets -2, then -3."""
    responder.fake.channels["C0OTHER01"] = today_name("db-down")
    first = responder.declare("DB down")
    second = responder.declare("db: DOWN")
    assert responder.fake.channels[responder.channel(first)] == today_name("db-down") + "-2"
    assert responder.fake.channels[responder.channel(second)] == today_name("db-down") + "-3"
    assert len(responder.fake.calls_to("conversations.create")) == 5  # taken, -2; taken, taken, -3


def test_in_its_channel_status_and_notes_act_on_the_incident(responder: Responder) -> None:
    """Commands in the incident's channel need no --id; a status update is posted there."""
    incident_id = responder.declare()
    channel = responder.channel(incident_id)
    assert "Status update posted to INC-" in responder.incident("status rolled back, watching fills", ERIN,
                                                                channel=channel)
    assert "Note added" in responder.incident("note exchange confirmed an outage", ALICE, channel=channel)
    # the reply comes straight from the job; the post to the channel goes through the outbox's lane
    wait_until(lambda: any("Status update" in m.get("text", "") and "rolled back, watching fills" in m.get("text", "")
                           for m in responder.fake.messages_in(channel)), 10, "the status update in the channel")
    assert "Note added" in responder.incident(f"note from elsewhere --id INC-{incident_id}", ALICE)


def test_timeline_lists_the_audited_actions_and_notes_in_order(responder: Responder) -> None:
    """The timeline shows every audited action in the environment since the incident began, with the notes,
    in the order they happened."""
    incident_id = responder.declare()
    channel = responder.channel(incident_id)
    responder.incident("note first look: fills rejected", ALICE, channel=channel)
    assert "Locked" in responder.d.command("/lock", "staging --reason 'incident'", ALICE)
    responder.incident("status lock in place", ERIN, channel=channel)
    responder.d.command("/unlock", "staging", ALICE)
    timeline = responder.incident("timeline", ALICE, channel=channel)
    order = ["incident.declared", "first look: fills rejected", "command.lock", "lock in place", "command.unlock"]
    positions = [timeline.find(marker) for marker in order]
    assert -1 not in positions, timeline
    assert positions == sorted(positions), timeline
    with responder.container.db.read() as session:
        in_env = session.execute(select(AuditRecord.action).where(AuditRecord.environment == "staging")).scalars()
        skipped = [a for a in in_env if a.startswith(("command.incident", "incident.note", "incident.status"))]
    assert skipped and "command.incident" not in timeline  # its own commands are not repeated


def test_resolve_records_time_to_recover_and_list_shows_mttr(responder: Responder) -> None:
    """Resolving records the time to recover; /incident list shows open and resolved incidents and the MTTR
    over the resolved ones (runbook 9.2)."""
    first, second, third = responder.declare("one"), responder.declare("two"), responder.declare("three")
    reply = responder.incident(f"resolve --id INC-{first} restarted the gateway")
    assert f"Resolved INC-{first}: time to recover" in reply
    responder.incident("resolve fixed", channel=responder.channel(second))
    rows = {r.id: r for r in responder.incidents()}
    ttrs = [(rows[i].resolved_at - rows[i].started_at).total_seconds() for i in (first, second)]
    recorded = [r["args"]["ttr_seconds"] for r in responder.d.audit("incident.resolved")]
    assert recorded == [round(t, 3) for t in ttrs]
    assert rows[first].resolution == "restarted the gateway" and rows[third].status == "open"
    listing = responder.incident("list", ALICE)
    assert f"MTTR (runbook 9.2, last 30 days): *{describe_duration(mean(ttrs))}* over 2 resolved incidents" \
        in listing, listing
    assert f"🔥 INC-{third}" in listing and f"✅ INC-{first}" in listing
    intro = text_of(responder.intro(first))
    assert "resolved" in intro and "restarted the gateway" in intro
    again = responder.incident(f"resolve --id INC-{first}")
    assert "already resolved" in again


def test_list_without_resolved_incidents_says_so(responder: Responder) -> None:
    """With nothing resolved the MTTR line says there is nothing to average."""
    responder.declare()
    assert "no resolved incidents" in responder.incident("list --days 7", ALICE)


def test_console_declares_and_resolves_an_incident(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`chatops console`: /incident declare creates a (console) channel, invites, posts the checklist; resolve
    by --id works."""
    import io
    import os

    from bot.console import run_console
    from bot.settings import Settings
    from tests.test_incidents_support import incident_config

    for name in list(os.environ):
        if name.upper().startswith("CHATOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = Settings(config=incident_config(tmp_path), database_url=f"sqlite:///{tmp_path}/c.db")
    out = io.StringIO()
    code = run_console(settings, script=["as erin", '/incident declare "console test" --env staging',
                                         "click Tick 1", "/incident resolve --id INC-1 done", "/incident list"],
                       out=out)
    output = out.getvalue()
    assert code == 0, output
    assert f"channel #{today_name('console-test')} created" in output
    assert "invited: erin, user group S0ONCALL1" in output
    assert "Ticked “Document rollback reason and timeline”" in output
    assert "Resolved INC-1: time to recover" in output and "MTTR" in output


def test_the_whole_flow_on_both_databases(oncall_slack, database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Declare, tick, note, timeline, resolve and list on SQLite and on a real PostgreSQL (row locks, the
    channel look-up, the MTTR query)."""
    from tests.test_deploy_support import start_deploy_bot
    from tests.test_incidents_support import incident_config

    r = Responder(start_deploy_bot(oncall_slack, database_url, incident_config(tmp_path)))
    try:
        incident_id = r.declare("pg flow")
        channel = r.channel(incident_id)
        assert r.click_item(f"incident:{incident_id}", "Tick 5", ALICE).startswith("Ticked")
        r.incident("note looking", ALICE, channel=channel)
        timeline = r.incident("timeline", ALICE, channel=channel)
        assert timeline.index("incident.declared") < timeline.index("checklist.tick") < timeline.index("looking")
        assert "time to recover" in r.incident("resolve fixed", channel=channel)
        assert "over 1 resolved incident" in r.incident("list", ALICE)
    finally:
        r.stop()


def test_the_core_api_takes_an_alert_group_and_when_it_began(responder: Responder) -> None:
    """What alert intake calls: declare() with an alert group, its link and its start; the message shows the
    group, and the time to recover counts from the alert's start, not from the declaration."""
    from datetime import timedelta

    from bot.core.incidents import IncidentService
    from bot.core.model import Actor
    from bot.timeutil import utcnow

    core = responder.container.core
    began = utcnow() - timedelta(minutes=10)
    with core.db.transaction() as session:
        incident, _reply = IncidentService(core.config, core.outbox, core.authorizer).declare(
            session, actor=Actor("alertmanager", "Alertmanager"), env_name="staging", title="HighErrorRate",
            correlation_id="am-1", severity=1, alert_group_id='{}:{alertname="HighErrorRate"}',
            alert_link="http://127.0.0.1:9093/#/alerts", started_at=began)
        incident_id = incident.id
    intro = text_of(responder.intro(incident_id))
    assert 'alertname="HighErrorRate"' in intro and "http://127.0.0.1:9093/#/alerts" in intro
    reply = responder.incident(f"resolve --id INC-{incident_id}")
    row = responder.row(incident_id)
    assert (row.resolved_at - row.started_at).total_seconds() >= 600
    assert describe_duration((row.resolved_at - row.started_at).total_seconds()) in reply


def test_posts_into_the_channel_wait_for_a_create_that_slack_refused_once(responder: Responder) -> None:
    """conversations.create answers 503 once: the outbox retries it, and the invitation and the posts into
    the new channel are held behind it and arrive there in order."""
    responder.fake.fail_next("conversations.create", status=503)
    incident_id = responder.declare("retry me")
    channel = responder.channel(incident_id)
    creates = responder.fake.calls_to("conversations.create")
    assert [c.faulted for c in creates] == [True, False]
    responder.d.bot.settle()
    texts = [m.get("text", "") for m in responder.fake.messages_in(channel)]
    assert len(texts) == 2 and texts[0].startswith(f"INC-{incident_id} retry me") and "checklist" in texts[1]
    assert ERIN in responder.fake.channel_members[channel]
