"""The commands layer's router: from an invocation to an acknowledgement and a background job (Slack-free).

`prepare()` does only in-memory work (look-up, parse, permission check, and for commands that
need no database, the answer itself). `acknowledge()` then makes the delivery durable before the
front end acks: an answer given in the ack has its idempotency claim and audit record committed,
a deferred one its `pending_commands` row (both group-committed by the `BatchWriter`). The job
then runs in the background: it claims the delivery's idempotency key, runs the handler, writes
the audit record, enqueues any reply and deletes the pending row, all in one transaction. A
re-delivered request (Slack retry, duplicate payload, a pending row run again after a crash) finds
its key claimed and does nothing twice. If nothing could be recorded the ack says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from bot.blocks import user_text
from bot.core.context import Core
from bot.core.model import ActionInvocation, Actor, Invocation, Reply
from bot.core.unit_of_work import unit_of_work
from bot.errors import BackendUnavailable, ChatOpsError, CommandError, UnknownCommand, user_message
from bot.metrics import Metrics
from bot.persistence.audit import AuditEntry, append
from bot.persistence.batch import BatchWriter, Pending, Record
from bot.persistence.idempotency import claim, finish_pending
from bot.tasks import Busy, PendingRunner, TaskRunner
from commands.grammar import CommandSpec, HelpRequest, ParseContext, parse_args

log = logging.getLogger(__name__)
#: how long the ack waits for its group commit before answering without it (Slack allows 3 s)
ACK_WAIT_SECONDS = 2.0
#: a pending command older than this, or tried this often, is not run any more (the user is told)
PENDING_MAX_AGE = timedelta(minutes=10)
PENDING_MAX_ATTEMPTS = 5

NOT_RECORDED = (":rotating_light: The bot's database is unavailable, so your request was *not recorded and "
                "not run*: nothing was done. Try again in a minute; if it persists, check `/readyz` and the logs.")
ANSWER_NOT_RECORDED = ("\n\n:warning: The bot's database is unavailable, so this answer was *not recorded* "
                       "in the audit log.")
UNCONFIRMED = (":hourglass: The bot's database is slow to confirm your request. If it was recorded, its answer "
               "will appear here shortly; if nothing appears within a minute, it was not run — try again.")


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
    records an answer already given in the ack: the batched writer does that instead. `pending` is
    set for a deferred job: the row that makes it durable (and lets a restarted process rebuild it)."""

    ack: Reply | None
    job: Callable[[], None]
    name: str
    outcome: str
    record: Record | None = None
    pending: Pending | None = None


@dataclass(frozen=True)
class Ack:
    """What the front end answers: `reply` for the ack body; `recorded` False when the delivery is not
    known to be durable (the reply then says so; a front end without a body answers with an error)."""

    reply: Reply | None
    recorded: bool
    state: str  # recorded | duplicate | not_recorded | unconfirmed


