"""The messages of an alert group: its root (updated in place) and its thread lines.

Every label and annotation value is escaped with `user_text` (a label must never make the bot say
`<!channel>`); links are only http(s), with `|`, `<`, `>` and `&` made harmless. The severity's
colour is the leading emoji: the outbox's transport sends text and Block Kit blocks, no attachments.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from bot import blocks as bk
from bot.blocks import user_text
from bot.core.alerts.payload import Alert
from bot.core.model import Reply
from bot.persistence.models import AlertGroup, AlertInstance
from bot.timeutil import aware

COLOUR = {"critical": ":red_circle:", "high": ":large_orange_circle:", "medium": ":large_yellow_circle:"}
RESOLVED = ":large_green_circle:"
MENTION = {"here": "<!here> ", "channel": "<!channel> ", "none": ""}
LISTED = 10  # alerts named in one root or thread line; the rest are counted


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m"


def link(url: str | None, label: str) -> str | None:
    """`<url|label>` for an http(s) URL, else None (a `javascript:` or odd URL is not shown)."""
    if not url or not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        return None
    safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>"


def silence_url(group: AlertGroup) -> str | None:
    """Alertmanager's "new silence" page, pre-filled with the group's labels as matchers."""
    if not group.external_url:
        return None
    labels = group.group_labels or group.common_labels
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{group.external_url.rstrip('/')}/#/silences/new?filter={quote('{' + matchers + '}', safe='')}"


def _distinct(labels: dict[str, str], grouped: dict[str, str]) -> str:
    """What tells one alert of the group from the others: its labels beyond the group's own."""
    own = [(k, v) for k, v in sorted(labels.items()) if k not in grouped and k not in ("alertname", "severity")]
    return " ".join(f"{user_text(k)}=`{user_text(v)[:80]}`" for k, v in own[:4])


def _alert_line(name: str, labels: dict[str, str], annotations: dict[str, str], group: AlertGroup) -> str:
    line = f"• *{user_text(name)}*"
    own = _distinct(labels, group.group_labels)
    if own:
        line += f" {own}"
    summary = annotations.get("summary") or annotations.get("description")
    if summary and summary != group.summary:
        line += f" — {user_text(summary)[:200]}"
    return line


def _since(group: AlertGroup, now: datetime) -> str:
    opened = aware(group.opened_at)
    assert opened is not None
    return f"since {opened:%Y-%m-%d %H:%M} UTC ({duration((now - opened).total_seconds())})"


def render_root(group: AlertGroup, firing: Sequence[AlertInstance], now: datetime,
                actions: list[dict[str, Any]]) -> Reply:
    """The group's root message, in its present state."""
    resolved = group.status == "resolved"
    colour = RESOLVED if resolved else COLOUR.get(group.severity, COLOUR["medium"])
    state = "RESOLVED" if resolved else f"{group.severity.upper()} · FIRING"
    title = f"{colour} {state}: {user_text(group.title)}"
    env = f"`{user_text(group.environment)}`" if group.environment else "no known environment"
    if resolved:
        opened, ended = aware(group.opened_at), aware(group.resolved_at) or now
        assert opened is not None
        counts = (f"*Resolved* after {duration((ended - opened).total_seconds())} "
                  f"(fired {opened:%H:%M}–{ended:%H:%M} UTC) · {group.resolved_count} resolved")
    else:
        counts = f"*{group.firing_count} firing*, {group.resolved_count} resolved · {_since(group, now)}"
    lines = [f"{MENTION.get(group.mention, '') if not resolved else ''}*{title}*"]
    if group.summary:
        lines.append(user_text(group.summary)[:1000])
    lines.append(f"{env} · {counts}")
    if group.reopened:
        lines.append(f"_reopened {group.reopened}×_")
    parts = [bk.section("\n".join(lines))]
    if firing and not resolved:
        shown = [_alert_line(i.alertname, i.labels, i.annotations, group) for i in firing[:LISTED]]
        if len(firing) > LISTED:
            shown.append(f"… and {len(firing) - LISTED} more")
        parts.append(bk.section("\n".join(shown)))
    if group.acked_by:
        parts.append(bk.context(f"Acknowledged by <@{group.acked_by}>"))
    notes = group.common_annotations
    links = [link(group.generator_url, "Source"), link(notes.get("runbook_url"), "Runbook"),
             link(notes.get("dashboard"), "Dashboard"), link(silence_url(group), "Silence in Alertmanager")]
    shown_links = [x for x in links if x]
    if shown_links:
        parts.append(bk.context(" · ".join(shown_links)))
    text = f"{MENTION.get(group.mention, '') if not resolved else ''}{state}: {user_text(group.title)}"
    return Reply(text, bk.message(*parts, *actions), ephemeral=False)


def render_changes(group: AlertGroup, firing: Sequence[Alert], resolved: Sequence[Alert], *,
                   reopened_after: float | None, all_resolved_after: float | None) -> Reply:
    """One thread line for what one notification changed (each alert named once, by fingerprint)."""
    lines: list[str] = []
    if reopened_after is not None:
        lines.append(f":repeat: *Firing again* {duration(reopened_after)} after it resolved")
    for emoji, word, alerts in ((":fire:", "firing", firing), (":white_check_mark:", "resolved", resolved)):
        if not alerts:
            continue
        lines.append(f"{emoji} *{len(alerts)} {word}*")
        lines += [_alert_line(a.name, a.labels, a.annotations, group) for a in alerts[:LISTED]]
        if len(alerts) > LISTED:
            lines.append(f"… and {len(alerts) - LISTED} more")
    if all_resolved_after is not None:
        lines.append(f"{RESOLVED} *All resolved* after {duration(all_resolved_after)}")
    text = "\n".join(lines)
    return Reply(text, [bk.section(text)], ephemeral=False)
