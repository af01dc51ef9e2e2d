"""`chatops console --script`: Slack commands and buttons in a terminal, on SQLite and simulated backends."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.console import ConsoleTransport, changed_lines, plural, run_console
from bot.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"

RunScript = Callable[[list[str]], tuple[int, str]]


@pytest.fixture
def console_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for the example config and a fresh SQLite file, isolated from CHATOPS_* and .env."""
    for name in list(os.environ):
        if name.upper().startswith("CHATOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return Settings(config=EXAMPLE_CONFIG, database_url=f"sqlite:///{tmp_path}/c.db")


@pytest.fixture
def run_script(console_settings: Settings) -> RunScript:
    """Runs script lines through the console; returns (exit code, everything printed)."""
    def run(lines: list[str]) -> tuple[int, str]:
        out = io.StringIO()
        code = run_console(console_settings, script=lines, out=out)
        return code, out.getvalue()

    return run


def section_after(output: str, line: str) -> str:
    """The output printed for one script line: from its echo up to the next echoed line."""
    start = output.index(f"> {line}\n")
    rest = output[start + len(line) + 3:]
    nxt = rest.find("\n\n")
    return rest if nxt < 0 else rest[:nxt]


def test_help_lists_the_commands(run_script: RunScript) -> None:
    """`/help` shows each command's usage line."""
    code, output = run_script(["/help"])
    assert code == 0
    shown = section_after(output, "/help")
    for usage in ("/help [COMMAND]", "/status [--env ENV]", "/audit [--actor USER]"):
        assert usage in shown


def test_status_shows_both_environments_with_simulated_backends(run_script: RunScript) -> None:
    """`/status` describes staging and production and labels every backend as simulated."""
    code, output = run_script(["/status"])
    assert code == 0
    shown = section_after(output, "/status")
    assert "*staging*" in shown and "*production*" in shown
    backends = [line for line in shown.splitlines() if "Backends:" in line]
    assert len(backends) == 2
    for line in backends:
        assert "Kubernetes simulated (no cluster configured)" in line
        assert "Prometheus simulated (no Prometheus configured)" in line
        assert "trading API simulated (no trading API configured)" in line


def test_banner_warns_that_backends_are_simulated(run_script: RunScript) -> None:
    """Before anything runs the console says nothing real is changed."""
    _code, output = run_script([])
    assert output.splitlines()[1].startswith("backends: SIMULATED")
    assert "(nothing real is changed)" in output


def test_help_status_then_bad_command_session(run_script: RunScript) -> None:
    """A session of /help, /status and an unknown command shows all three answers and exits 1."""
    code, output = run_script(["/help", "/status", "/deploy-now v2.3"])
    assert code == 1
    assert "== swarm-chatops commands ==" in section_after(output, "/help")
    assert "*production*" in section_after(output, "/status")
    assert ":warning: unknown command /deploy-now" in section_after(output, "/deploy-now v2.3")
    assert output.rstrip().endswith("error: line 3: unknown command /deploy-now")


def test_unknown_command_stops_the_script(run_script: RunScript) -> None:
    """The line after an unknown command is never run."""
    code, output = run_script(["/nope", "/help"])
    assert code == 1
    assert "error: line 1: unknown command /nope" in output
    assert "> /help" not in output


def test_usage_error_is_shown_and_the_script_continues(run_script: RunScript) -> None:
    """`/status --env moon` prints the error with usage and known environments, then later lines run."""
    code, output = run_script(["/status --env moon", "/help"])
    assert code == 0
    shown = section_after(output, "/status --env moon")
    assert ":warning: unknown environment 'moon'" in shown
    assert "Usage: `/status [--env ENV]`" in shown
    assert "Known environments: production, staging." in shown
    assert "== swarm-chatops commands ==" in section_after(output, "/help")


def test_not_a_command_line_fails(run_script: RunScript) -> None:
    """A line that is neither a slash command, `as` nor `click` stops the script with exit 1."""
    code, output = run_script(["deploy v2.3"])
    assert code == 1
    assert "error: line 1: not a command: 'deploy v2.3'" in output


def test_comments_and_blank_lines_are_skipped(run_script: RunScript) -> None:
    """`#` lines and blank lines run nothing and do not fail."""
    code, output = run_script(["# a comment", "", "/help"])
    assert code == 0
    assert "error:" not in output


def test_viewer_asking_for_audit_is_refused_naming_auditor(run_script: RunScript) -> None:
    """dave (viewer) running /audit sees a refusal that names the auditor role."""
    code, output = run_script(["as dave", "/audit"])
    assert code == 0
    assert "(now acting as dave, U0DAVE004)" in output
    shown = section_after(output, "/audit")
    assert ":no_entry: dave may not read the whole audit log" in shown
    assert "This needs the *auditor* role." in shown


AUDIT_PAGING_SCRIPT = ["as root", "/help", "/status", "/help status", "/audit --limit 2",
                       "click Older records"]


def test_audit_first_page_offers_older_records(run_script: RunScript) -> None:
    """root's `/audit --limit 2` after three commands shows the two newest and an Older records button."""
    code, output = run_script(AUDIT_PAGING_SCRIPT[:-1])
    assert code == 0
    first = section_after(output, "/audit --limit 2")
    assert "`#3`" in first and "`#2`" in first and "`#1`" not in first
    assert "records #2–#3, newest first" in first
    assert "[ Older records ]" in first


def test_click_older_records_shows_the_next_page(run_script: RunScript) -> None:
    """`click Older records` replaces the page with the older records only."""
    code, output = run_script(AUDIT_PAGING_SCRIPT)
    assert code == 0
    older = section_after(output, "click Older records")
    assert older.lstrip().startswith("[replaced]:")
    assert "`#1`" in older and "*root*" in older and "command.help" in older
    assert "`#3`" not in older and "`#2`" not in older
    assert "[ Older records ]" not in older  # nothing older than #1


def test_last_page_has_no_older_button(run_script: RunScript) -> None:
    """Once the oldest record was shown there is no button left to click, so a second click fails."""
    code, output = run_script([*AUDIT_PAGING_SCRIPT, "click Older records"])
    assert code == 1
    assert "error: line 7: no button labelled 'Older records' on any message" in output


def test_audit_page_button_needs_an_auditor(run_script: RunScript) -> None:
    """A viewer clicking the auditor's Older records button is refused naming the auditor role."""
    code, output = run_script([*AUDIT_PAGING_SCRIPT[:-1], "as dave", "click Older records"])
    assert code == 0
    shown = section_after(output, "click Older records")
    assert "dave may not read the whole audit log" in shown and "*auditor*" in shown
    assert "`#1`" not in shown


def test_clicking_a_missing_button_fails(run_script: RunScript) -> None:
    """`click Nope` stops the script with exit 1 and says no such button exists."""
    code, output = run_script(["/help", "click Nope", "/status"])
    assert code == 1
    assert "error: line 2: no button labelled 'Nope' on any message (there are no buttons yet)" in output
    assert "> /status" not in output


def test_acting_as_unknown_person_fails(run_script: RunScript) -> None:
    """`as nobody` fails with exit 1, listing the people in the config."""
    code, output = run_script(["as nobody"])
    assert code == 1
    assert ("error: line 1: no person 'nobody' in the config "
            "(people: alice, bob, carol, dave, erin, root)") in output


def test_console_writes_an_audit_record_per_command(run_script: RunScript,
                                                    console_settings: Settings) -> None:
    """Each console command is audited in the database the settings name."""
    from bot.persistence.audit import AuditFilter, iter_records
    from bot.persistence.db import Database

    run_script(["/help", "as erin", "/status --env production"])
    db = Database(console_settings.database_url)
    try:
        with db.read() as session:
            records = [(r.actor_name, r.action, r.outcome, r.environment)
                       for r in iter_records(session, AuditFilter())]
    finally:
        db.dispose()
    assert records == [("alice", "command.help", "ok", None),
                       ("erin", "command.status", "ok", "production")]


def test_slack_name_of_status_works_in_a_script(run_script: RunScript) -> None:
    """/swarm-status (the name Slack registers, as /status is reserved) answers like /status."""
    code, output = run_script(["/swarm-status --env staging"])
    assert code == 0 and "*staging*" in output


# --- issue 6 item 15: updates, the prompt, wait, click, sim, help, plurals ------------------------------------
STAGING_DEPLOY = '/deploy v2.5 --env staging --canary --reason "console test"'  # ~25 s, no trading pause


def _blocks(*lines: str, button: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if button:
        out.append({"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text",
                                                                                "text": button},
                                                     "action_id": "x", "value": "{}"}]})
    return out


