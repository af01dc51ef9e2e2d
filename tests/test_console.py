"""`chatops console --script`: Slack commands and buttons in a terminal, on SQLite and simulated backends."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.console import run_console
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
    assert "error: line 2: no button labelled 'Nope' on any message" in output
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
