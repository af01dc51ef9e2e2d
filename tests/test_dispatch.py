"""The dispatcher on SQLite: idempotent delivery, audited denials, rollback on failure, no tracebacks."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.config import Config, load_config
from bot.core.context import Core
from bot.core.model import ActionInvocation, Actor, Invocation, Reply
from bot.core.rbac import Authorizer
from bot.errors import Conflict
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.persistence.audit import AuditFilter, iter_records, verify
from bot.persistence.db import Database
from bot.persistence.models import OutboxMessage, SlackMessage
from commands import registry
from commands.dispatch import CommandEntry, Ctx, Dispatcher
from commands.grammar import CommandSpec, Positional, text_value

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"

ALICE = Actor("U0ALICE01", "alice")
DAVE = Actor("U0DAVE004", "dave")
ROOT = Actor("U0ROOT006", "root")
CHANNEL = "C0TESTING"
INTERNAL_DETAIL = "connection string postgresql://internal-host/secret-db"


# --- a probe command whose handler writes, then succeeds or fails as told ------------------------------
@dataclass(frozen=True)
class Probe:
    mode: str


PROBE_SPEC = CommandSpec(name="probe", summary="test probe", target=Probe,
                         positionals=(Positional("mode", text_value, "ok | conflict | crash"),))


def _probe_run(cmd: Probe, ctx: Ctx) -> Reply:
    assert ctx.session is not None
    ctx.session.add(SlackMessage(key=f"probe:{ctx.correlation_id}", channel=CHANNEL, ts="1.000001",
                                 thread_ts=None, created_at=datetime.now(UTC)))
    ctx.audit("probe.step", "ok", environment="staging", step="wrote a row")
    if cmd.mode == "conflict":
        raise Conflict("the run moved on while you were clicking")
    if cmd.mode == "crash":
        raise RuntimeError(INTERNAL_DETAIL)
    return Reply("probe done")


def _probe_now_run(cmd: Probe, _ctx: Ctx) -> Reply:
    if cmd.mode == "crash":
        raise KeyError(INTERNAL_DETAIL)
    return Reply("probe-now done")


PROBE_NOW_SPEC = CommandSpec(name="probe-now", summary="test probe answered at ack time", target=Probe,
                             positionals=(Positional("mode", text_value, "ok | crash"),))


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_config() -> Config:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in tmp_path."""
    db = Database(f"sqlite:///{tmp_path}/dispatch.db")
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def dispatcher(example_config: Config, database: Database, metrics: Metrics) -> Dispatcher:
    """The real command registry plus the probe commands, over the example config (no outbox worker)."""
    core = Core(config=example_config, authorizer=Authorizer(example_config), db=database, outbox=Outbox())
    commands, actions = registry.build()
    commands["probe"] = CommandEntry(PROBE_SPEC, lambda _c, _x: "staging", _probe_run, needs_db=True)
    commands["probe-now"] = CommandEntry(PROBE_NOW_SPEC, lambda _c, _x: None, _probe_now_run, needs_db=False)
    return Dispatcher(core, commands, actions, metrics)


def invocation(command: str, text: str, actor: Actor = ALICE, key: str = "cmd:trigger-1") -> Invocation:
    return Invocation(command=command, text=text, actor=actor, channel_id=CHANNEL, idempotency_key=key,
                      source="test")


def deliver(dispatcher: Dispatcher, inv: Invocation) -> Any:
    """Prepare an invocation and run its background job, as a front end would."""
    prepared = dispatcher.prepare(inv)
    prepared.job()
    return prepared


def audit_rows(db: Database) -> list[tuple[str, str, str | None, str | None, dict[str, Any]]]:
    with db.read() as session:
        return [(r.action, r.outcome, r.actor_name, r.environment, json.loads(r.args))
                for r in iter_records(session, AuditFilter())]


def outbox_texts(db: Database) -> list[str]:
    with db.read() as session:
        return [row.payload["text"] for row in session.execute(select(OutboxMessage)).scalars()]