def _transport_with_message(*lines: str) -> tuple[ConsoleTransport, io.StringIO, str]:
    out = io.StringIO()
    transport = ConsoleTransport(out, {})
    ts = transport.deliver("post", "C1", {"text": "t", "blocks": _blocks(*lines)}).ts
    assert ts is not None
    out.truncate(0)
    out.seek(0)
    return transport, out, ts


def test_an_update_that_changes_nothing_visible_prints_nothing() -> None:
    """The same content again, or only an elapsed time moving on, prints no update at all."""
    transport, out, ts = _transport_with_message("== Deploy v1 ==", "🔄 Roll out (5s) — canary at 10%")
    transport.deliver("update", "C1", {"ts": ts, "text": "t",
                                       "blocks": _blocks("== Deploy v1 ==", "🔄 Roll out (5s) — canary at 10%")})
    transport.deliver("update", "C1", {"ts": ts, "text": "t",
                                       "blocks": _blocks("== Deploy v1 ==", "🔄 Roll out (1m6s) — canary at 10%")})
    assert out.getvalue() == ""


def test_an_update_prints_only_its_changed_lines_under_one_header() -> None:
    """A change prints the message's title and the changed lines; a following update of it adds its lines."""
    transport, out, ts = _transport_with_message("== Deploy v1 ==", "*Approvals*: 0/2", "⬜ Roll out")
    transport.deliver("update", "C1", {"ts": ts, "text": "t",
                                       "blocks": _blocks("== Deploy v1 ==", "*Approvals*: 1/2", "⬜ Roll out")})
    transport.deliver("update", "C1", {"ts": ts, "text": "t",
                                       "blocks": _blocks("== Deploy v1 ==", "*Approvals*: 1/2", "🔄 Roll out")})
    assert out.getvalue() == ("[#C1] updated “Deploy v1” (changed lines only; `show` prints it whole):\n"
                              "  *Approvals*: 1/2\n"
                              "  🔄 Roll out\n")


