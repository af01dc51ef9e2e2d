"""/audit as an auditor reads it (issue 6, items 11 and 13): pages that never skip a record, rows that
name the run, the step and the button clicked, and refusals whose next step works.

Driven through the real bot and a FakeSlack: the page is the response_url post, and the Older
records button is clicked with the value the bot put on it.
"""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.blocks import MAX_SECTION
from bot.ids import ActionId, decode_value
from tests.harness.signing import block_actions_body
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    DAVE,
    ERIN,
    ROOT,
    STAGING_DEPLOY,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    write_config,
)

ROW = re.compile(r"`#(\d+)`")


def ask(d: Deployer, text: str, user: str = ROOT) -> dict[str, Any]:
    """Run /audit and return the page posted to its response_url (text and blocks)."""
    name = f"audit{next(d._names)}"
    d.bot.settle()
    assert d.bot.command("/audit", text, user, name=name).status_code == 200
    return dict(d.fake.wait_for_response(name, timeout=10)[-1].body)


def older(d: Deployer, page: dict[str, Any]) -> dict[str, Any] | None:
    """Click the page's Older records button (None when it has none) and return the next page."""
    buttons = [e for b in page.get("blocks") or [] if b["type"] == "actions" for e in b["elements"]]
    if not buttons:
        return None
    [button] = buttons
    assert button["action_id"] == ActionId.audit_page
    name = f"older{next(d._names)}"
    body = block_actions_body(button["action_id"], button["value"], ROOT, STAGING_DEPLOY, "1.1",
                              d.fake.response_url(name))
    assert d.bot.post(body).status_code == 200
    return dict(d.fake.wait_for_response(name, timeout=10)[-1].body)


def sections(page: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in page.get("blocks") or [] if b["type"] == "section"]


def context(page: dict[str, Any]) -> str:
    return " ".join(e["text"] for b in page.get("blocks") or [] if b["type"] == "context" for e in b["elements"])


def seqs(page: dict[str, Any]) -> list[int]:
    return [int(n) for text in sections(page) for n in ROW.findall(text)]


# --- paging -----------------------------------------------------------------------------------------------
def test_paging_through_long_rows_shows_every_record_once(deployer: Deployer) -> None:
    """50 long rows do not fit one page: the page is cut to fit, and Older records continues from the last
    row shown, so paging from the newest to the oldest sees every record exactly once."""
    for i in range(60):
        deployer.bot.command("/help", "<" * 200 + f" {i}", ALICE, trigger_id=f"long{i}")
    page: dict[str, Any] | None = ask(deployer, "--limit 50 --action command.help")
    assert page is not None
    first = seqs(page)
    assert 0 < len(first) < 50, "these rows are too long for 50 to fit one page"
    assert f"{len(first)} of the 50 asked for fit on this page" in context(page)
    seen: list[int] = []
    while page is not None:
        shown = seqs(page)
        assert all(len(text) <= MAX_SECTION for text in sections(page))
        assert "truncated" not in "".join(sections(page))
        buttons = [e for b in page.get("blocks") or [] if b["type"] == "actions" for e in b["elements"]]
        if buttons:
            assert decode_value(buttons[0]["value"])["before"] == shown[-1]
        seen += shown
        page = older(deployer, page)
    expected = [r["seq"] for r in deployer.audit("command.help")]
    assert sorted(seen) == expected and len(seen) == len(set(seen)) == 60


def test_short_rows_fill_the_page_asked_for(deployer: Deployer) -> None:
    """Rows that fit give exactly --limit records, newest first, and the button starts right below them."""
    for i in range(7):
        deployer.bot.command("/help", "", ALICE, trigger_id=f"short{i}")
    page = ask(deployer, "--limit 5 --action command.help")
    expected = [r["seq"] for r in deployer.audit("command.help")]
    assert seqs(page) == expected[::-1][:5]
    next_page = older(deployer, page)
    assert next_page is not None and seqs(next_page) == expected[::-1][5:]


# --- readable rows -----------------------------------------------------------------------------------------
def test_rows_name_the_run_and_the_step_and_clicks_say_what_was_clicked(deployer: Deployer) -> None:
    """A deploy's step records name the run and the step; the Tick click reads as a click, not JSON."""
    _, run_id = deployer.deploy("v2.3 --env staging")
    deployer.tick(run_id)
    deployer.wait_state(run_id)
    steps = ask(deployer, "--action deploy.step.end --limit 50")
    rows = [line for text in sections(steps) for line in text.splitlines()]
    assert rows and all(f"run {run_id}" in row and "step “" in row for row in rows)
    assert any("step “Roll out”" in row for row in rows)
    clicks = ask(deployer, "--action action.deploy.tick")
    [row] = [line for text in sections(clicks) for line in text.splitlines()]
    assert f"clicked “Tick” on run {run_id} item 1" in row
    assert "{" not in row and "message_ts" not in row


# --- refusals and empty ranges that say what to do ----------------------------------------------------------
def test_since_after_until_says_the_range_is_empty(deployer: Deployer) -> None:
    """`--since 1h --until 2h` explains the range is empty by construction, not "No audit records match"."""
    reply = deployer.command("/audit", "--since 1h --until 2h", ROOT)
    assert "is not before --until" in reply and "no record can be in that range" in reply
    assert "--since 2h --until 1h" in reply and "No audit records match" not in reply
    deployer.bot.settle()
    assert deployer.audit("command.audit")[-1]["outcome"] == "usage_error"


@pytest.fixture
def env_auditor(fake_slack: FakeSlack, sqlite_url: str, tmp_path: Path) -> Iterator[Deployer]:
    """The bot with erin as auditor of staging only."""
    def change(data: dict[str, Any]) -> None:
        data["environments"]["staging"]["roles"]["auditor"] = ["erin"]

    d = start_deploy_bot(fake_slack, sqlite_url, write_config(tmp_path, change))
    yield d
    d.stop()


def test_refused_whole_log_names_the_environments_you_may_read(env_auditor: Deployer) -> None:
    """An auditor of staging asking for the whole log is pointed at `/audit --env staging`, which works."""
    reply = env_auditor.command("/audit", "", ERIN)
    assert "erin may not read the whole audit log (you may read `/audit --env staging`)" in reply
    assert "--env ENV" not in reply
    env_auditor.command("/status", "--env staging", ALICE)
    env_auditor.bot.settle()
    listing = env_auditor.command("/audit", "--env staging", ERIN)
    assert listing.startswith("Audit log") and "command.status" in listing


def test_refusal_without_any_audit_role_suggests_no_env(env_auditor: Deployer) -> None:
    """Someone who audits nothing is not told to try --env (it would be refused too)."""
    reply = env_auditor.command("/audit", "", DAVE)
    assert "dave may not read the whole audit log" in reply and "--env" not in reply


@pytest.mark.parametrize("before", ["100000000000000000000", "1e20", "0"])
def test_page_button_with_an_impossible_marker_is_a_usage_error(deployer: Deployer, before: str) -> None:
    """A crafted Older records value beyond any record (or a float) is refused as malformed and audited."""
    name = f"bad{before}"
    body = block_actions_body(ActionId.audit_page, f'{{"before":{before},"limit":10}}', ROOT, STAGING_DEPLOY,
                              "1.1", deployer.fake.response_url(name))
    assert deployer.bot.post(body).status_code == 200
    reply = deployer.fake.wait_for_response(name, timeout=10)[-1].body["text"]
    assert reply == ":warning: malformed button (page marker)"
    deployer.bot.settle()
    assert deployer.audit("action.audit.page")[-1]["outcome"] == "usage_error"
