"""`chatops` CLI: config check, db migrations, audit verify and export (exit codes, no tracebacks)."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import cli
from bot.persistence import audit
from bot.persistence.audit import AuditEntry
from bot.persistence.db import Database

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"
BOT_TOKEN = "xoxb-1111111111-2222222222-SeCrEtSeCrEtSeCrEt"

Chatops = Callable[..., int]
RawSql = Callable[[str], None]
Capsys = pytest.CaptureFixture[str]

# (actor id, actor name, environment, action, outcome, ts, args)
RECORDS = [
    ("U0ALICE01", "alice", "staging", "command.deploy", "ok", "2026-01-10T09:00:00.000000Z",
     {"command": "/deploy", "text": "v2.3 --reason password=hunter2", "token": BOT_TOKEN}),
    ("U0BOB0002", "bob", "production", "command.approve", "ok", "2026-02-10T09:00:00.000000Z",
     {"command": "/approve", "text": "run 7"}),
    ("U0ALICE01", "alice", "production", "command.deploy", "denied", "2026-03-10T09:00:00.000000Z",
     {"command": "/deploy", "text": f"v2.4 --env production --reason {BOT_TOKEN}"}),
    ("U0DAVE004", "dave", None, "command.status", "ok", "2026-04-10T09:00:00.000000Z",
     {"command": "/status", "text": ""}),
    ("U0ROOT006", "root", None, "command.audit", "ok", "2026-05-10T09:00:00.000000Z",
     {"command": "/audit", "text": "--limit 2"}),
]


@pytest.fixture
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, with no CHATOPS_* variables and no .env in sight."""
    for name in list(os.environ):
        if name.upper().startswith("CHATOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def db_file(isolated_cwd: Path) -> Path:
    return isolated_cwd / "chatops-test.db"


@pytest.fixture
def db_url(db_file: Path) -> str:
    return f"sqlite:///{db_file}"


@pytest.fixture
def chatops(db_url: str) -> Chatops:
    """Runs `chatops --config <example> --database-url <tmp db> ARGS...` and returns the exit code."""
    def run(*args: str, config: Path = EXAMPLE_CONFIG) -> int:
        return cli.main(["--config", str(config), "--database-url", db_url, *args])

    return run


@pytest.fixture
def audited_db(db_url: str, db_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrated database holding the five RECORDS (fixed timestamps), one transaction each."""
    stamps = iter(r[5] for r in RECORDS)
    db = Database(db_url)
    try:
        db.upgrade()
        with monkeypatch.context() as patch:
            patch.setattr(audit, "now_iso", lambda: next(stamps))
            for actor_id, name, env, action, outcome, _ts, args in RECORDS:
                with db.transaction() as session:
                    audit.append(session, AuditEntry(actor_id=actor_id, actor_name=name, channel="C0CONSOLE",
                                                     environment=env, action=action, outcome=outcome,
                                                     correlation_id=f"corr-{name}", args=args))
    finally:
        db.dispose()
    return db_file


@pytest.fixture
def raw_sql(audited_db: Path) -> RawSql:
    """Executes one SQL statement directly on the database file, as a tamperer would."""
    def execute(statement: str) -> None:
        conn = sqlite3.connect(audited_db)
        try:
            conn.executescript(statement)
            conn.commit()
        finally:
            conn.close()

    return execute


def broken_config(tmp_path: Path) -> Path:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    text = text.replace("deploy: C0STAGING1", "deploy: staging-deploys")
    text = text.replace("default_environment: staging", "default_environment: staging\nbogus_key: 1")
    path = tmp_path / "broken.yml"
    path.write_text(text, encoding="utf-8")
    return path


# --- config check ---------------------------------------------------------------------------------
def test_config_check_accepts_the_example(chatops: Chatops, capsys: Capsys) -> None:
    """`config check` on the example config exits 0 and summarises environments and people."""
    assert chatops("config", "check") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"{EXAMPLE_CONFIG}: OK — 2 environment(s) (staging, production), 6 people" in out


def test_config_check_lists_each_problem_with_its_path(chatops: Chatops, isolated_cwd: Path,
                                                       capsys: Capsys) -> None:
    """A broken config exits 2 and lists every problem by field path, without a traceback."""
    path = broken_config(isolated_cwd)
    assert chatops("config", "check", config=path) == cli.EXIT_CONFIG
    captured = capsys.readouterr()
    heading, *problems = captured.err.splitlines()
    assert heading == f"{path} has 2 problem(s):"
    assert sorted(problems) == [
        "  - bogus_key: unknown field (check the spelling; see docs/configuration.md)",
        "  - environments.staging.channels.deploy: 'staging-deploys' is not a Slack channel id "
        "(like C0123ABC)",
    ]
    assert "Traceback" not in captured.err + captured.out
    assert "OK" not in captured.out


def test_config_check_reports_a_missing_file(chatops: Chatops, isolated_cwd: Path,
                                             capsys: Capsys) -> None:
    """A config path that does not exist exits 2 naming the path."""
    assert chatops("config", "check", config=isolated_cwd / "nope.yml") == cli.EXIT_CONFIG
    assert "nope.yml: file not found" in capsys.readouterr().err


def test_config_check_reports_invalid_settings(chatops: Chatops, monkeypatch: pytest.MonkeyPatch,
                                               capsys: Capsys) -> None:
    """A bad CHATOPS_* variable exits 2 naming the variable."""
    monkeypatch.setenv("CHATOPS_LOG_FORMAT", "xml")
    assert chatops("config", "check") == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("settings has 1 problem(s):")
    assert "CHATOPS_LOG_FORMAT: Value error, must be 'text' or 'json'" in err


def test_config_check_never_prints_secrets(chatops: Chatops, monkeypatch: pytest.MonkeyPatch,
                                           capsys: Capsys) -> None:
    """A set bot token is shown as `set`, never its value."""
    monkeypatch.setenv("CHATOPS_SLACK_BOT_TOKEN", BOT_TOKEN)
    assert chatops("config", "check") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "  slack_bot_token = set" in out
    assert BOT_TOKEN not in out


def test_config_check_hides_database_password(isolated_cwd: Path, capsys: Capsys) -> None:
    """A password in the database URL is masked in the settings listing."""
    url = "postgresql://chatops:pg-s3cret@127.0.0.1:5432/chatops"
    code = cli.main(["--config", str(EXAMPLE_CONFIG), "--database-url", url, "config", "check"])
    assert code == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "database_url = postgresql://chatops:***@127.0.0.1:5432/chatops" in out
    assert "pg-s3cret" not in out


def test_config_check_shows_unset_secrets_as_unset(chatops: Chatops,
                                                   capsys: Capsys) -> None:
    """Secrets that are not configured are listed as `unset`, as Settings.redacted() documents."""
    assert chatops("config", "check") == cli.EXIT_OK
    assert "  slack_bot_token = unset" in capsys.readouterr().out


# --- db ---------------------------------------------------------------------------------------------
@pytest.fixture
def head(db_url: str) -> str:
    """The newest migration revision shipped with the package."""
    db = Database(db_url)
    try:
        revision = db.head_revision()
    finally:
        db.dispose()
    assert revision is not None
    return revision


def test_db_current_before_upgrade_says_to_migrate(chatops: Chatops, head: str, capsys: Capsys) -> None:
    """A fresh database is behind head: exit 1 with the command to run."""
    assert chatops("db", "current") == cli.EXIT_FAIL
    assert capsys.readouterr().out.strip() == f"current None, head {head} — run `chatops db upgrade`"


def test_db_upgrade_then_current_is_at_head(chatops: Chatops, head: str, capsys: Capsys) -> None:
    """`db upgrade` migrates to head and `db current` then exits 0."""
    assert chatops("db", "upgrade") == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == f"database at revision {head}"
    assert chatops("db", "current") == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == f"current {head}, head {head}"


def test_db_upgrade_to_the_first_revision_is_behind_head(chatops: Chatops, head: str, capsys: Capsys) -> None:
    """`db upgrade 0001` stops there, and `db current` then reports it behind head (unless 0001 is head)."""
    assert chatops("db", "upgrade", "0001") == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "database at revision 0001"
    assert chatops("db", "current") == (cli.EXIT_OK if head == "0001" else cli.EXIT_FAIL)


def test_db_upgrade_twice_is_harmless(chatops: Chatops, head: str, capsys: Capsys) -> None:
    """Running the migrations again on an up-to-date database changes nothing and succeeds."""
    assert chatops("db", "upgrade") == cli.EXIT_OK
    assert chatops("db", "upgrade") == cli.EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1] == f"database at revision {head}"


# --- audit verify ---------------------------------------------------------------------------------
def test_audit_verify_ok_on_an_intact_chain(chatops: Chatops, audited_db: Path,
                                            capsys: Capsys) -> None:
    """Five untouched records verify."""
    assert chatops("audit", "verify") == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "audit chain OK: 5 records verified"


def test_audit_verify_ok_after_a_console_session(chatops: Chatops, db_url: str,
                                                 capsys: Capsys) -> None:
    """Records written by real commands through the console form a valid chain."""
    from bot.console import run_console
    from bot.settings import Settings

    script = ["/help", "/status", "as root", "/audit --limit 1", "click Older records"]
    code = run_console(Settings(config=EXAMPLE_CONFIG, database_url=db_url), script=script, out=io.StringIO())
    assert code == 0
    assert chatops("audit", "verify") == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "audit chain OK: 4 records verified"


def test_audit_verify_names_an_edited_record(chatops: Chatops, raw_sql: RawSql,
                                             capsys: Capsys) -> None:
    """Changing record 3's outcome from denied to ok is caught at record 3."""
    raw_sql("UPDATE audit_log SET outcome = 'ok' WHERE seq = 3")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.strip() == (
        "audit chain BROKEN at record 3: record 3 was altered (content hash mismatch) "
        "(2 records verified before it)")


def test_audit_verify_names_an_edited_first_record(chatops: Chatops, raw_sql: RawSql,
                                                   capsys: Capsys) -> None:
    """Editing the very first record's args is caught at record 1."""
    raw_sql("UPDATE audit_log SET args = '{}' WHERE seq = 1")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.startswith("audit chain BROKEN at record 1: record 1 was altered")


def test_audit_verify_names_a_deleted_middle_record(chatops: Chatops, raw_sql: RawSql,
                                                    capsys: Capsys) -> None:
    """Deleting record 3 is reported as record 3 missing."""
    raw_sql("DELETE FROM audit_log WHERE seq = 3")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.startswith(
        "audit chain BROKEN at record 3: record 3 is missing (the next record is 4)")


def test_audit_verify_catches_renumbered_records_after_a_deletion(
        chatops: Chatops, raw_sql: RawSql, capsys: Capsys) -> None:
    """Deleting record 3 and renumbering the rest to close the gap is still caught at record 3."""
    raw_sql("DELETE FROM audit_log WHERE seq = 3; UPDATE audit_log SET seq = seq - 1 WHERE seq > 3; "
            "UPDATE audit_head SET seq = 4")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.startswith("audit chain BROKEN at record 3: ")


def test_audit_verify_catches_records_cut_off_the_end(chatops: Chatops, raw_sql: RawSql,
                                                      capsys: Capsys) -> None:
    """Deleting the last two records is caught through the audit head."""
    raw_sql("DELETE FROM audit_log WHERE seq >= 4")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.strip() == (
        "audit chain BROKEN at record 4: records 4..5 were removed from the end "
        "(3 records verified before it)")


def test_audit_verify_catches_every_record_deleted(chatops: Chatops, raw_sql: RawSql,
                                                   capsys: Capsys) -> None:
    """An emptied audit table is not a valid empty chain while the head remembers five records."""
    raw_sql("DELETE FROM audit_log")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert "records 1..5 were removed from the end" in capsys.readouterr().out


def test_audit_verify_catches_swapped_records(chatops: Chatops, raw_sql: RawSql,
                                              capsys: Capsys) -> None:
    """Swapping the whole content (hashes included) of records 2 and 3 is caught at record 2."""
    raw_sql("UPDATE audit_log SET seq = -2 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; "
            "UPDATE audit_log SET seq = 3 WHERE seq = -2")
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.startswith(
        "audit chain BROKEN at record 2: record 2 does not follow record 1")


def test_audit_verify_catches_a_rehashed_last_record(chatops: Chatops, audited_db: Path,
                                                     capsys: Capsys) -> None:
    """Editing the last record and recomputing its own hash still disagrees with the audit head."""
    conn = sqlite3.connect(audited_db)
    try:
        row = conn.execute(f"SELECT {', '.join(audit.HASHED_FIELDS)} FROM audit_log WHERE seq = 5").fetchone()
        values = dict(zip(audit.HASHED_FIELDS, row, strict=True))
        values["outcome"] = "denied"
        conn.execute("UPDATE audit_log SET outcome = ?, hash = ? WHERE seq = 5",
                     (values["outcome"], audit.record_hash(values)))
        conn.commit()
    finally:
        conn.close()
    assert chatops("audit", "verify") == cli.EXIT_FAIL
    assert capsys.readouterr().out.startswith(
        "audit chain BROKEN at record 5: the audit head does not match the last record")


def test_audit_verify_on_an_unmigrated_database_is_an_error_not_a_traceback(
        chatops: Chatops, capsys: Capsys) -> None:
    """Verifying a database that was never migrated says so and exits non-zero."""
    code = chatops("audit", "verify")
    assert code in (cli.EXIT_FAIL, cli.EXIT_CONFIG)
    assert "chatops db upgrade" in capsys.readouterr().err


# --- audit export ---------------------------------------------------------------------------------
def export_jsonl(chatops: Chatops, capsys: Capsys, *filters: str) -> list[dict]:
    assert chatops("audit", "export", "--format", "jsonl", *filters) == cli.EXIT_OK
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert captured.err.strip() == f"exported {len(rows)} records"
    return rows


def test_export_jsonl_writes_every_record_in_order(chatops: Chatops, audited_db: Path,
                                                   capsys: Capsys) -> None:
    """Without filters every record is one JSON line, oldest first, with its hash fields."""
    rows = export_jsonl(chatops, capsys)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == set(audit.EXPORT_COLUMNS)
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert rows[2]["args"] == {"command": "/deploy", "text": "v2.4 --env production --reason ***"}


def test_export_redacts_secrets_in_args(chatops: Chatops, audited_db: Path,
                                        capsys: Capsys) -> None:
    """Tokens and passwords given in args appear only as *** in the export."""
    assert chatops("audit", "export") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert BOT_TOKEN not in out and "hunter2" not in out
    first = json.loads(out.splitlines()[0])
    assert first["args"] == {"command": "/deploy", "text": "v2.3 --reason password=***", "token": "***"}


def test_export_filters_by_actor_name(chatops: Chatops, audited_db: Path,
                                      capsys: Capsys) -> None:
    """`--actor alice` resolves the name through the config and keeps only her records."""
    assert [r["seq"] for r in export_jsonl(chatops, capsys, "--actor", "alice")] == [1, 3]


def test_export_filters_by_actor_user_id(chatops: Chatops, audited_db: Path,
                                         capsys: Capsys) -> None:
    """`--actor U0BOB0002` filters by the Slack id directly."""
    assert [r["actor_name"] for r in export_jsonl(chatops, capsys, "--actor", "U0BOB0002")] == ["bob"]


def test_export_filters_by_environment(chatops: Chatops, audited_db: Path,
                                       capsys: Capsys) -> None:
    """`--env production` keeps only production records."""
    assert [r["seq"] for r in export_jsonl(chatops, capsys, "--env", "production")] == [2, 3]


def test_export_filters_by_since(chatops: Chatops, audited_db: Path,
                                 capsys: Capsys) -> None:
    """`--since 2026-03-10` includes that moment and everything after."""
    assert [r["seq"] for r in export_jsonl(chatops, capsys, "--since", "2026-03-10T09:00")] == [3, 4, 5]


def test_export_combines_filters(chatops: Chatops, audited_db: Path,
                                 capsys: Capsys) -> None:
    """Filters combine with AND."""
    rows = export_jsonl(chatops, capsys, "--actor", "alice", "--env", "production", "--since", "2026-02-01")
    assert [r["seq"] for r in rows] == [3]


def test_export_csv_has_a_header_and_filtered_rows(chatops: Chatops, audited_db: Path,
                                                   capsys: Capsys) -> None:
    """CSV export has the column header, one row per record and redacted args JSON."""
    assert chatops("audit", "export", "--format", "csv", "--env", "staging") == cli.EXIT_OK
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == list(audit.EXPORT_COLUMNS)
    assert len(rows) == 2
    record = dict(zip(rows[0], rows[1], strict=True))
    assert record["seq"] == "1" and record["environment"] == "staging"
    assert json.loads(record["args"])["token"] == "***"
    assert BOT_TOKEN not in record["args"] and "hunter2" not in record["args"]


def test_export_csv_writes_empty_cells_for_missing_values(chatops: Chatops, audited_db: Path,
                                                          capsys: Capsys) -> None:
    """A record with no environment has an empty cell, not the text None."""
    assert chatops("audit", "export", "--format", "csv", "--actor", "dave") == cli.EXIT_OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["environment"] for r in rows] == [""]


def test_export_to_a_file(chatops: Chatops, audited_db: Path, isolated_cwd: Path,
                          capsys: Capsys) -> None:
    """`-o FILE` writes the records there and nothing to standard output."""
    target = isolated_cwd / "audit.jsonl"
    assert chatops("audit", "export", "-o", str(target)) == cli.EXIT_OK
    assert capsys.readouterr().out == ""
    assert len(target.read_text(encoding="utf-8").splitlines()) == 5


def test_export_with_a_bad_since_is_a_usage_error(chatops: Chatops, audited_db: Path,
                                                  capsys: Capsys) -> None:
    """An unreadable --since exits 2 explaining the accepted forms."""
    assert chatops("audit", "export", "--since", "last tuesday") == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("error: 'last tuesday' is not a time")


def test_export_with_an_unknown_actor_is_a_usage_error(chatops: Chatops, audited_db: Path,
                                                       capsys: Capsys) -> None:
    """An actor name missing from the config exits 2 naming it."""
    assert chatops("audit", "export", "--actor", "mallory") == cli.EXIT_CONFIG
    assert "'mallory' is not a known person" in capsys.readouterr().err


def test_config_option_may_follow_the_subcommand(capsys: Capsys, isolated_cwd: Path) -> None:
    """`chatops config check --config FILE` works as well as `chatops --config FILE config check`."""
    assert cli.main(["config", "check", "--config", str(EXAMPLE_CONFIG)]) == cli.EXIT_OK
    assert "OK — 2 environment(s)" in capsys.readouterr().out


# --- config check --serve, serve's secrets, --version, an empty chain ------------------------------
def test_config_check_serve_lists_every_missing_secret(chatops: Chatops, capsys: Capsys) -> None:
    """`config check --serve` with no Slack secrets: exit 2 naming the bot token and the signing secret."""
    assert chatops("config", "check", "--serve") == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "has 2 problem(s)" in err
    assert "CHATOPS_SLACK_BOT_TOKEN: required" in err and "CHATOPS_SLACK_SIGNING_SECRET: required" in err


def test_config_check_serve_socket_mode_wants_the_app_token(chatops: Chatops, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: Capsys) -> None:
    """In Socket Mode the app-level token is needed instead of the signing secret."""
    monkeypatch.setenv("CHATOPS_SLACK_BOT_TOKEN", BOT_TOKEN)
    assert chatops("config", "check", "--serve", "--socket-mode") == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "CHATOPS_SLACK_APP_TOKEN: required for --socket-mode" in err and "SIGNING_SECRET" not in err


def test_config_check_serve_ok_when_serve_has_what_it_needs(chatops: Chatops, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: Capsys) -> None:
    """With the bot token and signing secret set, `--serve` says the config is ready for serve."""
    monkeypatch.setenv("CHATOPS_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("CHATOPS_SLACK_SIGNING_SECRET", "s3cr3t")
    assert chatops("config", "check", "--serve") == cli.EXIT_OK
    assert "ready for `chatops serve`" in capsys.readouterr().out


def test_config_check_without_serve_notes_what_serve_would_refuse(chatops: Chatops, capsys: Capsys) -> None:
    """Plain `config check` passes the file but says that serve would refuse, and how to see why."""
    assert chatops("config", "check") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "OK" in out and "`chatops serve` would refuse to start" in out and "--serve" in out


def test_config_check_serve_reports_config_and_secrets_together(chatops: Chatops, isolated_cwd: Path,
                                                                capsys: Capsys) -> None:
    """A broken file and missing secrets come out in one list."""
    assert chatops("config", "check", "--serve", config=broken_config(isolated_cwd)) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "has 4 problem(s)" in err and "bogus_key" in err and "CHATOPS_SLACK_BOT_TOKEN" in err


def test_serve_names_every_missing_secret_at_once(chatops: Chatops, capsys: Capsys) -> None:
    """`serve` without secrets exits 2 naming both, not one per attempt."""
    assert chatops("serve") == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "CHATOPS_SLACK_BOT_TOKEN" in err and "CHATOPS_SLACK_SIGNING_SECRET" in err and "Traceback" not in err


def test_version_comes_from_package_metadata(capsys: Capsys) -> None:
    """`chatops --version` prints the installed package's version."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"chatops {version('swarm-chatops')}"


def test_audit_verify_on_an_empty_chain_says_empty(chatops: Chatops, capsys: Capsys) -> None:
    """A migrated database with no records is "EMPTY", not "OK: 0 records"."""
    assert chatops("db", "upgrade") == cli.EXIT_OK
    capsys.readouterr()
    assert chatops("audit", "verify") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "EMPTY" in out and "OK" not in out.replace("EMPTY", "")