def probe_rows(db: Database) -> int:
    with db.read() as session:
        return len(session.execute(select(SlackMessage)).all())


def duplicates(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("chatops_slack_duplicates_total", {"kind": kind}) or 0.0


# --- idempotency ----------------------------------------------------------------------------------------
def test_redelivered_command_is_audited_once(dispatcher: Dispatcher, database: Database,
                                             metrics: Metrics) -> None:
    """The same idempotency key prepared and run twice (a database command) writes one audit record."""
    for _ in range(2):
        deliver(dispatcher, invocation("audit", "--limit 5", actor=ROOT))
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("command.audit", "ok")]
    assert len(outbox_texts(database)) == 1
    assert duplicates(metrics, "command") == 1.0


def test_redelivered_ack_time_command_is_audited_once(dispatcher: Dispatcher, database: Database) -> None:
    """A command answered at ack time (/help) and redelivered still has one audit record."""
    first = deliver(dispatcher, invocation("help", ""))
    second = deliver(dispatcher, invocation("help", ""))
    assert first.ack == second.ack  # a retry still gets its acknowledgement
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("command.help", "ok")]


def test_redelivered_handler_runs_its_writes_once(dispatcher: Dispatcher, database: Database) -> None:
    """A handler's own writes happen once when its delivery is repeated."""
    for _ in range(2):
        deliver(dispatcher, invocation("probe", "ok"))
    assert probe_rows(database) == 1
    assert [a for a, *_ in audit_rows(database)] == ["probe.step", "command.probe"]


def test_concurrent_duplicates_are_audited_once(dispatcher: Dispatcher, database: Database) -> None:
    """Two deliveries of one key racing in threads (a Slack retry during the first attempt) act once."""
    jobs = [dispatcher.prepare(invocation("probe", "ok")).job for _ in range(2)]
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Any) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert probe_rows(database) == 1
    assert [a for a, *_ in audit_rows(database)] == ["probe.step", "command.probe"]


def test_different_keys_are_separate_deliveries(dispatcher: Dispatcher, database: Database) -> None:
    """Two invocations with different keys are two audited commands."""
    deliver(dispatcher, invocation("help", "", key="cmd:a"))
    deliver(dispatcher, invocation("help", "", key="cmd:b"))
    assert len(audit_rows(database)) == 2


# --- the audit trail of refusals and errors -----------------------------------------------------------
def test_denial_is_audited_as_denied(dispatcher: Dispatcher, database: Database) -> None:
    """dave's /audit is refused at once, naming the auditor role, and recorded with outcome denied."""
    prepared = deliver(dispatcher, invocation("audit", "", actor=DAVE))
    assert prepared.outcome == "denied"
    assert prepared.ack is not None and "*auditor* role" in prepared.ack.text
    [(action, outcome, actor, _env, args)] = audit_rows(database)
    assert (action, outcome, actor) == ("command.audit", "denied", "dave")
    assert args["command"] == "/audit"


def test_denial_records_the_environment_asked_for(dispatcher: Dispatcher, database: Database) -> None:
    """A refused `/audit --env production` is recorded against production."""
    deliver(dispatcher, invocation("audit", "--env production", actor=DAVE))
    [(_action, outcome, _actor, env, _args)] = audit_rows(database)
    assert (outcome, env) == ("denied", "production")


def test_denied_command_never_runs_its_handler(dispatcher: Dispatcher, database: Database) -> None:
    """A refused database command enqueues no reply from its handler (the refusal is the ack)."""
    prepared = deliver(dispatcher, invocation("audit", "--limit 5", actor=DAVE))
    assert prepared.ack is not None
    assert outbox_texts(database) == []


def test_usage_error_is_audited(dispatcher: Dispatcher, database: Database) -> None:
    """`/status --env moon` answers with the usage and is audited as usage_error."""
    prepared = deliver(dispatcher, invocation("status", "--env moon"))
    assert prepared.ack is not None and "Usage: `/status [--env ENV]`" in prepared.ack.text
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("command.status", "usage_error")]


