"""Tickable checklists (bot/core/checklists.py) on the real bot: a tick records who and when, is audited and
re-renders the message, survives a restart; the role the checklist names is enforced; a finished /rollback
posts runbook 8.3's checklist, tickable, in its run's thread."""

# ruff: noqa: F811  - fixtures imported from the support modules are test parameters here

from __future__ import annotations

from pathlib import Path

from bot.core.checklists import RUNBOOK_POST_ROLLBACK
from bot.core.runs.store import run_key
from bot.persistence.models import ChecklistItem, SlackMessage
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import NEW_IMAGE, start_deploy_bot, wait_until
from tests.test_incidents_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    ERIN,
    Responder,
    db_url,
    incident_config,
    item_buttons,
    oncall_slack,
    responder,
    text_of,
)


def test_a_tick_records_who_and_when_and_updates_the_message(responder: Responder) -> None:
    """Tick 1 as alice: the item shows alice, the button turns into Untick 1, the audit log has the tick."""
    checklist = f"incident:{responder.declare()}"
    assert responder.click_item(checklist, "Tick 1", ALICE) == f"Ticked “{RUNBOOK_POST_ROLLBACK[0]}”."
    message = responder.checklist(checklist)
    assert f"~{RUNBOOK_POST_ROLLBACK[0]}~ — alice," in text_of(message)
    assert [b["text"]["text"] for b in item_buttons(message)][:2] == ["Untick 1", "Tick 2"]
    assert "1 of 5 done" in text_of(message)
    tick = responder.d.audit("checklist.tick")[-1]
    assert tick["actor_id"] == ALICE and tick["args"] == {"checklist": checklist, "item": 1,
                                                          "text": RUNBOOK_POST_ROLLBACK[0]}
    with responder.container.db.read() as session:
        item = session.get(ChecklistItem, (checklist, 0))
        assert item is not None and item.done_by == ALICE and item.done_at is not None


def test_ticks_persist_across_a_restart(oncall_slack: FakeSlack, db_url: str, tmp_path: Path) -> None:
    """Ticks are rows, not memory: after a restart the next tick re-renders the message with both."""
    config = incident_config(tmp_path)
    first = Responder(start_deploy_bot(oncall_slack, db_url, config))
    checklist = f"incident:{first.declare()}"
    first.click_item(checklist, "Tick 2", ERIN)
    first.stop()
    second = Responder(start_deploy_bot(oncall_slack, db_url, config))
    try:
        second.click_item(checklist, "Tick 4", ALICE)
        text = text_of(second.checklist(checklist))
        assert f"~{RUNBOOK_POST_ROLLBACK[1]}~ — erin," in text and f"~{RUNBOOK_POST_ROLLBACK[3]}~ — alice," in text
        assert "2 of 5 done" in text
        assert second.click_item(checklist, "Untick 2", ALICE) == f"Unticked “{RUNBOOK_POST_ROLLBACK[1]}”."
        assert "1 of 5 done" in text_of(second.checklist(checklist))
        untick = second.d.audit("checklist.untick")[-1]
        assert untick["args"]["was_ticked_by"] == ERIN
    finally:
        second.stop()


def test_a_second_tick_of_a_done_item_changes_nothing(responder: Responder) -> None:
    """Two people tick the same item from the same message: the first tick stands, the second is told so."""
    checklist = f"incident:{responder.declare()}"
    stale = responder.checklist(checklist)
    responder.click_item(checklist, "Tick 3", ALICE)
    button = next(b for b in item_buttons(stale) if b["text"]["text"] == "Tick 3")
    from tests.harness.signing import block_actions_body

    with responder.container.db.read() as session:
        row = session.get(SlackMessage, f"checklist:{checklist}")
        assert row is not None
    body = block_actions_body(button["action_id"], button["value"], ERIN, row.channel, row.ts,
                              responder.fake.response_url("stale"), user_name="erin")
    assert responder.d.bot.post(body).status_code == 200
    assert "was already ticked by alice" in responder.d.reply("stale")
    assert len(responder.d.audit("checklist.tick")) == 1