class Dispatcher:
    def __init__(self, core: Core, commands: dict[str, CommandEntry], actions: dict[str, ActionEntry],
                 metrics: Metrics) -> None:
        self.core = core
        self.commands = commands
        self.actions = actions
        self.metrics = metrics
        # Slack-registered names of commands whose own name Slack reserves (/swarm-status -> status)
        self.aliases = {e.spec.slack_name: name for name, e in commands.items() if e.spec.slack_name}
        # set by the container; without them (tests) jobs run straight on the task runner, not durably
        self.writer: BatchWriter | None = None
        self.runner: PendingRunner | None = None

    # --- making a delivery durable, then acknowledging it ---------------------------------------
    def accept(self, prepared: Prepared, tasks: TaskRunner) -> Future[bool]:
        """Queue what must be committed before the ack; the future resolves after the commit (True,
        or False for a duplicate delivery) and then the job, if any, has been handed to the runner."""
        if self.writer is not None and prepared.record is not None:
            return self.writer.submit(prepared.record)
        runner = self.runner
        if self.writer is not None and runner is not None and prepared.pending is not None:
            key, job, name = prepared.pending.key, prepared.job, prepared.name

            def start(fresh: bool) -> None:
                if fresh:  # committed: run it here (a full queue leaves it to the pending runner)
                    runner.run(key, name, job)

            return self.writer.submit(dataclasses.replace(prepared.pending, on_written=start))
        done: Future[bool] = Future()
        try:
            tasks.submit(prepared.name, prepared.job)
            done.set_result(True)
        except Busy as exc:
            done.set_exception(exc)
        return done

    async def acknowledge(self, prepared: Prepared, tasks: TaskRunner,
                          timeout: float = ACK_WAIT_SECONDS) -> Ack:
        """Accept the delivery and wait (without blocking the event loop) for its commit."""
        future = self.accept(prepared, tasks)
        if not future.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()

            def resolve(value: bool) -> None:
                if not waiter.done():
                    waiter.set_result(value)

            timer = loop.call_later(timeout, resolve, False)
            future.add_done_callback(lambda _f: loop.call_soon_threadsafe(resolve, True))
            finished = await waiter
            timer.cancel()
            if not finished:
                # still queued: withdraw it (then it is certainly not recorded); already being written: unknown
                state = "not_recorded" if future.cancel() else "unconfirmed"
                return self._ack_for(prepared, state)
        if future.cancelled() or future.exception() is not None:
            return self._ack_for(prepared, "not_recorded")
        return self._ack_for(prepared, "recorded" if future.result() else "duplicate")

    def launch(self, prepared: Prepared, tasks: TaskRunner, timeout: float = ACK_WAIT_SECONDS) -> str | None:
        """`acknowledge()` for synchronous front ends (the console): the text to show instead of the
        ack when the delivery could not be recorded, else None."""
        future = self.accept(prepared, tasks)
        try:
            future.result(timeout)
        except Busy as exc:
            return exc.user_text()
        except Exception:
            state = "not_recorded" if future.cancel() or future.done() else "unconfirmed"
            ack = self._ack_for(prepared, state)
            return ack.reply.text if ack.reply else None
        return None

    def _ack_for(self, prepared: Prepared, state: str) -> Ack:
        if state in ("recorded", "duplicate"):
            return Ack(prepared.ack, True, state)
        if state == "not_recorded":
            self.metrics.commands.labels(prepared.name, "not_recorded").inc()
        if prepared.ack is None:
            return Ack(Reply(NOT_RECORDED if state == "not_recorded" else UNCONFIRMED), False, state)
        note = ANSWER_NOT_RECORDED if state == "not_recorded" else (
            "\n\n:hourglass: (not yet confirmed as recorded in the audit log)")
        return Ack(dataclasses.replace(prepared.ack, text=prepared.ack.text + note), False, state)

    # --- pending commands left by an earlier process -------------------------------------------------
    def rebuild(self, key: str, kind: str, payload: dict[str, Any], attempts: int) -> Callable[[], None] | None:
        """The job of a pending row (for PendingRunner): prepared again from what was recorded."""
        fields_ = {k: v for k, v in payload.items() if not k.startswith("_")}
        try:
            if kind == "command":
                inv: Invocation | ActionInvocation = Invocation(**{**fields_, "actor": Actor(**fields_["actor"])})
            elif kind == "action":
                inv = ActionInvocation(**{**fields_, "actor": Actor(**fields_["actor"])})
            elif kind == "event":
                return self.prepare_home(str(payload["user_id"]), key).job
            else:
                raise ValueError(f"unknown pending kind {kind!r}")
        except Exception:
            log.exception("pending command %s cannot be read; dropping it", key)
            return lambda: self._drop_pending(key)
        created = datetime.fromisoformat(str(payload.get("_created") or datetime.now(UTC).isoformat()))
        if attempts > PENDING_MAX_ATTEMPTS or datetime.now(UTC) - created > PENDING_MAX_AGE:
            return lambda: self._give_up(key, kind, inv, attempts)
        prepared = self.prepare(inv) if isinstance(inv, Invocation) else self.prepare_action(inv)
        if prepared.pending is None and prepared.record is not None:
            # answered in the ack now (e.g. the config changed since): record it and send the answer
            record, ack = prepared.record, prepared.ack

            def answer() -> None:
                with self.core.db.transaction() as session:
                    finish_pending(session, key)
                    if claim(session, record.key, record.kind):
                        append(session, record.entry)
                        if ack is not None:
                            self._reply(session, _ctx_of(self.core, inv), ack)
            return answer
        return prepared.job

    def _give_up(self, key: str, kind: str, inv: Invocation | ActionInvocation, attempts: int) -> None:
        ctx = _ctx_of(self.core, inv)
        name = f"command.{inv.command}" if isinstance(inv, Invocation) else f"action.{inv.action_id}"
        text = (":warning: Your request was recorded but could not be run in time (the bot restarted or its "
                "database was unavailable), so it was *not run*. Run it again if it is still needed.")
        with self.core.db.transaction() as session:
            finish_pending(session, key)
            if claim(session, key, kind):
                _audit(session, ctx, name, "expired", None, {"attempts": attempts, "error": "not run in time"})
                self._reply(session, ctx, Reply(text))
        self.metrics.commands.labels(name, "expired").inc()

    def _drop_pending(self, key: str) -> None:
        with self.core.db.transaction() as session:
            finish_pending(session, key)

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

        return Prepared(None, job, name, "accepted", pending=_pending(inv, "command"))

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

        return Prepared(None, job, name, "accepted", pending=_pending(inv, "action"))

    def _finish_now_action(self, inv: ActionInvocation, ctx: Ctx, name: str, reply: Reply, outcome: str,
                           audit_args: dict[str, Any], environment: str | None = None) -> Prepared:
        def job() -> None:
            with self.core.db.transaction() as session:
                finish_pending(session, inv.idempotency_key)
                if not _claim(session, inv.idempotency_key, "action"):
                    self.metrics.slack_duplicates.labels("action").inc()
                    return
                _audit(session, ctx, name, outcome, environment, audit_args)
                self._reply(session, ctx, reply)
            self.metrics.commands.labels(name, outcome).inc()

        return Prepared(None, job, name, outcome, pending=_pending(inv, "action"))

    # --- events -----------------------------------------------------------------------------------
    def prepare_home(self, user_id: str, event_key: str) -> Prepared:
        """app_home_opened: publish the user's Home tab once per event delivery."""
        from commands.home import home_view

        def job() -> None:
            view = home_view(self.core, user_id, self.commands)  # live reads, before the transaction
            with self.core.db.transaction() as session:
                finish_pending(session, event_key)
                if not _claim(session, event_key, "event"):
                    self.metrics.slack_duplicates.labels("event").inc()
                    return
                self.core.outbox.home(session, user_id, view)

        pending = Pending(event_key, "event", {"user_id": user_id, "_created": datetime.now(UTC).isoformat()})
        return Prepared(None, job, "event.app_home_opened", "accepted", pending=pending)

    # --- the deferred path --------------------------------------------------------------------------
    def _run_deferred(self, key: str, kind: str, ctx: Ctx, action: str, metric_name: str,
                      audit_args: dict[str, Any], environment: str | None, run: Callable[[Ctx], Reply],
                      prefetch: Callable[[Ctx], Any] | None = None) -> None:
        try:
            if prefetch is not None:
                # network reads happen before the transaction: on SQLite it would hold the write lock
                ctx.prefetched = prefetch(ctx)
            # claim + change + audit + outbox in one transaction; the pending row goes with the work
            with unit_of_work(self.core.db, key, kind, actor=ctx.actor, correlation_id=ctx.correlation_id,
                              channel=ctx.channel_id, pending=True) as work:
                if work is None:
                    self.metrics.slack_duplicates.labels(kind).inc()
                    return
                ctx.session = session = work.session
                reply = run(ctx)
                work.audit(action, "ok", environment=environment, args=audit_args)
                direct = self._reply(session, ctx, reply, direct=True)
            self.metrics.commands.labels(metric_name, "ok").inc()
            self._deliver_now(direct)
            return
        except Exception as exc:
            text, outcome = user_message(exc)
        finally:
            ctx.session = None
        # the handler's transaction rolled back: record the failure and tell the user, once
        try:
            with self.core.db.transaction() as session:
                finish_pending(session, key)
                if not _claim(session, key, kind):
                    return
                audit_args = {**audit_args, "error": text}
                _audit(session, ctx, action, outcome, environment, audit_args)
                direct = self._reply(session, ctx, Reply(text), direct=True)
            self._deliver_now(direct)
        except BackendUnavailable as exc:
            outcome = "backend_unavailable"
            if self.runner is not None:
                # its pending row was committed before the ack: it runs again once the database is back
                log.error("database unavailable; %s by %s will be retried from its pending row: %s",
                          action, ctx.actor.user_id, exc)
                self.metrics.commands.labels(metric_name, outcome).inc()
                return
            # nothing can be recorded or queued: say so to the user directly, and log loudly
            log.error("database unavailable; %s by %s was not performed and not audited: %s",
                      action, ctx.actor.user_id, exc)
            if self.core.direct_reply is not None:
                self.core.direct_reply(ctx.response_url, ctx.channel_id, ctx.actor.user_id, Reply(
                    ":rotating_light: The bot's database is unavailable, so nothing was done and nothing "
                    "could be recorded. Try again in a minute; if it persists, check `/readyz` and the logs."))
        self.metrics.commands.labels(metric_name, outcome).inc()

    def _reply(self, session: Session, ctx: Ctx, reply: Reply, *, direct: bool = False) -> int | None:
        """Enqueue the reply in the caller's transaction. With `direct`, a response_url reply is written
        claimed for this process and its row id returned: pass it to `_deliver_now` after the commit."""
        row_id = None
        if ctx.response_url:
            row_id = self.core.outbox.respond(session, ctx.response_url, reply, channel=ctx.channel_id,
                                              direct=direct)
        elif ctx.channel_id:
            self.core.outbox.ephemeral(session, ctx.channel_id, ctx.actor.user_id, reply)
        else:
            log.warning("no way to reply to %s (no response_url, no channel)", ctx.actor.user_id)
            return None
        if reply.once_posted is not None:
            # the reply says a post is queued: once the outbox delivers it, the reply says it is posted
            key, text = reply.once_posted
            self.core.outbox.follow(session, key, dataclasses.replace(reply, text=text, once_posted=None),
                                    response_url=ctx.response_url, channel=ctx.channel_id,
                                    user_id=ctx.actor.user_id)
        return row_id

    def _deliver_now(self, row_id: int | None) -> None:
        """The job's own reply, sent right after its commit (the outbox row is the durable fallback:
        a failure here leaves it to the outbox worker, which retries it)."""
        if row_id is None:
            return
        try:
            self.core.outbox.deliver_now([row_id])
        except Exception:
            log.exception("direct delivery of outbox row %s failed; the outbox worker will send it", row_id)


def _pending(inv: Invocation | ActionInvocation, kind: str) -> Pending:
    """The row that lets any process prepare this delivery again (see `Dispatcher.rebuild`)."""
    payload = dataclasses.asdict(inv)
    payload["_created"] = datetime.now(UTC).isoformat()
    return Pending(inv.idempotency_key, kind, payload)


def _ctx_of(core: Core, inv: Invocation | ActionInvocation) -> Ctx:
    return Ctx(core, inv.actor, inv.channel_id, inv.correlation_id, response_url=inv.response_url)


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