def test_unknown_command_is_audited_without_echoing_a_new_action_name(dispatcher: Dispatcher,
                                                                       database: Database) -> None:
    """An unknown command is refused and audited under command.unknown, keeping its text in args."""
    prepared = deliver(dispatcher, invocation("rm-rf", "everything"))
    assert prepared.ack is not None and "unknown command /rm-rf" in prepared.ack.text
    [(action, outcome, _actor, _env, args)] = audit_rows(database)
    assert (action, outcome) == ("command.unknown", "usage_error")
    assert args == {"command": "/rm-rf", "text": "everything"}


def test_handler_chatops_error_rolls_back_its_changes(dispatcher: Dispatcher, database: Database) -> None:
    """A handler raising Conflict leaves neither its row nor its own audit entry behind."""
    deliver(dispatcher, invocation("probe", "conflict"))
    assert probe_rows(database) == 0
    assert [a for a, *_ in audit_rows(database)] == ["command.probe"]


def test_handler_chatops_error_is_audited_and_reported(dispatcher: Dispatcher, database: Database) -> None:
    """The failure is recorded with the error's outcome and message, and the user is told."""
    deliver(dispatcher, invocation("probe", "conflict"))
    [(action, outcome, _actor, env, args)] = audit_rows(database)
    assert (action, outcome, env) == ("command.probe", "conflict", "staging")
    assert args["error"] == ":warning: the run moved on while you were clicking"
    assert outbox_texts(database) == [":warning: the run moved on while you were clicking"]


def test_handler_failure_is_recorded_once_on_redelivery(dispatcher: Dispatcher, database: Database) -> None:
    """A failed delivery that Slack retries does not record the failure (or reply) a second time."""
    for _ in range(2):
        deliver(dispatcher, invocation("probe", "conflict"))
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("command.probe", "conflict")]
    assert len(outbox_texts(database)) == 1


def test_handler_success_commits_its_writes_with_the_audit(dispatcher: Dispatcher,
                                                           database: Database) -> None:
    """On success the handler's row, its own audit entry and the command's record are all committed."""
    deliver(dispatcher, invocation("probe", "ok"))
    assert probe_rows(database) == 1
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("probe.step", "ok"), ("command.probe", "ok")]
    assert outbox_texts(database) == ["probe done"]


ERROR_ID = re.compile(r"error id `(E-[0-9a-f]{8})`")


