"""The App Home tab: the live status of every environment the viewer may see, with the buttons for what
they may do there, then their roles and the commands.

Published when the tab is opened (`app_home_opened`, `prepare_home_opened`) and when a run changes state:
`HomeRefresher` listens to the runs engine's transitions (`RunStore.on_state_change`, told after the
commit) and republishes, through the outbox, the tab of everyone who opened it in the last
`RECENT_VIEWERS` and may see the run's environment — each with their own buttons, one view per user per
burst of changes (`refresh_home`). The live reads (`bot.core.status`) happen before the publishing
transaction opens, so no write lock is held while a backend is slow.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from bot import blocks
from bot.config import Role
from bot.core.context import Core
from bot.core.model import Reply
from bot.core.status import EnvStatus, environment_statuses
from bot.ids import ActionId, encode_value
from bot.persistence.models import OutboxMessage
from bot.timeutil import utcnow
from commands.dispatch import ActionEntry, CommandEntry, Ctx
from commands.status import footer, render_env

log = logging.getLogger(__name__)
#: whose Home tab follows run changes: those who opened it within this long
RECENT_VIEWERS = timedelta(minutes=30)
#: how long a burst of run changes is gathered before the tabs are published once
BURST_SECONDS = 0.5
#: marks a view published by a refresh (not by the user opening the tab), in Slack's `private_metadata`
REFRESHED = "refreshed"


def visible_statuses(core: Core, envs: list[str]) -> dict[str, EnvStatus]:
    """The live status of `envs`, every backend asked at once (see `bot.core.status`)."""
    if not envs:
        return {}
    return {st.name: st for st in environment_statuses(core, envs)}


def _buttons(core: Core, user_id: str, env: str) -> list[dict[str, Any]]:
    """What the viewer may start from here: stop trading (operator), roll back (deployer)."""
    value = encode_value({"env": env})
    out = []
    if core.authorizer.has(user_id, Role.operator, env):
        out.append(blocks.button("Stop trading", ActionId.stop_trading, value, style="danger", confirm=(
            f"Stop trading in {env}?",
            "Bots stop opening positions and resting orders are cancelled; open positions are kept.")))
    if core.authorizer.has(user_id, Role.deployer, env):
        out.append(blocks.button("Roll back", ActionId.rollback, value, confirm=(
            f"Roll {env} back?", "Starts the runbook 8.2 rollback to the previous version.")))
    return out


def home_view(core: Core, user_id: str, commands: dict[str, CommandEntry],
              statuses: dict[str, EnvStatus] | None = None, *, refreshed: bool = False) -> dict[str, object]:
    """The view for `user_id`; `statuses` (from `visible_statuses`) is read now when not given. `refreshed`:
    published because a run changed, not because the user opened the tab."""
    name = core.config.name_of(user_id)
    visible = core.authorizer.environments_visible_to(user_id)
    if statuses is None:
        statuses = visible_statuses(core, visible)
    body: list[blocks.Block] = [blocks.header("swarm-chatops")]
    role_lines = []
    for env in core.config.environments:
        roles = sorted(r.value for r in core.authorizer.roles_of(user_id, env))
        role_lines.append(f"*{env}*: {', '.join(roles) if roles else 'no roles'}")
    body.append(blocks.section(f"Hello {name or '<@' + user_id + '>'}. Your roles:\n" + "\n".join(role_lines)))
    shown = [statuses[env] for env in visible if env in statuses]
    for st in shown:
        body += [blocks.divider(), blocks.section(render_env(st, details=False))]
        buttons = _buttons(core, user_id, st.name)
        if buttons:
            body.append(blocks.actions(*buttons, block_id=f"home:{st.name}"))
    if shown:
        body.append(blocks.context(footer(shown)))
    usage = "\n".join(f"• `{e.spec.usage}` — {e.spec.summary}" for e in commands.values() if e.listed)
    body += [blocks.divider(), blocks.section(usage),
             blocks.context("Every command and click is recorded in the audit log.")]
    view: dict[str, object] = {"type": "home", "blocks": blocks.message(*body)}
    if refreshed:
        view["private_metadata"] = REFRESHED
    return view


def refresh_home(core: Core, user_ids: list[str], commands: dict[str, CommandEntry] | None = None) -> int:
    """Publish a fresh Home tab to each of `user_ids` (e.g. when a run changes state); the number queued.
    The environments are read once for everyone, before the publishing transaction. Call it outside any
    transaction (it opens its own) and off latency-critical paths: it takes up to `status.timeout_seconds`."""
    if not user_ids:
        return 0
    if commands is None:
        from commands import registry

        commands = registry.build()[0]
    envs = sorted({env for uid in user_ids for env in core.authorizer.environments_visible_to(uid)})
    statuses = visible_statuses(core, envs)
    views = {uid: home_view(core, uid, commands, statuses, refreshed=True) for uid in dict.fromkeys(user_ids)}
    with core.db.transaction() as session:
        for uid, view in views.items():
            core.outbox.home(session, uid, view)
    return len(views)


def recent_viewers(core: Core, since: timedelta = RECENT_VIEWERS) -> list[str]:
    """Who opened the Home tab within `since` (read from the outbox, so it holds across restarts and
    replicas): the users of the views published because the tab was opened, not by a refresh."""
    with core.db.read() as session:
        rows = session.execute(select(OutboxMessage.channel, OutboxMessage.payload)
                               .where(OutboxMessage.kind == "home", OutboxMessage.created_at >= utcnow() - since)
                               .order_by(OutboxMessage.id)).all()
    users: dict[str, None] = {}
    for lane, payload in rows:
        channel = str(lane or "")
        body: dict[str, Any] = payload if isinstance(payload, dict) else {}
        view = body.get("view") or {}
        if channel.startswith("home:") and view.get("private_metadata") != REFRESHED:
            users[channel[len("home:"):]] = None
    return list(users)


class HomeRefresher:
    """Republishes the Home tab of recent viewers when runs change state: `notify(env, state)` is the
    runs engine's listener (cheap: it only records the environment); a thread of its own gathers a burst
    of changes for `burst_seconds`, then publishes one view per viewer who may see any changed environment."""

    def __init__(self, core: Core, commands: dict[str, CommandEntry], *, since: timedelta = RECENT_VIEWERS,
                 burst_seconds: float = BURST_SECONDS) -> None:
        self.core, self.commands, self.since, self.burst_seconds = core, commands, since, burst_seconds
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0  # views queued so far (for tests and metrics)
        self._busy = False

    def notify(self, env: str, state: str = "") -> None:
        with self._lock:
            self._changed.add(env)
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._loop, name="chatops-home-refresh", daemon=True)
                self._thread.start()
        self._wake.set()

    def idle(self) -> bool:
        """Nothing gathered, nothing being published."""
        with self._lock:
            return not self._changed and not self._busy and not self._wake.is_set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.wait(self.burst_seconds):  # gather the rest of the burst
                return
            with self._lock:
                self._wake.clear()
                changed, self._changed = self._changed, set()
                self._busy = bool(changed)
            if changed:
                try:
                    self.refresh(changed)
                except Exception:  # noqa: BLE001 - e.g. the database is down: the next change tries again
                    log.exception("could not refresh the Home tabs")
                finally:
                    with self._lock:
                        self._busy = False

    def refresh(self, changed: set[str]) -> int:
        """Publish to the recent viewers who may see one of the `changed` environments; the number queued."""
        viewers = [uid for uid in recent_viewers(self.core, self.since)
                   if changed & set(self.core.authorizer.environments_visible_to(uid))]
        count = refresh_home(self.core, viewers, self.commands)
        self.published += count
        return count


# -- the Home tab's buttons ------------------------------------------------------------------------------

def _env_of(value: dict[str, Any], ctx: Ctx, role: Role, what: str) -> str:
    from bot.errors import CommandError

    env = value.get("env")
    if not isinstance(env, str) or env not in ctx.core.config.environments:
        raise CommandError("this button names no known environment; reopen the Home tab")
    ctx.core.authorizer.require(ctx.actor, role, env, f"{what} in {env}")
    return env


def _stop_trading(value: dict[str, Any], ctx: Ctx) -> Reply:
    """The Home tab's Stop trading: the same run as `/stop-trading --env ENV` (graceful)."""
    assert ctx.session is not None
    env = str(value.get("env"))
    reply: Reply = ctx.core.stop_trading.request(ctx.session, actor=ctx.actor, channel_id=ctx.channel_id,
                                          correlation_id=ctx.correlation_id, env_name=env,
                                          reason="from the App Home tab", emergency=False)
    if ctx.channel_id is None and ctx.response_url is None:
        ctx.core.outbox.post(ctx.session, ctx.actor.user_id, reply)  # a Home click has no channel: the DM
    return reply


def _rollback_pointer(value: dict[str, Any], ctx: Ctx) -> Reply:
    """The Home tab's Roll back: a rollback reads the cluster and shows a plan first, so it is typed."""
    env = str(value.get("env"))
    reply = Reply(f"To roll {env} back, type `/rollback --env {env}` (add `--to VERSION` to pick the version): "
                  "it plans runbook 8.2, asks for approval where needed and shows every step. Nothing was done yet.")
    if ctx.channel_id is None and ctx.response_url is None and ctx.session is not None:
        ctx.core.outbox.post(ctx.session, ctx.actor.user_id, reply)
    return reply


def make_actions() -> list[ActionEntry]:
    """The Home tab's buttons."""
    return [
        ActionEntry(ActionId.stop_trading, lambda v, c: _env_of(v, c, Role.operator, "stop trading"), _stop_trading),
        ActionEntry(ActionId.rollback, lambda v, c: _env_of(v, c, Role.deployer, "roll back"), _rollback_pointer),
    ]