def test_a_removed_line_is_shown_as_removed() -> None:
    """An update that only drops a line says which line went."""
    transport, out, ts = _transport_with_message("== Audit ==", "row 1", "row 2")
    transport.deliver("update", "C1", {"ts": ts, "text": "t", "blocks": _blocks("== Audit ==", "row 1")})
    assert out.getvalue().splitlines()[1:] == ["  (removed) row 2"]


def test_changed_lines_ignores_elapsed_times_only() -> None:
    """`(5s)` → `(6s)` is no change; a new state on the same line is."""
    added, removed = changed_lines(["🔄 Pre-checks (0s)", "x"], ["🔄 Pre-checks (1s)", "x"])
    assert (added, removed) == ([], [])
    added, removed = changed_lines(["🔄 Pre-checks (0s)"], ["✅ Pre-checks (1s)"])
    assert (added, removed) == (["✅ Pre-checks (1s)"], [])


def test_a_staging_deploy_in_the_console(run_script: RunScript) -> None:
    """A whole staging deploy: `click Tick` right after /deploy finds the button the starting run posts a
    moment later; every update header has at least one changed line under it; `wait RUN` afterwards
    (a new console on the same database) says how that run ended."""
    code, output = run_script([STAGING_DEPLOY, "click Tick: Stakeholders notified", "wait"])
    assert code == 0
    assert "Ticked “Stakeholders notified”." in output
    lines = output.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("[#C0STAGING1] updated “")]
    assert headers, "the run's message was never updated"
    for i in headers:
        assert i + 1 < len(lines) and lines[i + 1].startswith("  "), f"empty update: {lines[i]!r}"
    assert "changed line(s)" not in output and "0 changed" not in output
    assert "✅ Succeeded" in output
    run_id = re.search(r"run `(r-[0-9a-f]+)`", output)
    assert run_id
    code, output = run_script([f"wait {run_id.group(1)}"])
    assert code == 0
    assert f"(wait: run {run_id.group(1)} has finished: succeeded)" in output


class _Stdin:
    """Standard input for the interactive console: hands out lines, calling `before_line(n)` first."""

    def __init__(self, lines: list[str], before_line: Callable[[int], None]) -> None:
        self.lines, self.before_line, self.n = lines, before_line, 0

    def readline(self) -> str:
        self.before_line(self.n)
        self.n += 1
        return self.lines.pop(0) + "\n" if self.lines else ""