def test_unexpected_exception_gives_an_error_id_not_a_traceback(dispatcher: Dispatcher, database: Database,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A handler crash tells the user an error id, never the exception, and logs it under that id."""
    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        deliver(dispatcher, invocation("probe", "crash"))
    [text] = outbox_texts(database)
    match = ERROR_ID.search(text)
    assert match is not None
    for leak in ("Traceback", "RuntimeError", INTERNAL_DETAIL):
        assert leak not in text
    assert any(match.group(1) in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_unexpected_exception_is_audited_as_internal_error(dispatcher: Dispatcher,
                                                           database: Database) -> None:
    """The crash is rolled back and recorded once as internal_error, with the error id in args."""
    deliver(dispatcher, invocation("probe", "crash"))
    assert probe_rows(database) == 0
    [(action, outcome, _actor, _env, args)] = audit_rows(database)
    assert (action, outcome) == ("command.probe", "internal_error")
    assert ERROR_ID.search(args["error"]) and INTERNAL_DETAIL not in args["error"]


def test_unexpected_exception_at_ack_time_gives_an_error_id(dispatcher: Dispatcher,
                                                            database: Database) -> None:
    """A crash in a command answered at ack time is acknowledged with an error id, no traceback."""
    prepared = deliver(dispatcher, invocation("probe-now", "crash"))
    assert prepared.outcome == "internal_error"
    assert prepared.ack is not None and ERROR_ID.search(prepared.ack.text)
    assert "KeyError" not in prepared.ack.text and INTERNAL_DETAIL not in prepared.ack.text
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("command.probe-now", "internal_error")]


def test_dispatch_keeps_the_audit_chain_valid(dispatcher: Dispatcher, database: Database) -> None:
    """A mix of successes, refusals and failures leaves a chain that verifies."""
    mix = [("help", "", ALICE), ("audit", "", DAVE), ("probe", "conflict", ALICE), ("probe", "crash", ALICE),
           ("probe", "ok", ALICE)]
    for n, (command, text, actor) in enumerate(mix):
        deliver(dispatcher, invocation(command, text, actor=actor, key=f"cmd:{n}"))
    with database.read() as session:
        result = verify(session)
    assert result.ok and result.checked == 6


# --- button clicks --------------------------------------------------------------------------------------
def click(action_id: str, value: str, actor: Actor = ROOT, key: str = "act:1") -> ActionInvocation:
    return ActionInvocation(action_id=action_id, value=value, actor=actor, channel_id=CHANNEL,
                            message_ts="1700000000.000100", idempotency_key=key, source="test")


def test_redelivered_click_is_audited_once(dispatcher: Dispatcher, database: Database,
                                           metrics: Metrics) -> None:
    """A double-clicked Older records button pages once and is recorded once."""
    for _ in range(2):
        dispatcher.prepare_action(click("audit.page", '{"before": 5, "limit": 2}')).job()
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("action.audit.page", "ok")]
    assert duplicates(metrics, "action") == 1.0


def test_click_by_a_non_auditor_is_denied_and_audited(dispatcher: Dispatcher, database: Database) -> None:
    """Whoever clicks the audit page button must be an auditor; dave's click is recorded as denied."""
    prepared = dispatcher.prepare_action(click("audit.page", '{"limit": 2}', actor=DAVE))
    assert prepared.outcome == "denied"
    prepared.job()
    assert [(a, o) for a, o, *_ in audit_rows(database)] == [("action.audit.page", "denied")]
    assert "*auditor* role" in outbox_texts(database)[0]


def test_click_with_a_malformed_value_is_a_usage_error(dispatcher: Dispatcher, database: Database) -> None:
    """A button value that is not JSON is refused and audited as usage_error."""
    prepared = dispatcher.prepare_action(click("audit.page", "not json"))
    prepared.job()
    assert prepared.outcome == "usage_error"
    assert outbox_texts(database) == [":warning: button value is not JSON"]


def test_mistyped_button_value_is_refused_clearly(dispatcher: Dispatcher, database: Database) -> None:
    """An audit page button whose env is a list is refused as malformed, not with a crash."""
    prepared = dispatcher.prepare_action(click("audit.page", '{"env": ["production"]}'))
    prepared.job()
    assert prepared.outcome == "usage_error"
    assert "malformed" in outbox_texts(database)[0]


def test_unexpected_exception_while_authorizing_a_click_gives_an_error_id(dispatcher: Dispatcher,
                                                                         database: Database) -> None:
    """A bug inside a button's permission check is answered with an error id, not a traceback."""
    from commands.dispatch import ActionEntry

    def broken(_value: dict, _ctx: object) -> str:
        raise KeyError("bug")

    dispatcher.actions["test.broken"] = ActionEntry("test.broken", broken, lambda v, c: None)  # type: ignore[arg-type]
    prepared = dispatcher.prepare_action(click("test.broken", "{}"))
    prepared.job()
    assert prepared.outcome == "internal_error"
    assert ERROR_ID.search(outbox_texts(database)[0])


def test_unsupported_button_is_refused(dispatcher: Dispatcher, database: Database) -> None:
    """A click on a button from an older release is told to run the command again."""
    prepared = dispatcher.prepare_action(click("legacy.retired-button", "{}"))
    prepared.job()
    assert prepared.outcome == "usage_error"
    assert "no longer supported" in outbox_texts(database)[0]

