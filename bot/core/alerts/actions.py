"""What an alert group's root offers and does (issue 8 sections 4-6; Slack-free): the buttons, paging,
and the deploy the alert may be about.

`AlertActions.install(intake)` hangs it on the intake: its `actions` provider renders the root's
buttons and notes (who silenced until when, the suspect deploy), and its hooks page PagerDuty
(trigger when a critical group opens or reopens, resolve when it resolves; through the outbox, in the
intake's transaction) and fail a running canary analysis on a severe enough alert. The click
handlers (`commands/alerts.py`) call `acknowledge`, `silence`, `unsilence`; Roll back and Stop
trading go through the `/rollback` and `/stop-trading` services.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session, object_session

from bot import blocks as bk
from bot.blocks import user_text
from bot.config import Config
from bot.core.alerts.hooks import AlertEvent
from bot.core.alerts.intake import AlertIntake, group
from bot.core.model import Actor, Reply
from bot.core.runs.store import RunStore
from bot.core.unit_of_work import Work
from bot.core.workflows.deploy.correlation import AlertFact, fail_analysis_for_alert, rollback_candidate, suspect_deploy
from bot.errors import CommandError, Conflict, NotFound
from bot.ids import ActionId, encode_value
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import AlertGroup
from bot.timeutil import aware, utcnow

#: the silence lengths offered as buttons, in hours
SILENCE_HOURS = (1, 4)
MAX_SILENCE_HOURS = 24 * 7
PAGED = "critical"


class SilenceApi(Protocol):
    """An environment's Alertmanager silences (`integrations.alertmanager.AlertmanagerClient`)."""

    def silence_for(self, duration: timedelta, labels: dict[str, str], *, created_by: str, comment: str) -> str: ...

    def delete_silence(self, silence_id: str) -> None: ...


def _page_event(grp: AlertGroup, action: str) -> dict[str, Any]:
    """A PagerDuty event (the JSON `integrations.pagerduty.PagerDutyEvent` reads) for the group."""
    event: dict[str, Any] = {"action": action, "dedup_key": f"swarm-chatops:{grp.group_hash[:32]}:{grp.episode}"}
    if action == "trigger":
        links = [[url, text] for url, text in ((grp.generator_url, "Source"),
                                               (grp.common_annotations.get("runbook_url"), "Runbook"),
                                               (grp.common_annotations.get("dashboard"), "Dashboard"))
                 if url and str(url).startswith(("http://", "https://"))]
        event.update(summary=f"[{grp.environment or 'unknown'}] {grp.title}: {grp.summary or 'firing'}"[:1024],
                     source=f"alertmanager/{grp.environment or 'unknown'}", severity="critical",
                     custom_details={"firing": grp.firing_count, "labels": dict(grp.group_labels),
                                     "channel": grp.channel},
                     links=links, component=grp.common_labels.get("service") or grp.common_labels.get("job"),
                     group=grp.environment)
    return event


