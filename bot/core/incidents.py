"""Incidents (Slack-free core): declare, status updates, notes, timeline, resolve, and MTTR (runbook 9.2).

Declaring one is one transaction: the `incidents` row, and through the outbox the channel's creation
(`inc-YYYYMMDD-<slug>`, a suffix when Slack says the name is taken), the invitations (the declarer and
the environment's `on_call`), the incident's message (severity, suspect deploy, alert group) and its
tickable checklist (runbook 8.3, `bot.core.checklists`). The rows into the new channel are addressed
to `channel_ref(...)`: they wait behind the create in its lane. The timeline is read from the audit log
(every record of the environment since the incident began) merged with the incident's notes.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot import blocks
from bot.blocks import user_text
from bot.config import Config, Role
from bot.core import checklists
from bot.core.model import Actor, Reply, person
from bot.core.rbac import Authorizer
from bot.core.runs.context import describe_duration
from bot.core.unit_of_work import SYSTEM_ACTORS
from bot.errors import CommandError, Conflict, NotFound
from bot.outbox import Outbox, channel_ref
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import Approval, AuditRecord, Incident, IncidentNote, Run, SlackMessage
from bot.timeutil import aware, utcnow

MAX_SLUG = 40  # "inc-YYYYMMDD-" + slug + "-NN" stays far inside Slack's 80 characters
MAX_SUFFIX = 20  # name, name-2 … name-20: then the create fails (and says so)
MTTR_TARGET_SECONDS = 900.0  # runbook 9.2: mean time to recovery < 15 minutes
DEFAULT_SEVERITY = 2
TIMELINE_SECTIONS = 12  # of at most 3,000 characters each, far inside 50 blocks
#: audit actions the timeline leaves out: its own commands and notes (the notes are shown from their table)
_TIMELINE_SKIP = ("command.incident", "incident.note", "incident.status", "action.checklist.tick")


def slug(title: str) -> str:
    """A channel-name-safe slug of `title`: lower-case ASCII letters and digits joined by hyphens."""
    ascii_ = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_).strip("-")
    if len(words) > MAX_SLUG:
        words = words[:MAX_SLUG].rsplit("-", 1)[0] if "-" in words[:MAX_SLUG] else words[:MAX_SLUG]
    return words.strip("-") or "incident"


def channel_names(title: str, when: datetime) -> list[str]:
    """The names to try, in order: `inc-YYYYMMDD-<slug>`, then with -2, -3, … (Slack answers name_taken)."""
    base = f"inc-{when.astimezone(UTC):%Y%m%d}-{slug(title)}"
    return [base] + [f"{base}-{n}" for n in range(2, MAX_SUFFIX + 1)]


def label(incident: Incident) -> str:
    return f"INC-{incident.id}"


def channel_key(incident_id: int) -> str:
    """The `slack_messages` key under which the incident's channel id is recorded once Slack made it."""
    return f"incident:{incident_id}:channel"


def message_key(incident_id: int) -> str:
    return f"incident:{incident_id}"


def parse_id(raw: str) -> int:
    """`12` or `INC-12` (any case) -> 12; a ValueError naming the forms otherwise."""
    match = re.fullmatch(r"(?:inc-?)?([0-9]{1,9})", raw.strip().lower())
    if not match:
        raise ValueError(f"{raw!r} is not an incident id (like INC-12 or 12)")
    return int(match.group(1))


