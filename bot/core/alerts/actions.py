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
from typing import Any

from sqlalchemy.orm import Session, object_session

from bot import blocks as bk
from bot.blocks import user_text
from bot.config import Config
from bot.core.alerts.auto_incident import AutoIncidents
from bot.core.alerts.followup import Clicker, FollowUp, after_commit
from bot.core.alerts.hooks import AlertEvent
from bot.core.alerts.intake import AlertIntake, group
from bot.core.alerts.silences import (
    ALLOWED_MINUTES,
    EXPIRING,
    QUICK_MINUTES,
    SILENCE_CHOICES,
    Claim,
    SilenceApi,
    claim_of,
    label_of,
    marker,
    new_token,
    pending_id,
    silenced,
)
from bot.core.model import Actor, Reply
from bot.core.runs.store import RunStore
from bot.core.unit_of_work import Work
from bot.core.workflows.deploy.correlation import AlertFact, fail_analysis_for_alert, rollback_candidate, suspect_deploy
from bot.errors import CommandError, Conflict, NotFound, user_message
from bot.ids import ActionId, encode_value
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import AlertGroup
from bot.timeutil import aware, utcnow

PAGED = "critical"
SILENCE_MENU = "Silence for…"
#: extra notes on the root (e.g. the incident an alert opened): `AlertGroup -> lines`
NoteProvider = Callable[[AlertGroup], list[str]]


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
                 *, incidents: Any = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.intake = intake
        self.store = store
        self.outbox = intake.outbox
        self.silences = silences
        self.clock = clock
        self.notes: list[NoteProvider] = []
        #: incidents declared when a group opens, where the environment's `alerts.auto_incident` says so
        self.auto_incidents = AutoIncidents(config, intake, incidents) if incidents is not None else None

    def install(self) -> AlertActions:
        self.intake.actions = self.root_blocks
        self.intake.hooks.on("opened", self._on_opened)
        self.intake.hooks.on("reopened", self._on_opened)
        self.intake.hooks.on("resolved", self._on_resolved)
        self.intake.hooks.on("firing", self._on_firing)
        if self.auto_incidents is not None:
            self.intake.hooks.on("opened", self.auto_incidents.on_opened)
            self.notes.append(self.auto_incidents.note)
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
        """Notes and buttons under the root: silence state, suspect deploy, incident, and what can be done."""
        out: list[dict[str, Any]] = []
        session = object_session(grp)
        now = self.clock()
        notes = []
        claim = claim_of(grp)
        until = aware(grp.silenced_until)
        is_silenced = silenced(grp, now)
        if is_silenced and until is not None:
            doing = " (being unsilenced)" if claim.kind == "expiring" else ""
            notes.append(f":no_bell: Silenced by <@{grp.silenced_by}> until {until:%Y-%m-%d %H:%M} UTC{doing}")
        elif claim.kind == "pending":
            notes.append(f":hourglass: Silencing in Alertmanager for {label_of(claim.minutes)} "
                         f"(asked by <@{grp.silenced_by}>)")
        if session is not None and grp.environment:
            suspect = suspect_deploy(session, self.config, grp.environment, aware(grp.opened_at) or now)
            if suspect:
                notes.append(f":mag: {suspect}")
        for provider in self.notes:
            notes += provider(grp)
        if notes:
            out.append(bk.context("\n".join(notes)))
        if grp.status != "firing":
            return out
        value = {"g": grp.id, "e": grp.environment}
        elements = []
        if not grp.acked_by:
            elements.append(bk.button("Acknowledge", ActionId.alert_ack, encode_value(value), style="primary"))
        env = grp.environment
        if env and env in self.silences:
            if is_silenced:
                elements.append(bk.button("Unsilence", ActionId.alert_unsilence, encode_value(value)))
            else:
                elements.append(bk.button(f"Silence {label_of(QUICK_MINUTES)}", ActionId.alert_silence,
                                          encode_value({**value, "m": QUICK_MINUTES})))
                elements.append(bk.static_select(SILENCE_MENU, ActionId.alert_silence_for, [
                    (text, encode_value({**value, "m": minutes})) for minutes, text in SILENCE_CHOICES]))
        if env and session is not None and rollback_candidate(session, self.config, env) is not None:
            elements.append(bk.button("Roll back", ActionId.alert_rollback, encode_value(value), confirm=(
                f"Roll {env} back?", "Starts /rollback for this environment (runbook 8.2), with its approvals.")))
        if env:
            elements.append(bk.button("Stop trading", ActionId.alert_stop_trading, encode_value(value),
                                      style="danger", confirm=(f"Stop trading in {env}?", "Runs /stop-trading "
                                      "(graceful): no new positions, resting orders cancelled, positions kept.")))
        if elements:
            out.append(bk.actions(*elements, block_id=f"alert:{grp.id}"))
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

    def _api(self, grp: AlertGroup) -> SilenceApi:
        api = self.silences.get(grp.environment or "")
        if api is None:
            raise CommandError(f"no Alertmanager is configured for {grp.environment or 'this alert'}",
                               hint="Set `alertmanager.url` for the environment in the config.")
        return api

    def silence(self, session: Session, who: Clicker, grp: AlertGroup, minutes: int) -> Reply:
        """Claim the group's silence now; Alertmanager is asked once this transaction committed (see silences.py)."""
        if minutes not in ALLOWED_MINUTES:
            raise CommandError(f"{minutes} minutes is not one of the offered silence durations")
        api, now, claim = self._api(grp), self.clock(), claim_of(grp)
        if silenced(grp, now):
            raise Conflict(f"already silenced by <@{grp.silenced_by}> until "
                           f"{aware(grp.silenced_until):%Y-%m-%d %H:%M} UTC")
        if claim.kind == "pending" and not claim.stale(grp, now):
            raise Conflict(f"<@{grp.silenced_by}> is silencing this alert right now")
        takeover = claim.token if claim.kind == "pending" else None
        token = takeover or new_token()
        labels = dict(grp.group_labels) or dict(grp.common_labels)
        grp.silence_id, grp.silenced_by = pending_id(token, minutes), who.actor.user_id
        grp.silenced_until = now + timedelta(minutes=minutes)
        grp.version_no += 1
        self._audit(session, who.actor, grp, "alertmanager.silence", "claimed", who.correlation_id, token=token,
                    minutes=minutes, takeover=takeover is not None)
        self.intake.refresh_root(session, grp)
        created_by = f"{who.actor.name or who.actor.user_id} (Slack {who.actor.user_id})"
        comment = (f"Silenced from the swarm-chatops alert thread of {grp.title} ({grp.channel}) "
                   f"{marker(token)}")
        group_id, title = grp.id, user_text(grp.title)

        def call() -> tuple[str, datetime, bool]:
            if takeover is not None:  # the claim's process died: did it create the silence before it did?
                found = api.find_silence(labels, marker(token))
                if found is not None:
                    return found[0], found[1], True
            try:
                silence_id = api.silence_for(timedelta(minutes=minutes), labels, created_by=created_by,
                                             comment=comment)
            except ValueError as exc:  # the group's labels make no usable matcher
                raise CommandError(f"cannot silence this alert: {exc}") from None
            return silence_id, self.clock() + timedelta(minutes=minutes), False

        def record(s: Session, result: tuple[str, datetime, bool] | None, error: Exception | None) -> None:
            current = self.group_for(s, group_id)
            if claim_of(current) != Claim("pending", token=token, minutes=minutes):
                self._audit(s, who.actor, current, "alertmanager.silence", "conflict", who.correlation_id,
                            token=token, silence_id=result[0] if result else None, detail="claim taken over")
                return
            if error is not None or result is None:
                text, outcome = user_message(error or RuntimeError("no result"))
                current.silence_id = current.silenced_by = None
                current.silenced_until = None
                current.version_no += 1
                self._audit(s, who.actor, current, "alertmanager.silence", outcome, who.correlation_id,
                            token=token, minutes=minutes, error=text)
                self.intake.refresh_root(s, current)
                who.answer(self.outbox, s, Reply(f"{text}\nNothing was silenced."))
                return
            silence_id, until, adopted = result
            current.silence_id, current.silenced_until = silence_id, until
            current.version_no += 1
            self._audit(s, who.actor, current, "alertmanager.silence", "ok", who.correlation_id, token=token,
                        silence_id=silence_id, minutes=minutes, matchers=sorted(labels), adopted=adopted)
            self._thread(s, current, f":no_bell: Silenced in Alertmanager by <@{who.actor.user_id}> for "
                                     f"{label_of(minutes)}, until {until:%Y-%m-%d %H:%M} UTC (silence `{silence_id}`)")
            self.intake.refresh_root(s, current)
            who.answer(self.outbox, s, Reply(f"Silenced *{title}* until {until:%H:%M} UTC."))

        failed = who.failed(self.outbox, "alertmanager.silence", grp.environment, group_id=group_id)
        after_commit(session, self.intake.db, FollowUp("silence", call, record, failed))
        return Reply(f":hourglass: Asking Alertmanager to silence *{title}* for {label_of(minutes)}…")

    def unsilence(self, session: Session, who: Clicker, grp: AlertGroup) -> Reply:
        """Mark the silence as being expired now; Alertmanager expires it once this transaction committed."""
        claim = claim_of(grp)
        if claim.kind == "pending":
            raise Conflict(f"<@{grp.silenced_by}> is silencing this alert right now")
        if claim.kind == "none":
            raise Conflict("this alert is not silenced")
        api, silence_id, group_id = self._api(grp), claim.silence_id, grp.id
        grp.silence_id = EXPIRING + silence_id  # a second click repeats the (harmless) expiry
        grp.version_no += 1

        def call() -> None:
            try:
                api.delete_silence(silence_id)
            except NotFound:
                pass  # expired or removed in Alertmanager already: the group is unsilenced either way

        def record(s: Session, _result: None, error: Exception | None) -> None:
            current = self.group_for(s, group_id)
            if claim_of(current) != Claim("expiring", silence_id=silence_id):
                who.answer(self.outbox, s, Reply(f"*{user_text(current.title)}* is unsilenced already."))
                return
            if error is not None:
                text, outcome = user_message(error)
                current.silence_id = silence_id  # still silenced
                current.version_no += 1
                self._audit(s, who.actor, current, "alertmanager.unsilence", outcome, who.correlation_id,
                            silence_id=silence_id, error=text)
                self.intake.refresh_root(s, current)
                who.answer(self.outbox, s, Reply(f"{text}\nThe silence is still in place."))
                return
            current.silence_id = current.silenced_by = None
            current.silenced_until = None
            current.version_no += 1
            self._audit(s, who.actor, current, "alertmanager.unsilence", "ok", who.correlation_id,
                        silence_id=silence_id)
            self._thread(s, current, f":bell: Unsilenced by <@{who.actor.user_id}> (silence `{silence_id}` expired)")
            self.intake.refresh_root(s, current)
            who.answer(self.outbox, s, Reply(f"Unsilenced *{user_text(current.title)}*."))

        failed = who.failed(self.outbox, "alertmanager.unsilence", grp.environment, group_id=group_id)
        after_commit(session, self.intake.db, FollowUp("unsilence", call, record, failed))
        return Reply(f":hourglass: Asking Alertmanager to expire the silence of *{user_text(grp.title)}*…")
