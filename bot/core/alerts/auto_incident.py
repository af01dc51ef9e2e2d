"""Incidents declared by alerts (issue 8 section 7: "and automatically for critical alerts where configured").

An environment with `alerts.auto_incident: critical` (or `high`: high and critical) declares an incident
when an alert group of that severity **opens** — the `opened` hook, inside the intake's transaction, so
the incident commits with the alert state or not at all. A group's row is one episode: a reopen within
the reopen window is the same row and emits `reopened`, not `opened`, so it declares nothing new; a
group firing again after the window is a new episode and a new incident. The incident is declared by
the Alertmanager system actor through `IncidentService.declare()` (its channel, the on-call people, the
checklist), begins at the alert's `startsAt` (its time to recover counts from there) and names the
group; the root and the thread link the incident's channel.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from bot.blocks import user_text
from bot.config import Config
from bot.core.alerts.hooks import AlertEvent
from bot.core.alerts.intake import AlertIntake
from bot.core.incidents import channel_key, label
from bot.core.model import Reply
from bot.core.unit_of_work import Work
from bot.persistence.models import AlertGroup, Incident, SlackMessage
from bot.timeutil import aware

#: which severities declare, per setting, and the incident severity each gets (1 is the worst)
DECLARES: dict[str, dict[str, int]] = {"off": {}, "critical": {"critical": 1}, "high": {"critical": 1, "high": 2}}


def incident_of(session: Session, grp: AlertGroup) -> Incident | None:
    """The incident declared for this group episode, if any."""
    return session.execute(select(Incident).where(Incident.alert_group_id == str(grp.id))
                           .order_by(Incident.id).limit(1)).scalar_one_or_none()


class AutoIncidents:
    def __init__(self, config: Config, intake: AlertIntake, incidents: Any) -> None:
        self.config = config
        self.intake = intake
        self.incidents = incidents  # bot.core.incidents.IncidentService

    def severity_for(self, grp: AlertGroup) -> int | None:
        """The incident severity this group declares with, or None when its environment does not declare."""
        env = self.config.environments.get(grp.environment or "")
        if env is None:
            return None
        return DECLARES[env.alerts.auto_incident].get(grp.severity)

    def on_opened(self, work: Work, event: AlertEvent) -> None:
        grp = event.group
        severity = self.severity_for(grp)
        if severity is None or grp.environment is None or incident_of(work.session, grp) is not None:
            return
        started = min((a.starts_at for a in event.alerts), default=aware(grp.opened_at))
        title = f"{grp.title}: {grp.summary}" if grp.summary else grp.title
        incident, _reply = self.incidents.declare(
            work.session, actor=work.actor, env_name=grp.environment, title=title[:200],
            correlation_id=work.correlation_id, severity=severity, alert_group_id=str(grp.id),
            alert_link=grp.generator_url or grp.external_url, started_at=started)
        work.audit("alert.incident", "ok", environment=grp.environment, channel=grp.channel,
                   args={"group_id": grp.id, "incident": incident.id, "severity": severity})
        self.intake.outbox.post(work.session, grp.channel, Reply(
            f":rotating_light: {label(incident)} (SEV{severity}) declared for this alert: "
            f"#{user_text(incident.channel_name)}", ephemeral=False), thread_key=grp.message_key)
        self.intake.refresh_root(work.session, grp)

    def note(self, grp: AlertGroup) -> list[str]:
        """The root's line naming the incident (the channel linked once Slack has created it)."""
        session = object_session(grp)
        if session is None:
            return []
        incident = incident_of(session, grp)
        if incident is None:
            return []
        created = session.get(SlackMessage, channel_key(incident.id))
        where = f"<#{created.channel}>" if created is not None else f"#{user_text(incident.channel_name)}"
        state = "open" if incident.status == "open" else "resolved"
        return [f":rotating_light: {label(incident)} (SEV{incident.severity}, {state}): {where}"]
