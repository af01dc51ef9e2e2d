"""The App Home tab follows run changes: when a run changes state, everyone who opened the tab recently
and may see that environment gets a fresh view (views.publish on the fake Slack), with their own buttons;
one view per viewer per burst of changes; people who did not open it, or cannot see the environment,
get nothing."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import json
import re
from typing import Any

from commands.home import HomeRefresher
from tests.bot_server import SECRET
from tests.harness.signing import event_body, signed_headers
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    BOB,
    ERIN,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    wait_until,
)

DAVE, CAROL = "U0DAVE004", "U0CAROL03"  # a viewer everywhere; a production approver who never opens it


def views_of(d: Deployer, user: str) -> list[dict[str, Any]]:
    out = []
    for call in d.fake.calls_to("views.publish"):
        if call.params.get("user_id") == user:
            view = call.params["view"]
            out.append(json.loads(view) if isinstance(view, str) else view)
    return out


def open_home(d: Deployer, user: str) -> None:
    before = len(views_of(d, user))
    body = event_body({"type": "app_home_opened", "user": user, "tab": "home", "event_ts": "1.2"},
                      event_id=f"Ev0{user}{before}")
    assert d.bot.post(body, signed_headers(body, SECRET, content_type="application/json")).status_code == 200
    wait_until(lambda: len(views_of(d, user)) > before, 20, f"{user}'s Home tab")


def buttons(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["text"]["text"], json.loads(e["value"])["env"]) for b in view["blocks"] if b["type"] == "actions"
            for e in b["elements"]]


def section(view: dict[str, Any], env: str) -> str:
    """The text of an environment's section of the Home view."""
    texts = [str(b.get("text", {}).get("text", "")) for b in view["blocks"] if b["type"] == "section"]
    return next(t for t in texts if t.startswith(f"*{env}*"))


def refresher(d: Deployer) -> HomeRefresher:
    found = [getattr(fn, "__self__", None) for fn in d.container.core.runs.on_state_change]
    home = next(r for r in found if isinstance(r, HomeRefresher))
    return home


def settled(d: Deployer) -> None:
    wait_until(lambda: refresher(d).idle(), 20, "the Home refresher to be idle")
    d.bot.settle()
    wait_until(lambda: refresher(d).idle(), 20, "the Home refresher to be idle")


def test_a_run_changing_state_republishes_the_home_tab_of_recent_viewers(deployer: Deployer) -> None:
    d = deployer
    for user in (ERIN, ALICE, DAVE, BOB):
        open_home(d, user)
    opened = {u: len(views_of(d, u)) for u in (ERIN, ALICE, DAVE, BOB)}
    reply = d.command("/stop-trading", "--env staging --reason 'bad fills'", ERIN)
    run_id = re.search(r"run `(r-[0-9a-f]{8})`", reply).group(1)  # type: ignore[union-attr]
    run = d.wait_state(run_id)
    assert run.state == "succeeded"

    def shows_the_result(user: str) -> bool:
        views = views_of(d, user)[opened[user]:]
        return bool(views) and run_id in json.dumps(views[-1]) and "Succeeded" in json.dumps(views[-1])

    for user in (ERIN, ALICE, DAVE):  # everyone who opened it and may see staging: the run's result
        wait_until(lambda u=user: shows_the_result(u), 30, f"{user}'s refreshed Home tab")  # type: ignore[misc]
    settled(d)
    # each with their own buttons: erin operates (Stop trading), alice deploys (Roll back), dave only views
    last = {u: views_of(d, u)[-1] for u in (ERIN, ALICE, DAVE)}
    assert ("Stop trading", "staging") in buttons(last[ERIN]) and ("Roll back", "staging") not in buttons(last[ERIN])
    assert ("Roll back", "staging") in buttons(last[ALICE]) and ("Stop trading", "staging") not in buttons(
        last[ALICE])
    assert buttons(last[DAVE]) == []
    trading = next(ln for ln in section(last[DAVE], "staging").splitlines() if ln.startswith("Trading: "))
    assert ":large_green_circle:" not in trading  # staging's trading shows halted now
    # bob sees production only, carol never opened the tab: nothing for them
    assert len(views_of(d, BOB)) == opened[BOB]
    assert views_of(d, CAROL) == []
    # the run moved twice (queued → running → succeeded): at most one view per change, no more
    for user in (ERIN, ALICE, DAVE):
        assert 1 <= len(views_of(d, user)) - opened[user] <= 2


def test_a_burst_of_changes_gives_one_view_per_viewer(deployer: Deployer) -> None:
    d = deployer
    for user in (ERIN, DAVE):
        open_home(d, user)
    settled(d)
    before = {u: len(views_of(d, u)) for u in (ERIN, DAVE)}
    listener = d.container.core.runs.on_state_change[0]
    for state in ["running", "succeeded"] * 10:  # twenty state changes committed in quick succession
        listener("staging", state)
    wait_until(lambda: all(len(views_of(d, u)) > before[u] for u in (ERIN, DAVE)), 20, "the refreshed tabs")
    settled(d)
    assert {u: len(views_of(d, u)) - before[u] for u in (ERIN, DAVE)} == {ERIN: 1, DAVE: 1}


def test_refreshed_views_do_not_keep_a_viewer_recent(deployer: Deployer) -> None:
    """Only opening the tab makes a viewer recent: a refresh is marked as such, so the views a refresh
    publishes are not taken for openings."""
    from commands.home import recent_viewers, refresh_home

    d = deployer
    refresh_home(d.container.core, [DAVE])
    d.bot.settle()
    assert views_of(d, DAVE) and recent_viewers(d.container.core) == []
    open_home(d, ERIN)
    assert recent_viewers(d.container.core) == [ERIN]