def _iso(moment: datetime) -> str:
    """The audit log's time format, so that times compare as strings."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _hhmm(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "?"


def time_to_recover(incident: Incident) -> float | None:
    start, end = aware(incident.started_at), aware(incident.resolved_at)
    return (end - start).total_seconds() if start and end else None


@dataclass(frozen=True)
class Mttr:
    resolved: int
    mean_seconds: float | None

    def describe(self, days: int) -> str:
        if self.mean_seconds is None:
            return f"MTTR (runbook 9.2, last {days} days): no resolved incidents"
        verdict = "within" if self.mean_seconds <= MTTR_TARGET_SECONDS else "OVER"
        return (f"MTTR (runbook 9.2, last {days} days): *{describe_duration(self.mean_seconds)}* over "
                f"{self.resolved} resolved incident{'s' if self.resolved != 1 else ''} — {verdict} the "
                "15-minute target")


class IncidentService:
    def __init__(self, config: Config, outbox: Outbox, authorizer: Authorizer) -> None:
        self.config = config
        self.outbox = outbox
        self.authorizer = authorizer

    # --- who is invited ---------------------------------------------------------------------------
    def on_call(self, env_name: str) -> tuple[list[str], list[str]]:
        """The environment's on-call people as (user ids, Slack user group ids)."""
        users: list[str] = []
        groups: list[str] = []

        def add(member: str) -> None:
            if member.startswith("group:"):
                for m in self.config.groups.get(member[6:], []):
                    add(m)
            elif member.startswith("subteam:"):
                groups.append(member[8:])
            else:
                uid = self.config.user_id_of(member)
                if uid:
                    users.append(uid)

        for member in self.config.environments[env_name].on_call:
            add(member)
        return list(dict.fromkeys(users)), list(dict.fromkeys(groups))

    # --- declare ----------------------------------------------------------------------------------
    def suspect_deploy(self, session: Session, env_name: str) -> Run | None:
        """The environment's last deploy that ran (the first suspect when something breaks)."""
        return session.execute(
            select(Run).where(Run.environment == env_name, Run.kind == "deploy", Run.dry_run.is_(False),
                              Run.started_at.is_not(None)).order_by(Run.started_at.desc()).limit(1)
        ).scalar_one_or_none()

    def _describe_run(self, session: Session, run: Run, at: datetime) -> str:
        version = user_text(str((run.subject or {}).get("version", "?")))
        who = person(run.requested_by, user_text(run.requested_name) if run.requested_name else None)
        approvers = [user_text(a.user_name or a.user_id) for a in session.execute(
            select(Approval).where(Approval.run_id == run.id).order_by(Approval.created_at)).scalars()]
        started = aware(run.started_at)
        ago = f", started {describe_duration((at - started).total_seconds())} before" if started else ""
        approved = f", approved by {', '.join(approvers)}" if approvers else ""
        return f"run `{run.id}` ({version} by {who}{approved}; {run.state}{ago})"

    def declare(self, session: Session, *, actor: Actor, env_name: str, title: str, correlation_id: str,
                severity: int | None = None, alert_group_id: str | None = None, alert_link: str | None = None,
                started_at: datetime | None = None) -> tuple[Incident, Reply]:
        """Open an incident and queue its channel, invitations, message and checklist. `alert_group_id` and
        `alert_link` name the alert group that caused it (alert intake passes them); `started_at` when it
        began (default: now), the start of its time to recover."""
        if env_name not in self.config.environments:
            raise NotFound(f"no environment {user_text(env_name)!r}")
        title = title.strip()
        if not title:
            raise CommandError("the incident needs a title")
        severity = DEFAULT_SEVERITY if severity is None else severity
        if not 1 <= severity <= 4:
            raise CommandError("severity is 1 (worst) to 4")
        now = utcnow()
        names = channel_names(title, now)
        suspect = self.suspect_deploy(session, env_name)
        incident = Incident(title=title[:200], severity=severity, environment=env_name, status="open",
                            channel_name=names[0], declared_by=actor.user_id, declared_by_name=actor.name,
                            declared_at=now, started_at=aware(started_at) or now,
                            suspect_run_id=suspect.id if suspect else None, alert_group_id=alert_group_id,
                            alert_link=alert_link, correlation_id=correlation_id)
        session.add(incident)
        session.flush()  # the id names the channel's key
        key = channel_key(incident.id)
        where = channel_ref(key)
        self.outbox.create_channel(session, key, names, retry_until=now + self.outbox.alert_retry)
        users, groups = self.on_call(env_name)
        # a system actor (alert intake declaring for a critical alert) is nobody to invite
        declarer = [] if actor.user_id in SYSTEM_ACTORS else [actor.user_id]
        invited = list(dict.fromkeys([*declarer, *users]))
        if invited or groups:
            self.outbox.invite(session, where, invited, groups, retry_until=now + self.outbox.alert_retry)
        suspect_text = self._describe_run(session, suspect, now) if suspect else None
        self.outbox.post(session, where, self.render(incident, suspect_text), key=message_key(incident.id),
                         retry_until=now + self.outbox.alert_retry)
        self._audit(session, incident, actor, "incident.declared", correlation_id, title=title, severity=severity,
                    channel_name=names[0], suspect_run=incident.suspect_run_id, alert_group=alert_group_id,
                    invited=invited, invited_groups=groups)
        checklists.create(session, self.outbox, checklist_id=message_key(incident.id),
                          title=f"{label(incident)} checklist (runbook 8.3)", items=checklists.RUNBOOK_POST_ROLLBACK,
                          environment=env_name, channel=where, correlation_id=correlation_id, actor=actor)
        alerts = self.config.environments[env_name].channels.incident
        if alerts:
            self.outbox.alert(session, alerts, Reply(
                f":rotating_light: {label(incident)} (SEV{severity}) declared in {env_name} by {actor.mention}: "
                f"{user_text(title)} — channel #{names[0]}", ephemeral=False))
        return incident, Reply(
            f"Declared {label(incident)} (SEV{severity}, {env_name}): channel #{names[0]} is being created and "
            f"{len(invited)} {'person is' if len(invited) == 1 else 'people are'} invited"
            + (f" (and user group{'s' if len(groups) > 1 else ''} {', '.join(groups)})" if groups else "") + "."
            + (f"\nSuspect deploy: {suspect_text}" if suspect_text else "\nNo deploy ran in this environment yet."))

    def render(self, incident: Incident, suspect: str | None = None) -> Reply:
        """The incident's message in its channel (updated when it resolves)."""
        state = "open 🔥" if incident.status == "open" else f"resolved ✅ {_hhmm(aware(incident.resolved_at))}"
        declarer = person(incident.declared_by, user_text(incident.declared_by_name or incident.declared_by))
        pairs = [("Severity", f"SEV{incident.severity}"), ("Environment", incident.environment),
                 ("Status", state), ("Declared", f"{_hhmm(aware(incident.declared_at))} by {declarer}")]
        if suspect or incident.suspect_run_id:
            pairs.append(("Suspect deploy", suspect or f"run `{incident.suspect_run_id}`"))
        if incident.alert_group_id or incident.alert_link:
            group = f"`{user_text(incident.alert_group_id)}`" if incident.alert_group_id else ""
            pairs.append(("Alert group", " ".join(x for x in (group, user_text(incident.alert_link or "")) if x)))
        ttr = time_to_recover(incident)
        if ttr is not None:
            pairs.append(("Time to recover", describe_duration(ttr)))
        body = [blocks.header(f"🚨 {label(incident)}: {incident.title}"), blocks.fields(pairs)]
        if incident.resolution:
            body.append(blocks.section(f"*Resolution:* {user_text(incident.resolution)}"))
        body.append(blocks.context("`/incident status TEXT` · `/incident note TEXT` · `/incident timeline` · "
                                   "`/incident resolve TEXT` in this channel"))
        text = f"{label(incident)} {user_text(incident.title)} — SEV{incident.severity} {incident.environment}, {state}"
        return Reply(text, blocks.message(*body), ephemeral=False)

    # --- finding one ------------------------------------------------------------------------------
    def find(self, session: Session, *, incident_id: int | None, channel_id: str | None,
             for_update: bool = False) -> Incident:
        if incident_id is None and channel_id:
            keys = session.execute(select(SlackMessage.key).where(
                SlackMessage.channel == channel_id, SlackMessage.key.startswith("incident:"),
                SlackMessage.key.endswith(":channel"))).scalars().all()
            if keys:
                incident_id = int(keys[0].split(":")[1])
        if incident_id is None:
            raise CommandError("this is not an incident channel", hint="Run it in the incident's channel, or add "
                               "`--id INC-N` (`/incident list` shows them).")
        stmt = select(Incident).where(Incident.id == incident_id)
        if for_update:
            stmt = stmt.with_for_update()
        found = session.execute(stmt).scalar_one_or_none()
        if found is None:
            raise NotFound(f"no incident INC-{incident_id}", hint="`/incident list` shows the open and recent ones.")
        return found

    def require(self, actor: Actor, role: Role, incident: Incident, what: str) -> None:
        self.authorizer.require(actor, role, incident.environment, f"{what} {label(incident)}")

    # --- status, notes, resolve -------------------------------------------------------------------
    def add_note(self, session: Session, incident: Incident, *, actor: Actor, kind: str, text: str,
                 correlation_id: str) -> Reply:
        """A note (`note`) or a status update (`status`, also posted in the incident's channel)."""
        text = text.strip()
        if not text:
            raise CommandError(f"the {kind} needs some text")
        session.add(IncidentNote(incident_id=incident.id, kind=kind, text=text, author_id=actor.user_id,
                                 author_name=actor.name, created_at=utcnow()))
        where = channel_ref(channel_key(incident.id))
        if kind == "status":
            self.outbox.post(session, where, Reply(f"📣 *Status update* ({label(incident)}) from {actor.mention}: "
                                                   f"{user_text(text)}", ephemeral=False))
        else:
            self.outbox.post(session, where, Reply(f"📝 Note from {actor.mention}: {user_text(text)}", ephemeral=False))
        self._audit(session, incident, actor, f"incident.{kind}", correlation_id, text=text)
        return Reply(f"{'Status update posted' if kind == 'status' else 'Note added'} to {label(incident)}.")

    def resolve(self, session: Session, incident: Incident, *, actor: Actor, resolution: str | None,
                correlation_id: str) -> Reply:
        if incident.status != "open":
            raise Conflict(f"{label(incident)} was already resolved {_hhmm(aware(incident.resolved_at))} by "
                           f"{user_text(incident.resolved_by_name or incident.resolved_by or '?')}")
        incident.status, incident.resolved_at = "resolved", utcnow()
        incident.resolved_by, incident.resolved_by_name = actor.user_id, actor.name
        incident.resolution = (resolution or "").strip() or None
        ttr = time_to_recover(incident) or 0.0
        took = describe_duration(ttr)
        text = (f"✅ {label(incident)} resolved by {actor.mention}; time to recover {took}"
                + (f". Resolution: {user_text(incident.resolution)}" if incident.resolution else "."))
        self.outbox.post(session, channel_ref(channel_key(incident.id)), Reply(text, ephemeral=False))
        self.outbox.update(session, message_key(incident.id), self.render(incident))
        alerts = self.config.environments[incident.environment].channels.incident
        if alerts:
            self.outbox.alert(session, alerts, Reply(f"{text} ({user_text(incident.title)})", ephemeral=False))
        self._audit(session, incident, actor, "incident.resolved", correlation_id, ttr_seconds=round(ttr, 3),
                    resolution=incident.resolution)
        return Reply(f"Resolved {label(incident)}: time to recover {took}.")

    # --- reading ----------------------------------------------------------------------------------
    def timeline(self, session: Session, incident: Incident) -> Reply:
        """Every audited action in the incident's environment since it began (until it was resolved),
        and its notes and status updates, in time order."""
        start = aware(incident.started_at) or utcnow()
        stmt = select(AuditRecord).where(AuditRecord.environment == incident.environment,
                                         AuditRecord.ts >= _iso(min(start, aware(incident.declared_at) or start)))
        end = aware(incident.resolved_at)
        if end is not None:
            stmt = stmt.where(AuditRecord.ts < _iso(end + timedelta(seconds=1)))
        entries: list[tuple[str, int, str]] = []
        for rec in session.execute(stmt.order_by(AuditRecord.seq)).scalars():
            if rec.action.startswith(_TIMELINE_SKIP):
                continue
            who = user_text(rec.actor_name or rec.actor_id)
            line = f"`{rec.ts[11:19]}` *{who}* `{user_text(rec.action)}` → {user_text(rec.outcome)}{_detail(rec.args)}"
            entries.append((rec.ts, rec.seq, line))
        notes = session.execute(select(IncidentNote).where(IncidentNote.incident_id == incident.id)
                                .order_by(IncidentNote.id)).scalars()
        for note in notes:
            at = aware(note.created_at) or start
            icon = "📣 status" if note.kind == "status" else "📝 note"
            who = user_text(note.author_name or note.author_id)
            entries.append((_iso(at), 0, f"`{_iso(at)[11:19]}` {icon} *{who}*: {user_text(note.text)}"))
        entries.sort(key=lambda e: (e[0], e[1]))
        lines = [e[2] for e in entries]
        sections, omitted = _fit_last(lines)
        head = (f"*Timeline of {label(incident)}* ({incident.environment}, from {_hhmm(start)}"
                + (f" to {_hhmm(end)}" if end else "") + f"): {len(lines)} entries")
        body = [blocks.section(head)] + [blocks.section("\n".join(s)) for s in sections]
        if omitted:
            body.insert(1, blocks.context(f"{omitted} earlier entries not shown: `/audit --env "
                                          f"{incident.environment} --since {_iso(start)[:19]}`"))
        if not lines:
            body.append(blocks.context("Nothing recorded yet."))
        text = head + "\n" + "\n".join(line for s in sections for line in s)
        return Reply(text, blocks.message(*body))

    def mttr(self, session: Session, envs: Sequence[str], days: int) -> Mttr:
        since = utcnow() - timedelta(days=days)
        rows = session.execute(select(Incident).where(Incident.status == "resolved", Incident.environment.in_(envs),
                                                      Incident.resolved_at >= since)).scalars().all()
        ttrs = [t for t in (time_to_recover(r) for r in rows) if t is not None]
        return Mttr(len(ttrs), sum(ttrs) / len(ttrs) if ttrs else None)

    def list(self, session: Session, envs: Sequence[str], days: int) -> Reply:
        since = utcnow() - timedelta(days=days)
        rows = session.execute(select(Incident).where(Incident.environment.in_(envs)).where(
            (Incident.status == "open") | (Incident.declared_at >= since)).order_by(Incident.id.desc())
            .limit(30)).scalars().all()
        now = utcnow()
        lines = []
        for inc in rows:
            what = f"{label(inc)} SEV{inc.severity} {inc.environment} — {user_text(inc.title)}"
            if inc.status == "open":
                lines.append(f"🔥 {what} — open for {describe_duration((now - aware(inc.started_at)).total_seconds())}"  # type: ignore[operator]
                             f" — #{inc.channel_name}")
            else:
                lines.append(f"✅ {what} — recovered in {describe_duration(time_to_recover(inc) or 0)}")
        overall = self.mttr(session, envs, days)
        per_env = [f"{e}: {describe_duration(m.mean_seconds)} ({m.resolved})" for e in envs
                   if (m := self.mttr(session, [e], days)).mean_seconds is not None]
        summary = overall.describe(days) + (f" · by environment: {', '.join(per_env)}" if len(per_env) > 1 else "")
        head = f"*Incidents* (open, and declared in the last {days} days): {len(rows)}"
        body = [blocks.section(head), blocks.section("\n".join(lines) or "None."), blocks.context(summary)]
        return Reply(head + "\n" + "\n".join(lines) + "\n" + summary, blocks.message(*body))

    def _audit(self, session: Session, incident: Incident, actor: Actor, action: str, correlation_id: str,
               **args: object) -> None:
        append(session, AuditEntry(actor_id=actor.user_id, actor_name=actor.name, channel=None,
                                   environment=incident.environment, action=action, outcome="ok",
                                   correlation_id=correlation_id,
                                   args={"incident": label(incident), **{k: v for k, v in args.items()
                                                                         if v is not None}}))