def test_someone_without_a_role_cannot_tick_and_it_is_audited(responder: Responder) -> None:
    """bob has no role in staging: his click is refused with the role it needs, and audited as denied."""
    checklist = f"incident:{responder.declare()}"
    reply = responder.click_item(checklist, "Tick 1", BOB)
    assert "may not tick checklists in staging" in reply and "viewer" in reply
    denied = [r for r in responder.d.audit("action.checklist.tick") if r["outcome"] == "denied"]
    assert denied and denied[-1]["actor_id"] == BOB
    assert "0 of 5 done" in text_of(responder.checklist(checklist))


def test_a_forged_or_malformed_button_is_a_usage_error(responder: Responder) -> None:
    """A button value naming no item, another environment or a missing checklist is refused and audited."""
    checklist = f"incident:{responder.declare()}"
    from tests.harness.signing import block_actions_body

    def posted() -> bool:  # the reply comes straight back; the checklist's post goes through the outbox
        with responder.container.db.read() as session:
            return session.get(SlackMessage, f"checklist:{checklist}") is not None

    wait_until(posted, 15, "the checklist to be posted")
    with responder.container.db.read() as session:
        row = session.get(SlackMessage, f"checklist:{checklist}")
        assert row is not None
    cases = {"m1": '{"c":"' + checklist + '","e":"staging","i":99,"d":1}',
             "m2": '{"c":"' + checklist + '","e":"staging","i":true,"d":1}',
             "m3": '{"c":"nope","e":"staging","i":0,"d":1}',
             "m4": '{"c":"' + checklist + '","e":"production","i":0,"d":1}'}
    for name, value in cases.items():
        body = block_actions_body("checklist.tick", value, ALICE if name != "m4" else "U0ROOT006", row.channel,
                                  row.ts, responder.fake.response_url(name), user_name="alice")
        assert responder.d.bot.post(body).status_code == 200
    assert "malformed button (checklist item)" in responder.d.reply("m1")
    assert "malformed button (checklist item)" in responder.d.reply("m2")
    assert "no checklist 'nope'" in responder.d.reply("m3")
    assert "no checklist" in responder.d.reply("m4") and "in production" in responder.d.reply("m4")
    outcomes = [r["outcome"] for r in responder.d.audit("action.checklist.tick")]
    assert outcomes == ["usage_error", "usage_error", "not_found", "not_found"]


def test_a_finished_rollback_posts_runbook_8_3_as_a_tickable_checklist(responder: Responder) -> None:
    """After /rollback succeeds, its run's thread has the 8.3 checklist; deployers tick it, operators may not."""
    d = responder.d
    _, run_id = d.deploy("v2.3 --env staging")
    d.tick(run_id)
    assert d.wait_state(run_id).state == "succeeded" and d.live_image("staging") == NEW_IMAGE
    reply = d.command("/rollback", "--env staging --reason 'bad fills'", ALICE)
    rollback_id = reply.split("run `")[1].split("`")[0]
    assert d.wait_state(rollback_id).state == "succeeded"
    checklist = f"rollback:{rollback_id}"
    message = responder.checklist(checklist)
    with responder.container.db.read() as session:
        parent = session.get(SlackMessage, run_key(rollback_id))
        assert parent is not None
    assert message.get("thread_ts") == parent.ts  # in the run's thread
    assert [b["text"]["text"] for b in item_buttons(message)] == [f"Tick {n}" for n in range(1, 6)]
    assert all(item in text_of(message) for item in RUNBOOK_POST_ROLLBACK)
    assert "the checklist to tick is in this message's thread" in d.message_text(rollback_id)
    assert "may not tick items" in responder.click_item(checklist, "Tick 1", ERIN)  # operator, not deployer
    assert responder.click_item(checklist, "Tick 1", ALICE).startswith("Ticked")
    assert "1 of 5 done" in text_of(responder.checklist(checklist))
