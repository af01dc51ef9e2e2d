"""Reading and writing runs, for the engine and for every workflow's service (Slack-free).

All methods run inside the caller's transaction. Messages go through the outbox in that same
transaction, and audit records are appended in it, so a run's state, its message and its audit trail
can never disagree after a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bot.config import Config, Environment
from bot.core.model import Actor, Reply
from bot.core.ports import EnvBackends
from bot.core.runs.states import Phase, RunState, check_transition
from bot.core.runs.workflow import Registry, Workflow
from bot.errors import NotFound
from bot.outbox import Outbox
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import Approval, Run, RunStep, SlackMessage

log = logging.getLogger(__name__)


def run_key(run_id: str) -> str:
    """The outbox key of a run's live message (its thread hangs off it)."""
    return f"run:{run_id}"


def _tell(listeners: list[Callable[[str, str], None]], env: str, state: str) -> None:
    for listener in listeners:
        try:
            listener(env, state)
        except Exception:  # noqa: BLE001 - a listener must never break the commit path
            log.exception("run state listener failed")


def message_link(session: Session, run: Run) -> str | None:
    """A link to the run's live message, built from where it was posted (no `chat.getPermalink` call):
    `https://slack.com/archives/<channel>/p<ts without the dot>`, which Slack opens in the reader's
    workspace. None while the message is not posted yet."""
    row = session.get(SlackMessage, run_key(run.id))
    if row is None or not row.ts:
        return None
    return f"https://slack.com/archives/{row.channel}/p{row.ts.replace('.', '')}"


class RunStore:
    def __init__(self, config: Config, outbox: Outbox, backends: Callable[[str], EnvBackends],
                 registry: Registry) -> None:
        self.config = config
        self.outbox = outbox
        self.backends = backends
        self.registry = registry
        self.wakeup = threading.Event()  # set after a run becomes runnable or an abort is requested
        #: called with (environment, new state) after a transaction that moved a run commits (App Home refresh)
        self.on_state_change: list[Callable[[str, str], None]] = []

    def env(self, name: str) -> Environment:
        return self.config.environments[name]

    def workflow(self, run: Run) -> Workflow:
        return self.registry.get(run.kind)

    def load(self, session: Session, run_id: str, *, for_update: bool = True) -> Run:
        stmt = select(Run).where(Run.id == run_id)
        if for_update:
            stmt = stmt.with_for_update()
        run = session.execute(stmt).scalar_one_or_none()
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def steps(self, session: Session, run_id: str) -> list[RunStep]:
        """Main steps in order, then rollback steps in order."""
        rows = session.execute(select(RunStep).where(RunStep.run_id == run_id)).scalars().all()
        order = {Phase.main.value: 0, Phase.rollback.value: 1}
        return sorted(rows, key=lambda s: (order.get(s.phase, 2), s.idx))

    def approvals(self, session: Session, run_id: str) -> list[Approval]:
        return list(session.execute(select(Approval).where(Approval.run_id == run_id)
                                    .order_by(Approval.created_at)).scalars())

    def refresh_message(self, session: Session, run: Run) -> None:
        session.flush()
        reply = self.workflow(run).render(run, self.steps(session, run.id), self.approvals(session, run.id))
        self.outbox.update(session, run_key(run.id), reply)

    def thread(self, session: Session, run: Run, text: str) -> None:
        self.outbox.post(session, run.channel, Reply(text, ephemeral=False), thread_key=run_key(run.id))

    def alert(self, session: Session, run: Run, text: str) -> None:
        """A post in the environment's incident channel, naming the run and linking its message."""
        channel = self.env(run.environment).channels.incident
        if channel:
            link = message_link(session, run)
            where = f" — <{link}|the run's message>" if link else f" — in <#{run.channel}>"
            self.outbox.alert(session, channel, Reply(text + f" (run `{run.id}`){where}", ephemeral=False))

    def audit(self, session: Session, run: Run, actor: Actor | None, action: str, outcome: str,
              **args: Any) -> None:
        append(session, AuditEntry(actor_id=actor.user_id if actor else "bot",
                                   actor_name=actor.name if actor else "swarm-chatops", channel=run.channel,
                                   environment=run.environment, action=action, outcome=outcome,
                                   correlation_id=run.correlation_id, args={"run": run.id, **args}))

    def transition(self, session: Session, run: Run, to: RunState) -> None:
        check_transition(run.state, to)
        run.state = to.value
        run.version_no += 1
        if self.on_state_change:  # told only once the change is durable; a rolled-back transaction tells nobody
            env, listeners = run.environment, list(self.on_state_change)
            event.listen(session, "after_commit", lambda _s: _tell(listeners, env, to.value), once=True)

    def wake_after_commit(self, session: Session) -> None:
        event.listen(session, "after_commit", lambda _s: self.wakeup.set(), once=True)