def _detail(raw_args: str) -> str:
    """What a timeline row is about, from its audit arguments: the run, the typed command, the item, the title."""
    try:
        args = json.loads(raw_args)
    except ValueError:
        return ""
    if not isinstance(args, dict):
        return ""
    parts = [f"run {args['run']}" if args.get("run") else "",
             f"{args.get('command', '')} {args['text']}".strip() if args.get("text") else "",
             f"item {args['item']}" if args.get("item") else "", str(args.get("title") or ""),
             f"step “{args['step']}”" if args.get("step") not in (None, "") else ""]
    detail = " · ".join(p for p in parts if p)[:200]
    return f" — {user_text(detail)}" if detail else ""


def _fit_last(lines: list[str]) -> tuple[list[list[str]], int]:
    """The newest lines that fit TIMELINE_SECTIONS sections, in order, and how many older ones were left out."""
    sections: list[list[str]] = [[]]
    size = 0
    kept = 0
    for line in reversed(lines):
        line = line if len(line) <= 500 else line[:499] + "…"
        if sections[0] and size + len(line) + 1 > blocks.MAX_SECTION:
            if len(sections) == TIMELINE_SECTIONS:
                break
            sections.insert(0, [])
            size = 0
        sections[0].insert(0, line)
        size += len(line) + 1
        kept += 1
    return [s for s in sections if s], len(lines) - kept