class AlertActions:
    def __init__(self, config: Config, intake: AlertIntake, store: RunStore, silences: dict[str, SilenceApi],
                 *, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.intake = intake
        self.store = store
        self.outbox = intake.outbox
        self.silences = silences
        self.clock = clock

    def install(self) -> AlertActions:
        self.intake.actions = self.root_blocks
        self.intake.hooks.on("opened", self._on_opened)
        self.intake.hooks.on("reopened", self._on_opened)
        self.intake.hooks.on("resolved", self._on_resolved)
        self.intake.hooks.on("firing", self._on_firing)
        return self

    # --- hooks (inside the intake's transaction) --------------------------------------------------------
    def pages(self, grp: AlertGroup) -> bool:
        env = self.config.environments.get(grp.environment or "")
        return grp.severity == PAGED and env is not None and env.pagerduty is not None

    def _page(self, work: Work, grp: AlertGroup, action: str) -> None:
        if not self.pages(grp):
            return
        assert grp.environment is not None
        self.outbox.page(work.session, grp.environment, _page_event(grp, action))
        work.audit(f"pagerduty.{action}", "queued", environment=grp.environment, channel=grp.channel,
                   args={"group_id": grp.id})

    def _on_opened(self, work: Work, event: AlertEvent) -> None:
        self._page(work, event.group, "trigger")

    def _on_resolved(self, work: Work, event: AlertEvent) -> None:
        self._page(work, event.group, "resolve")

    def _on_firing(self, work: Work, event: AlertEvent) -> None:
        grp = event.group
        if grp.environment is None:
            return
        names = sorted({a.name for a in event.alerts}) or [grp.title]
        fail_analysis_for_alert(work.session, self.store, self.config, AlertFact(
            grp.environment, ", ".join(names)[:200], grp.severity, grp.summary or "",
            key=f"alert:{grp.group_hash[:32]}:{grp.episode}"))

    # --- the root's blocks -----------------------------------------------------------------------------
    def root_blocks(self, grp: AlertGroup) -> list[dict[str, Any]]:
        """Notes and buttons under the root: silence state, suspect deploy, and what can be done."""
        out: list[dict[str, Any]] = []
        session = object_session(grp)
        notes = []
        until = aware(grp.silenced_until)
        silenced = grp.silence_id is not None and until is not None and until > self.clock()
        if silenced and until is not None:
            notes.append(f":no_bell: Silenced by <@{grp.silenced_by}> until {until:%Y-%m-%d %H:%M} UTC")
        if session is not None and grp.environment:
            suspect = suspect_deploy(session, self.config, grp.environment, aware(grp.opened_at) or self.clock())
            if suspect:
                notes.append(f":mag: {suspect}")
        if notes:
            out.append(bk.context("\n".join(notes)))
        if grp.status != "firing":
            return out
        value = {"g": grp.id, "e": grp.environment}
        buttons = []
        if not grp.acked_by:
            buttons.append(bk.button("Acknowledge", ActionId.alert_ack, encode_value(value), style="primary"))
        env = grp.environment
        if env and env in self.silences:
            if silenced:
                buttons.append(bk.button("Unsilence", ActionId.alert_unsilence, encode_value(value)))
            else:
                buttons += [bk.button(f"Silence {h} h", ActionId.alert_silence, encode_value({**value, "h": h}))
                            for h in SILENCE_HOURS]
        if env and session is not None and rollback_candidate(session, self.config, env) is not None:
            buttons.append(bk.button("Roll back", ActionId.alert_rollback, encode_value(value), confirm=(
                f"Roll {env} back?", "Starts /rollback for this environment (runbook 8.2), with its approvals.")))
        if env:
            buttons.append(bk.button("Stop trading", ActionId.alert_stop_trading, encode_value(value),
                                     style="danger", confirm=(f"Stop trading in {env}?", "Runs /stop-trading "
                                     "(graceful): no new positions, resting orders cancelled, positions kept.")))
        if buttons:
            out.append(bk.actions(*buttons, block_id=f"alert:{grp.id}"))
        return out

    # --- clicks (inside the click's transaction) --------------------------------------------------------
    def group_for(self, session: Session, group_id: Any) -> AlertGroup:
        if not isinstance(group_id, int) or isinstance(group_id, bool):
            raise CommandError("this button names no alert group")
        grp = group(session, group_id, for_update=True)
        if grp is None:
            raise NotFound(f"no alert group {group_id}")
        return grp

    def _audit(self, session: Session, actor: Actor, grp: AlertGroup, action: str, outcome: str,
               correlation_id: str, **args: Any) -> None:
        append(session, AuditEntry(actor_id=actor.user_id, actor_name=actor.name, channel=grp.channel,
                                   environment=grp.environment, action=action, outcome=outcome,
                                   correlation_id=correlation_id, args={"group_id": grp.id, **args}))

    def _thread(self, session: Session, grp: AlertGroup, text: str) -> None:
        self.outbox.post(session, grp.channel, Reply(text, ephemeral=False), thread_key=grp.message_key)

    def acknowledge(self, session: Session, actor: Actor, grp: AlertGroup, correlation_id: str) -> Reply:
        """Record who acknowledged; no more @-mentions for this group; the page is acknowledged too."""
        if grp.acked_by:
            raise Conflict(f"already acknowledged by <@{grp.acked_by}>")
        grp.acked_by, grp.acked_by_name, grp.acked_at = actor.user_id, actor.name, self.clock()
        grp.mention = "none"  # re-notification stops: updates and a reopen no longer mention the channel
        grp.version_no += 1
        paged = self.pages(grp)
        if paged:
            assert grp.environment is not None
            self.outbox.page(session, grp.environment, _page_event(grp, "acknowledge"))
        self._audit(session, actor, grp, "alert.acknowledge", "ok", correlation_id, paged=paged)
        self._thread(session, grp, f":eyes: Acknowledged by <@{actor.user_id}>"
                                   + (" (PagerDuty acknowledged)" if paged else ""))
        self.intake.refresh_root(session, grp)
        return Reply(f"You acknowledged *{user_text(grp.title)}*.")

    def silence(self, session: Session, actor: Actor, grp: AlertGroup, hours: Any, correlation_id: str) -> Reply:
        """Create a real Alertmanager silence matching the group's labels for `hours`."""
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= MAX_SILENCE_HOURS:
            raise CommandError(f"a silence lasts between a few minutes and {MAX_SILENCE_HOURS} hours")
        api = self.silences.get(grp.environment or "")
        if api is None:
            raise CommandError(f"no Alertmanager is configured for {grp.environment or 'this alert'}",
                               hint="Set `alertmanager.url` for the environment in the config.")
        labels = dict(grp.group_labels) or dict(grp.common_labels)
        who = f"{actor.name} (Slack {actor.user_id})"
        comment = f"Silenced from the swarm-chatops alert thread of {grp.title} ({grp.channel})"
        silence_id = api.silence_for(timedelta(hours=float(hours)), labels, created_by=who, comment=comment)
        until = self.clock() + timedelta(hours=float(hours))
        grp.silence_id, grp.silenced_by, grp.silenced_until = silence_id, actor.user_id, until
        grp.version_no += 1
        self._audit(session, actor, grp, "alertmanager.silence", "ok", correlation_id, silence_id=silence_id,
                    hours=hours, matchers=sorted(labels))
        self._thread(session, grp, f":no_bell: Silenced in Alertmanager by <@{actor.user_id}> for {hours:g} h, "
                                   f"until {until:%Y-%m-%d %H:%M} UTC (silence `{silence_id}`)")
        self.intake.refresh_root(session, grp)
        return Reply(f"Silenced *{user_text(grp.title)}* until {until:%H:%M} UTC.")

    def unsilence(self, session: Session, actor: Actor, grp: AlertGroup, correlation_id: str) -> Reply:
        """Expire the group's silence in Alertmanager."""
        if not grp.silence_id:
            raise Conflict("this alert is not silenced")
        api = self.silences.get(grp.environment or "")
        if api is None:
            raise CommandError(f"no Alertmanager is configured for {grp.environment or 'this alert'}")
        try:
            api.delete_silence(grp.silence_id)
        except NotFound:
            pass  # expired or removed in Alertmanager already: the group is unsilenced either way
        silence_id = grp.silence_id
        grp.silence_id = grp.silenced_by = None
        grp.silenced_until = None
        grp.version_no += 1
        self._audit(session, actor, grp, "alertmanager.unsilence", "ok", correlation_id, silence_id=silence_id)
        self._thread(session, grp, f":bell: Unsilenced by <@{actor.user_id}> (silence `{silence_id}` expired)")
        self.intake.refresh_root(session, grp)
        return Reply(f"Unsilenced *{user_text(grp.title)}*.")