def test_output_arriving_at_the_prompt_is_followed_by_the_prompt(console_settings: Settings) -> None:
    """While the console waits for input the run goes on; its messages start on a new line after the
    prompt, and the prompt is printed again after them."""
    out = io.StringIO()
    mark: list[int] = []

    def before_line(n: int) -> None:
        if n == 2:  # at the prompt after the tick: the run goes on and updates its message meanwhile
            mark.append(len(out.getvalue()))
            deadline = time.monotonic() + 120
            while "updated “" not in out.getvalue()[mark[0]:] and time.monotonic() < deadline:
                time.sleep(0.05)

    lines = [STAGING_DEPLOY, "click Tick: Stakeholders notified", "quit"]
    code = run_console(console_settings, script=None, stdin=_Stdin(lines, before_line),
                       out=out)  # type: ignore[arg-type]
    assert code == 0
    text = out.getvalue()
    assert text[:mark[0]].endswith("\nalice> ")
    tail = text[mark[0]:]
    assert tail.startswith("\n[#C0STAGING1"), tail[:200]  # off the prompt's line first
    first_block = tail[1:tail.index("alice> ")]
    assert first_block.endswith("\n") and "\n\n" not in first_block  # the block, then the prompt again
    assert "updated “Deploy v2.5 → staging" in tail[:tail.rindex("alice> ")]


def test_prompt_is_reprinted_after_a_post_at_the_prompt() -> None:
    """A post delivered while the prompt is shown starts on a new line and gives the prompt back."""
    out = io.StringIO()
    transport = ConsoleTransport(out, {})
    transport.set_prompt("bob> ")
    transport.deliver("post", "C1", {"text": "hello"})
    transport.set_prompt(None)
    transport.deliver("post", "C1", {"text": "later"})
    assert out.getvalue() == "bob> \n[#C1] bot posted:\n  hello\nbob> [#C1] bot posted:\n  later\n"


def test_wait_returns_when_the_only_run_waits_for_a_tick(run_script: RunScript) -> None:
    """`wait` does not block on a run that waits for a person: it says what the run needs."""
    code, output = run_script([STAGING_DEPLOY, "wait", "/status --env staging"])
    assert code == 0
    shown = section_after(output, "wait")
    assert "waits for a tick (`click Tick: Stakeholders notified`)" in shown
    assert "gave up" not in shown
    assert "> /status --env staging" in output


def test_wait_gives_up_after_its_limit_saying_what_still_runs(run_script: RunScript) -> None:
    """`wait 1` during a rollout gives up after a second and names the run and its step."""
    code, output = run_script([STAGING_DEPLOY, "click Tick: Stakeholders notified", "wait 1", "wait"])
    assert code == 0
    shown = section_after(output, "wait 1")
    assert re.search(r"\(wait: gave up after 1s; still working: run r-[0-9a-f]+ (running|queued)", shown)
    assert "(wait: done — no deploy run is active)" in section_after(output, "wait")


@pytest.mark.parametrize(("line", "message"), [
    ("wait soon", "wait: 'soon' is not a run id (r-…) nor a number of seconds from 1 to 3600"),
    ("wait 0", "wait: '0' is not a run id"),
    ("wait r-00000000", "wait: no run r-00000000 (active runs: none)"),
])
def test_wait_arguments_are_checked(run_script: RunScript, line: str, message: str) -> None:
    """Bad `wait` arguments are a clear error."""
    code, output = run_script([line])
    assert code == 1 and f"error: line 1: {message}" in output


def test_click_unknown_label_fails_at_once_listing_the_buttons(run_script: RunScript) -> None:
    """With a run waiting at its checklist, `click Nope` fails and names the buttons that are there."""
    code, output = run_script([STAGING_DEPLOY, "wait", "click Nope"])
    assert code == 1
    assert ("error: line 3: no button labelled 'Nope' on any message "
            "(buttons now: Tick: Stakeholders notified, Abort)") in output


