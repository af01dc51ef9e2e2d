"""The commands layer's router: from an invocation to an acknowledgement and a background job (Slack-free).

`prepare()` does only in-memory work (look-up, parse, permission check, and for commands that
need no database, the answer itself) so a front end can acknowledge at once. The returned
job then runs in the background: it claims the delivery's idempotency key, runs the handler,
writes the audit record and enqueues any reply, all in one transaction. A re-delivered
request (Slack retry, duplicate payload) finds its key claimed and does nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from bot.blocks import user_text
from bot.core.context import Core
from bot.core.model import ActionInvocation, Actor, Invocation, Reply
from bot.errors import BackendUnavailable, ChatOpsError, CommandError, UnknownCommand, user_message
from bot.metrics import Metrics
from bot.persistence.audit import AuditEntry, append
from bot.persistence.batch import BatchWriter, Record
from bot.persistence.idempotency import claim
from bot.tasks import Busy, TaskRunner
from commands.grammar import CommandSpec, HelpRequest, ParseContext, parse_args

log = logging.getLogger(__name__)


@dataclass
class Ctx:
    """What one handler call sees."""

    core: Core
    actor: Actor
    channel_id: str | None
    correlation_id: str
    session: Session | None = None  # None for pure (ack-time) handlers
    prefetched: Any = None
    response_url: str | None = None

    def audit(self, action: str, outcome: str, *, environment: str | None = None, **args: Any) -> None:
        """Record an extra audit entry in the handler's own transaction."""
        if self.session is None:
            raise RuntimeError("audit() needs a transaction; declare the handler needs_db=True")
        append(self.session, AuditEntry(actor_id=self.actor.user_id, actor_name=self.actor.name,
                                        channel=self.channel_id, environment=environment, action=action,
                                        outcome=outcome, correlation_id=self.correlation_id, args=args))


Authorize = Callable[[Any, Ctx], str | None]  # raises PermissionDenied; returns the environment
Handler = Callable[[Any, Ctx], Reply]


@dataclass(frozen=True)
class CommandEntry:
    spec: CommandSpec
    authorize: Authorize
    run: Handler
    needs_db: bool = False
    listed: bool = True
    #: reads from outside systems done before the handler's transaction opens (result in ctx.prefetched)
    prefetch: Callable[[Any, Ctx], Any] | None = None


@dataclass(frozen=True)
class ActionEntry:
    action_id: str
    authorize: Callable[[dict[str, Any], Ctx], str | None]
    run: Callable[[dict[str, Any], Ctx], Reply]
    needs_db: bool = True


@dataclass
class Prepared:
    """The acknowledgement to send now and the job to run after it. `record` is set when the job only
    records an answer already given in the ack: the batched audit writer can do that instead."""

    ack: Reply | None
    job: Callable[[], None]
    name: str
    outcome: str
    record: Record | None = None


