"""`chatops` command line: serve, console, db, audit, config check. Errors, never tracebacks.

Exit codes: 0 ok, 1 failure, 2 configuration or settings problems, 3 `serve` refused a database
whose audit log lost records (see `--accept-audit-loss`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bot.core.redact import redact_text
from bot.errors import ChatOpsError, ConfigError
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.config import Config
    from bot.persistence.audit import ChainMark
    from bot.persistence.db import Database

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_AUDIT = 0, 1, 2, 3
ACCEPT_AUDIT_LOSS = "--accept-audit-loss"


class RedactingFormatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        if self.json_lines:
            data = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                    "message": record.getMessage()}
            if record.exc_info:
                data["exc"] = self.formatException(record.exc_info)
            return redact_text(json.dumps(data))
        return redact_text(super().format(record))


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the moment of the record, not the one at setup: a process that
    swaps its stderr (a test runner capturing output, a daemon redirecting it) never logs into a closed file."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(settings: Settings) -> None:
    handler = _CurrentStderr(sys.stderr)
    handler.setFormatter(RedactingFormatter(settings.log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("slack_bolt", "slack_sdk", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "config", None):
        overrides["config"] = Path(args.config)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [f"CHATOPS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(problems, source="settings") from None


def cmd_config_check(args: argparse.Namespace) -> int:
    from bot.config import load_config

    settings = load_settings(args)
    config = load_for_serve(settings, socket_mode=args.socket_mode) if args.serve else load_config(settings.config)
    print(f"{settings.config}: OK — {len(config.environments)} environment(s) "
          f"({', '.join(config.environments)}), {len(config.people)} people"
          + (" — ready for `chatops serve`" + (" --socket-mode" if args.socket_mode else "") if args.serve else ""))
    for key, value in settings.redacted().items():
        print(f"  {key} = {value}")
    if not args.serve:
        missing = serve_problems(settings, None, socket_mode=False)
        if missing:
            print("note: `chatops serve` would refuse to start (run `chatops config check --serve`): "
                  + "; ".join(p.split(":", 1)[0] for p in missing) + " unset")
    return EXIT_OK


def load_for_serve(settings: Settings, *, socket_mode: bool) -> Config:
    """The config, after checking everything `serve` needs; every problem of both kinds in one ConfigError."""
    from bot.config import load_config

    config: Config | None = None
    try:
        config = load_config(settings.config)
        problems: list[str] = []
    except ConfigError as exc:
        problems = list(exc.problems)
    problems += serve_problems(settings, config, socket_mode=socket_mode)
    if problems:
        raise ConfigError(problems, source=f"{settings.config} and the CHATOPS_* settings")
    assert config is not None
    return config


def serve_problems(settings: Settings, config: Config | None, *, socket_mode: bool) -> list[str]:
    """Everything `chatops serve` needs beyond a valid config, all at once: the Slack secrets of its mode
    and, with `config`, each configured Kubernetes target loadable."""
    problems = []
    if not settings.slack_bot_token:
        problems.append("CHATOPS_SLACK_BOT_TOKEN: required to talk to Slack (the bot token, xoxb-...)")
    if socket_mode:
        if not settings.slack_app_token:
            problems.append("CHATOPS_SLACK_APP_TOKEN: required for --socket-mode (the app-level token, xapp-...)")
    elif not settings.slack_signing_secret:
        problems.append("CHATOPS_SLACK_SIGNING_SECRET: required to verify Slack requests in HTTP mode "
                        "(or use --socket-mode with CHATOPS_SLACK_APP_TOKEN)")
    for name, env in (config.environments.items() if config is not None else ()):
        if env.kubernetes is None:
            continue
        from integrations.kubernetes import cluster_from_target

        try:
            cluster_from_target(env.kubernetes)
        except ConfigError as exc:
            problems += [f"environments.{name}.{p}" for p in exc.problems]
    return problems


def marker_path(settings: Settings, db: Database) -> Path | None:
    """Where the audit marker lives: the setting, else beside a SQLite file; None when there is none."""
    if settings.audit_marker is not None:
        value = settings.audit_marker.strip()
        return None if value.lower() in {"", "off", "none", "false", "0"} else Path(value).expanduser()
    if db.sqlite_file is not None:
        return db.sqlite_file.with_name(db.sqlite_file.name + ".audit-head")
    return None


def _refusal(problem: str) -> int:
    print(f"error: refusing to start: {problem}.", file=sys.stderr)
    print("  Restore the database from its backup (docs/operations.md, \"The audit log\"). To start anyway "
          f"and record the loss in the audit log, run `chatops serve {ACCEPT_AUDIT_LOSS}`.", file=sys.stderr)
    return EXIT_AUDIT


def _marker_of(path: Path | None) -> ChainMark | None:
    from bot.persistence import audit

    if path is None:
        return None
    try:
        return audit.read_marker(path)
    except ValueError as exc:
        raise ChatOpsError(f"{exc}; fix or delete it") from None


def audit_continuity(db: Database, marker_file: Path | None) -> str | None:
    """Why `serve` must not start on this database, or None (see `audit.continuity_problem`)."""
    from bot.persistence import audit

    marker = _marker_of(marker_file)
    if db.current_revision() is None:  # no schema at all: a new or recreated database
        if marker is not None and marker.seq > 0:
            return (f"the audit marker {marker_file} says the audit chain had {marker.seq} records, but the "
                    "database has no tables: it was deleted or recreated")
        return None
    with db.read() as session:
        return audit.continuity_problem(session, marker, marker_file)


def update_marker(db: Database, marker_file: Path | None) -> None:
    from bot.persistence import audit

    if marker_file is None:
        return
    with db.read() as session:
        head = audit.chain_head(session)
    if head is not None:
        try:
            audit.write_marker(marker_file, head)
        except OSError as exc:
            logging.getLogger(__name__).warning("could not write the audit marker %s: %s", marker_file, exc)


def _accept_loss(db: Database, problem: str) -> None:
    from bot.persistence import audit

    logging.getLogger(__name__).warning("starting despite a lost audit history (%s): %s", ACCEPT_AUDIT_LOSS, problem)
    with db.transaction() as session:
        audit.append(session, audit.AuditEntry(
            actor_id="bot", actor_name="swarm-chatops", action="audit.history_lost", outcome="accepted",
            correlation_id=f"start-{db.instance}", args={"problem": problem, "override": ACCEPT_AUDIT_LOSS}))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.container import build
    from bot.http import create_app
    from bot.persistence.db import Database

    settings = load_settings(args)
    setup_logging(settings)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    config = load_for_serve(settings, socket_mode=args.socket_mode)
    probe = Database(settings.database_url)
    marker_file = marker_path(settings, probe)
    marker = _marker_of(marker_file)
    problem = None
    if probe.sqlite_file is not None and not probe.sqlite_file.exists() and marker is not None and marker.seq > 0:
        # said before anything recreates the file empty
        problem = (f"the database file {probe.sqlite_file} does not exist, but the audit marker {marker_file} "
                   f"says the audit chain had {marker.seq} records")
    probe.dispose()
    if problem and not args.accept_audit_loss:
        return _refusal(problem)
    container = build(settings, config=config)
    if settings.db_upgrade_on_start:
        container.db.upgrade()
    problem = problem or audit_continuity(container.db, marker_file)
    if problem and not args.accept_audit_loss:
        container.db.dispose()
        return _refusal(problem)
    if problem:
        _accept_loss(container.db, problem)
    update_marker(container.db, marker_file)
    app = create_app(container, socket_mode=args.socket_mode)
    logging.getLogger(__name__).info("serving on http://%s:%s (socket mode: %s)", host, port, args.socket_mode)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; once in-flight work is finished or
    # persisted that is a clean stop, so the re-raised signal is absorbed and we exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # log_config=None: uvicorn's loggers go through our handler (redaction, JSON lines)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, log_config=None,
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1, lifespan="on")
    try:
        update_marker(container.db, marker_file)
    finally:
        container.db.dispose()
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    from bot.console import run_console

    settings = load_settings(args)
    setup_logging(settings.model_copy(update={"log_level": "WARNING"}))
    script = None
    if args.script:
        try:
            script = Path(args.script).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"error: cannot read script {args.script}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAIL
    return run_console(settings, script=script, settle_seconds=args.settle)


def cmd_db(args: argparse.Namespace) -> int:
    from bot.persistence.db import Database

    settings = load_settings(args)
    db = Database(settings.database_url)
    try:
        if args.db_command == "upgrade":
            db.upgrade(args.revision)
            print(f"database at revision {db.current_revision()}")
            return EXIT_OK
        current, head = db.current_revision(), db.head_revision()
        print(f"current {current}, head {head}" + ("" if current == head else " — run `chatops db upgrade`"))
        return EXIT_OK if current == head else EXIT_FAIL
    finally:
        db.dispose()


def cmd_audit(args: argparse.Namespace) -> int:
    from bot.persistence.db import Database

    settings = load_settings(args)
    db = Database(settings.database_url)
    ready, reason = db.readiness()
    if not ready:
        db.dispose()
        raise ChatOpsError(f"the audit log cannot be read: {reason}")
    try:
        return _audit(args, settings, db)
    finally:
        db.dispose()


def _audit(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    from bot.persistence import audit

    if args.audit_command == "verify":
        with db.read() as session:
            result = audit.verify(session)
        if not result.ok:
            print(f"audit chain BROKEN at record {result.first_bad_seq}: {result.problem} "
                  f"({result.checked} records verified before it)")
            return EXIT_FAIL
        marker_file = marker_path(settings, db)
        lost = audit_continuity(db, marker_file)
        if lost:
            present = f" (the {result.checked} records present verify)" if result.checked else ""
            print(f"audit chain BROKEN: {lost}{present}")
            return EXIT_FAIL
        update_marker(db, marker_file)
        if result.checked == 0:
            print("audit chain EMPTY: no records yet (nothing to verify)")
        else:
            print(f"audit chain OK: {result.checked} records verified")
        return EXIT_OK
    from bot.config import load_config
    from commands.grammar import ParseContext, user_value, when_value

    actor_ids: tuple[str, ...] = ()
    try:
        since = when_value(args.since, None) if args.since else None  # type: ignore[arg-type]
        until = when_value(args.until, None) if args.until else None  # type: ignore[arg-type]
        if args.actor:
            if args.actor[:1] in "UW" and args.actor[1:].isalnum() and args.actor.isupper():
                actor_ids = (args.actor,)
            else:
                actor_ids = (user_value(args.actor, ParseContext(load_config(settings.config))),)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    flt = audit.AuditFilter(since=since, until=until, actor_ids=actor_ids, environment=args.env)
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        with db.read() as session:
            count = audit.export(audit.iter_records(session, flt), args.format, out)
    finally:
        if args.output:
            out.close()
    print(f"exported {count} records", file=sys.stderr)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatops", description="swarm-chatops: operate the Trading Bot Swarm from Slack")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument("--config", help="YAML config (default: $CHATOPS_CONFIG or chatops.yml)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: $CHATOPS_DATABASE_URL or sqlite:///chatops.db)")
    # --config / --database-url work before or after the subcommand (`chatops config check --config F`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML config")
    common.add_argument("--database-url", default=argparse.SUPPRESS, help="SQLAlchemy URL")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the Slack app (HTTP /slack/events, or --socket-mode)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 3000)")
    s.add_argument("--socket-mode", action="store_true", help="connect to Slack over Socket Mode")
    s.add_argument(ACCEPT_AUDIT_LOSS, action="store_true",
                   help="start even though the database holds fewer audit records than the audit head or "
                        "marker say it had (a deleted or restored database); the loss is audited")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("console", parents=[common], help="local console: Slack commands and buttons in a terminal")
    c.add_argument("--script", help="run the lines of FILE, print every message, exit 1 on a failing line")
    c.add_argument("--settle", type=float, default=10.0, help="seconds to wait for background work per line")
    c.set_defaults(func=cmd_console)

    d = sub.add_parser("db", parents=[common], help="database migrations")
    dsub = d.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", parents=[common], help="migrate to the newest schema")
    up.add_argument("revision", nargs="?", default="head")
    dsub.add_parser("current", parents=[common], help="show the schema revision (exit 1 if not at head)")
    d.set_defaults(func=cmd_db)

    a = sub.add_parser("audit", parents=[common], help="verify or export the audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    asub.add_parser("verify", parents=[common], help="check the hash chain; exit 1 naming the first bad record")
    ex = asub.add_parser("export", parents=[common], help="export records as JSON lines or CSV")
    ex.add_argument("--since", help="ISO time or age (24h, 7d)")
    ex.add_argument("--until", help="ISO time or age")
    ex.add_argument("--actor", help="person name or Slack user id")
    ex.add_argument("--env", help="environment")
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument("--output", "-o", help="file (default: standard output)")
    a.set_defaults(func=cmd_audit)

    cfg = sub.add_parser("config", parents=[common], help="configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    chk = csub.add_parser("check", parents=[common], help="validate settings and the YAML config")
    chk.add_argument("--serve", action="store_true",
                     help="also check what `chatops serve` needs: Slack secrets, Kubernetes targets")
    chk.add_argument("--socket-mode", action="store_true", help="with --serve: for `serve --socket-mode`")
    cfg.set_defaults(func=cmd_config_check)
    return p


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarm-chatops")
    except PackageNotFoundError:
        return "unknown (not installed; run pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"{exc.source} has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except ChatOpsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `chatops ... | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