@pytest.mark.parametrize(("line", "message"), [
    ("sim error-rate high", "sim: error rate must be a number: a fraction from 0 to 1 (0.2) or a percentage "
                            "(20%), not 'high'"),
    ("sim error-rate 5", "sim: error rate 5 is out of range: give a fraction from 0 to 1 (0.05 = 5 %) or a "
                         "percentage with % (did you mean 5%, i.e. 0.05?)"),
    ("sim error-rate 120%", "sim: error rate 120% is out of range: a percentage goes from 0% to 100%"),
    ("sim error-rate -0.1", "sim: error rate -0.1 is out of range"),
    ("sim error-rate nan", "sim: error rate must be a number"),
    ("sim order-success 2", "sim: order success 2 is out of range"),
    ("sim latency-ms fast", "sim: p95 latency must be a number of milliseconds (e.g. 1500), not 'fast'"),
    ("sim latency-ms -5", "sim: p95 latency -5 ms is out of range: 0 to 600000 ms"),
    ("sim nodata maybe", "sim: nodata takes on or off, not 'maybe'"),
    ("sim prometheus sideways", "sim: prometheus takes down or up, not 'sideways'"),
    ("sim error-rate 0.2 prod", "sim error-rate: unknown environment 'prod' (environments: staging, production)"),
    ("sim error-rate", "sim error-rate: needs a value"),
    ("sim fail-job nope production", "sim fail-job: production has no job 'nope' (jobs: backup, migrate, verify)"),
    ("sim warp 9", "sim: unknown setting 'warp'"),
    ("sim", "sim: what should change?"),
])
def test_bad_sim_values_are_clear_errors(run_script: RunScript, line: str, message: str) -> None:
    """Each bad `sim` line stops the script with a message saying what is accepted."""
    code, output = run_script([line])
    assert code == 1
    assert f"error: line 1: {message}" in output
    assert "could not convert" not in output


@pytest.mark.parametrize(("line", "shown"), [
    ("sim error-rate 0.2 production", "(simulated production: error rate 0.2 (20 %))"),
    ("sim error-rate 20%", "(simulated staging: error rate 0.2 (20 %))"),
    ("sim order-success 99.5%", "(simulated staging: order success 0.995 (99.5 %))"),
    ("sim latency-ms 1500", "(simulated staging: p95 latency 1500 ms)"),
    ("sim nodata on", "(simulated staging: Prometheus answers with no data)"),
    ("sim prometheus down production", "(simulated production: Prometheus is down)"),
    ("sim fail-job migrate production", "(simulated production: jobs named migrate will fail)"),
])
def test_good_sim_values_say_what_they_set(run_script: RunScript, line: str, shown: str) -> None:
    """Accepted values are echoed in their units (a fraction and its percentage, milliseconds)."""
    code, output = run_script([line])
    assert code == 0 and shown in output


def test_sim_error_rate_as_a_percentage_fails_the_canary(run_script: RunScript) -> None:
    """`sim error-rate 20%` is the same as 0.2: the staging canary analysis fails and the run rolls back."""
    code, output = run_script([STAGING_DEPLOY,
                               "sim error-rate 20%", "click Tick: Stakeholders notified", "wait"])
    assert code == 0
    assert "error_rate=0.2 > 0.05 FAIL" in output
    assert "⏪ Rolled back" in output


def test_help_lists_every_console_line_and_sim_option(run_script: RunScript) -> None:
    """`help` names show, wait, as, click, quit and every sim setting with its units."""
    code, output = run_script(["help"])
    assert code == 0
    shown = section_after(output, "help")
    for item in ("/COMMAND", "as PERSON", "click LABEL", "show", "wait [RUN] [SECONDS]", "quit",
                 "sim error-rate RATE", "sim order-success RATE", "sim latency-ms MS", "sim nodata on|off",
                 "sim prometheus down|up", "sim fail-rollout", "sim fail-job JOB", "a fraction 0–1",
                 "alice, bob, carol, dave, erin, root"):
        assert item in shown, item


def test_plural() -> None:
    """Counts read as English."""
    assert [plural(n, "line") for n in (0, 1, 2)] == ["0 lines", "1 line", "2 lines"]
    assert plural(3, "reply", "replies") == "3 replies"


def test_console_messages_use_proper_plurals(run_script: RunScript) -> None:
    """The console's own lines say "2 approvals", never "approval(s)" or "line(s)"."""
    code, output = run_script(['/deploy v2.3 --env production --reason "x"', "wait"])
    assert code == 0
    shown = section_after(output, "wait")
    assert "waits for approval (2 approvals required; an approver can `click Approve`)" in shown
    console_lines = [line for line in output.splitlines() if line.startswith(("(", "error:", "["))]
    assert not [line for line in console_lines if "(s)" in line]