class Dispatcher:
    def __init__(self, core: Core, commands: dict[str, CommandEntry], actions: dict[str, ActionEntry],
                 metrics: Metrics) -> None:
        self.core = core
        self.commands = commands
        self.actions = actions
        self.metrics = metrics
        # Slack-registered names of commands whose own name Slack reserves (/swarm-status -> status)
        self.aliases = {e.spec.slack_name: name for name, e in commands.items() if e.spec.slack_name}
        self.writer: BatchWriter | None = None  # set by the container; tests may run jobs directly

    def launch(self, prepared: Prepared, tasks: TaskRunner) -> str | None:
        """Hand the work after the ack to the batched writer or the task runner; the text to show
        instead of the ack when the bot is too busy to take it (nothing was started then)."""
        if prepared.record is not None and self.writer is not None:
            self.writer.submit(prepared.record)
            return None
        try:
            tasks.submit(prepared.name, prepared.job)
        except Busy as exc:
            return exc.user_text()
        return None

    # --- slash commands ---------------------------------------------------------------------------
    def prepare(self, inv: Invocation) -> Prepared:
        ctx = Ctx(self.core, inv.actor, inv.channel_id, inv.correlation_id, response_url=inv.response_url)
        name = inv.command.lstrip("/").lower()
        name = self.aliases.get(name, name)
        audit_args: dict[str, Any] = {"command": f"/{name}", "text": inv.text[:500]}
        entry = self.commands.get(name)
        try:
            if entry is None:
                raise UnknownCommand(f"unknown command /{user_text(name[:40])}", hint="Type `/help` for the commands.")
            parsed = parse_args(entry.spec, inv.text, ParseContext(self.core.config))
            if isinstance(parsed, HelpRequest):
                return self._finish_now(inv, ctx, name, Reply(parsed.help_text()), "help", audit_args, None)
            environment = entry.authorize(parsed, ctx)
            audit_args["parsed"] = _describe(parsed)
            if not entry.needs_db:
                reply = entry.run(parsed, ctx)
                return self._finish_now(inv, ctx, name, reply, "ok", audit_args, environment)
        except ChatOpsError as exc:
            text, outcome = user_message(exc)
            return self._finish_now(inv, ctx, name if entry else "unknown", Reply(text), outcome, audit_args,
                                    getattr(exc, "environment", None))
        except Exception as exc:  # never a traceback to the user
            text, outcome = user_message(exc)
            return self._finish_now(inv, ctx, name, Reply(text), outcome, audit_args, None)

        prefetch = entry.prefetch

        def job() -> None:
            self._run_deferred(inv.idempotency_key, "command", ctx, f"command.{name}", name, audit_args,
                               environment, lambda c: entry.run(parsed, c),
                               (lambda c: prefetch(parsed, c)) if prefetch else None)

        return Prepared(None, job, name, "accepted")

    def _finish_now(self, inv: Invocation, ctx: Ctx, name: str, reply: Reply, outcome: str,
                    audit_args: dict[str, Any], environment: str | None) -> Prepared:
        action = f"command.{name}"

        entry = AuditEntry(actor_id=ctx.actor.user_id, actor_name=ctx.actor.name, channel=ctx.channel_id,
                           environment=environment, action=action, outcome=outcome,
                           correlation_id=ctx.correlation_id, args=audit_args)

        def written(fresh: bool) -> None:
            if fresh:
                self.metrics.commands.labels(name, outcome).inc()
            else:
                self.metrics.slack_duplicates.labels("command").inc()

        def job() -> None:
            with self.core.db.transaction() as session:
                fresh = _claim(session, inv.idempotency_key, "command")
                if fresh:
                    append(session, entry)
            written(fresh)

        return Prepared(reply, job, name, outcome, Record(inv.idempotency_key, "command", entry, written))

    # --- button clicks ----------------------------------------------------------------------------
    def prepare_action(self, inv: ActionInvocation) -> Prepared:
        from bot.ids import decode_value

        ctx = Ctx(self.core, inv.actor, inv.channel_id, inv.correlation_id, response_url=inv.response_url)
        entry = self.actions.get(inv.action_id)
        audit_args: dict[str, Any] = {"action_id": inv.action_id, "value": inv.value[:500],
                                      "message_ts": inv.message_ts}
        name = f"action.{inv.action_id}"
        try:
            if entry is None:
                raise CommandError("this button is no longer supported; run the command again")
            value = decode_value(inv.value)
            environment = entry.authorize(value, ctx)
        except ValueError as exc:
            return self._finish_now_action(inv, ctx, name, Reply(f":warning: {exc}"), "usage_error", audit_args)
        except Exception as exc:  # ChatOpsError, or a bug: never a traceback to the user
            text, outcome = user_message(exc)
            return self._finish_now_action(inv, ctx, name, Reply(text), outcome, audit_args,
                                           getattr(exc, "environment", None))

        def job() -> None:
            self._run_deferred(inv.idempotency_key, "action", ctx, name, inv.action_id, audit_args, environment,
                               lambda c: entry.run(value, c))

        return Prepared(None, job, name, "accepted")

    def _finish_now_action(self, inv: ActionInvocation, ctx: Ctx, name: str, reply: Reply, outcome: str,
                           audit_args: dict[str, Any], environment: str | None = None) -> Prepared:
        def job() -> None:
            with self.core.db.transaction() as session:
                if not _claim(session, inv.idempotency_key, "action"):
                    self.metrics.slack_duplicates.labels("action").inc()
                    return
                _audit(session, ctx, name, outcome, environment, audit_args)
                self._reply(session, ctx, reply)
            self.metrics.commands.labels(name, outcome).inc()

        return Prepared(None, job, name, outcome)

    # --- events -----------------------------------------------------------------------------------
    def prepare_home(self, user_id: str, event_key: str) -> Prepared:
        """app_home_opened: publish the user's Home tab once per event delivery."""
        from commands.home import home_view

        def job() -> None:
            with self.core.db.transaction() as session:
                if not _claim(session, event_key, "event"):
                    self.metrics.slack_duplicates.labels("event").inc()
                    return
                self.core.outbox.home(session, user_id, home_view(self.core, user_id, self.commands))

        return Prepared(None, job, "event.app_home_opened", "accepted")

    # --- the deferred path --------------------------------------------------------------------------
    def _run_deferred(self, key: str, kind: str, ctx: Ctx, action: str, metric_name: str,
                      audit_args: dict[str, Any], environment: str | None, run: Callable[[Ctx], Reply],
                      prefetch: Callable[[Ctx], Any] | None = None) -> None:
        try:
            if prefetch is not None:
                # network reads happen before the transaction: on SQLite it would hold the write lock
                ctx.prefetched = prefetch(ctx)
            with self.core.db.transaction() as session:
                if not _claim(session, key, kind):
                    self.metrics.slack_duplicates.labels(kind).inc()
                    return
                ctx.session = session
                reply = run(ctx)
                _audit(session, ctx, action, "ok", environment, audit_args)
                self._reply(session, ctx, reply)
            self.metrics.commands.labels(metric_name, "ok").inc()
            return
        except Exception as exc:
            text, outcome = user_message(exc)
        finally:
            ctx.session = None
        # the handler's transaction rolled back: record the failure and tell the user, once
        try:
            with self.core.db.transaction() as session:
                if not _claim(session, key, kind):
                    return
                audit_args = {**audit_args, "error": text}
                _audit(session, ctx, action, outcome, environment, audit_args)
                self._reply(session, ctx, Reply(text))
        except BackendUnavailable as exc:
            # nothing can be recorded or queued: say so to the user directly, and log loudly
            log.error("database unavailable; %s by %s was not performed and not audited: %s",
                      action, ctx.actor.user_id, exc)
            if self.core.direct_reply is not None:
                self.core.direct_reply(ctx.response_url, ctx.channel_id, ctx.actor.user_id, Reply(
                    ":rotating_light: The bot's database is unavailable, so nothing was done and nothing "
                    "could be recorded. Try again in a minute; if it persists, check `/readyz` and the logs."))
            outcome = "backend_unavailable"
        self.metrics.commands.labels(metric_name, outcome).inc()

    def _reply(self, session: Session, ctx: Ctx, reply: Reply) -> None:
        if ctx.response_url:
            self.core.outbox.respond(session, ctx.response_url, reply, channel=ctx.channel_id)
        elif ctx.channel_id:
            self.core.outbox.ephemeral(session, ctx.channel_id, ctx.actor.user_id, reply)
        else:
            log.warning("no way to reply to %s (no response_url, no channel)", ctx.actor.user_id)


def _claim(session: Session, key: str, kind: str) -> bool:
    """Insert the idempotency key; False if another delivery already claimed it (any process)."""
    return claim(session, key, kind)


def _audit(session: Session, ctx: Ctx, action: str, outcome: str, environment: str | None,
           args: dict[str, Any]) -> None:
    append(session, AuditEntry(actor_id=ctx.actor.user_id, actor_name=ctx.actor.name, channel=ctx.channel_id,
                               environment=environment, action=action, outcome=outcome,
                               correlation_id=ctx.correlation_id, args=args))


def _describe(parsed: Any) -> dict[str, Any]:
    fields_ = getattr(parsed, "__dataclass_fields__", None)
    if not fields_:
        return {}
    return {name: getattr(parsed, name) for name in fields_}
