"""Silencing an alert group in Alertmanager from its root: the durations offered, and the claim that keeps
the network call out of the click's transaction (issue 8 section 5; Slack-free).

A Silence click (a button or the *Silence for…* menu) is three steps:

1. **claim**, in the click's transaction: the group is locked and, unless it is silenced or being silenced,
   marked `pending` (`silence_id = "pending:<token>:<minutes>"`, `silenced_by` the clicker,
   `silenced_until` the planned end). A second click finds the claim and is refused (a double click never
   creates two silences);
2. **call**, after that transaction committed (no database lock is held): `POST /api/v2/silences`, its
   comment carrying the claim's marker `[swarm-chatops <token>]`;
3. **record**, in a second short transaction: the silence's id (or, when Alertmanager failed, the claim is
   released), the audit record, the thread line, the root's update and the clicker's answer.

If the process dies between 1 and 3, the claim stays. Once it is older than `STALE_CLAIM`, the next
Silence click takes it over with the same token and first asks Alertmanager for a silence on the group's
matchers whose comment carries the marker: one that exists (the crash came after the call) is recorded
as it is, otherwise a new one is created. Unsilence is the same shape (`expiring:<id>` while Alertmanager
is asked); expiring twice is harmless, so it needs no takeover rule.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from bot.errors import CommandError
from bot.persistence.models import AlertGroup
from bot.timeutil import aware

#: the *Silence for…* menu: (minutes, label), 15 minutes to 7 days (Grafana OnCall's menu is the precedent)
SILENCE_CHOICES: tuple[tuple[int, str], ...] = (
    (15, "15 min"), (30, "30 min"), (60, "1 h"), (120, "2 h"), (240, "4 h"), (480, "8 h"), (720, "12 h"),
    (1440, "1 day"), (2880, "2 days"), (4320, "3 days"), (10080, "7 days"))
ALLOWED_MINUTES = frozenset(m for m, _ in SILENCE_CHOICES)
#: the button beside the menu
QUICK_MINUTES = 60
PENDING = "pending:"
EXPIRING = "expiring:"
#: a claim older than this was left by a process that died mid-way (the client's timeout is 5 s)
STALE_CLAIM = timedelta(seconds=60)


class SilenceApi(Protocol):
    """An environment's Alertmanager silences (`integrations.alertmanager.AlertmanagerClient`)."""

    def silence_for(self, duration: timedelta, labels: dict[str, str], *, created_by: str, comment: str) -> str: ...

    def find_silence(self, labels: dict[str, str], marker: str) -> tuple[str, datetime] | None: ...

    def delete_silence(self, silence_id: str) -> None: ...


def label_of(minutes: int) -> str:
    return next((text for m, text in SILENCE_CHOICES if m == minutes), f"{minutes} min")


def minutes_of(value: dict[str, Any]) -> int:
    """The duration a Silence click asks for, checked against what the root offers: `m` (minutes, one of
    the menu's), or `h` (1 or 4, the hour buttons of roots posted before the menu). Anything else — a
    forged or altered value — is a `CommandError` (the dispatcher audits it as a usage error)."""
    if "m" in value:
        minutes = value["m"]
    elif "h" in value and value["h"] in (1, 4) and not isinstance(value["h"], bool):
        minutes = value["h"] * 60
    else:
        raise CommandError("this Silence button names no duration")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes not in ALLOWED_MINUTES:
        raise CommandError(f"{str(minutes)[:20]!r} is not one of the offered silence durations "
                           f"({', '.join(label for _, label in SILENCE_CHOICES)})")
    return int(minutes)


@dataclass(frozen=True)
class Claim:
    """A group's silence state as its `silence_id` column holds it."""

    kind: str  # none | pending | expiring | active
    token: str = ""
    minutes: int = 0
    silence_id: str = ""

    def stale(self, grp: AlertGroup, now: datetime) -> bool:
        """A pending claim whose process presumably died (its planned end minus its length = when it was made)."""
        until = aware(grp.silenced_until)
        return self.kind == "pending" and (until is None
                                           or until - timedelta(minutes=self.minutes) + STALE_CLAIM < now)


def claim_of(grp: AlertGroup) -> Claim:
    raw = grp.silence_id or ""
    if not raw:
        return Claim("none")
    if raw.startswith(PENDING):
        token, _, minutes = raw[len(PENDING):].partition(":")
        return Claim("pending", token=token, minutes=int(minutes) if minutes.isdigit() else QUICK_MINUTES)
    if raw.startswith(EXPIRING):
        return Claim("expiring", silence_id=raw[len(EXPIRING):])
    return Claim("active", silence_id=raw)


def pending_id(token: str, minutes: int) -> str:
    return f"{PENDING}{token}:{minutes}"


def new_token() -> str:
    return secrets.token_hex(6)


def marker(token: str) -> str:
    """What a silence's comment carries so that it can be found again after a crash."""
    return f"[swarm-chatops {token}]"


def silenced(grp: AlertGroup, now: datetime) -> bool:
    """Whether the root should say *silenced* (a recorded silence that has not ended)."""
    until = aware(grp.silenced_until)
    return claim_of(grp).kind in ("active", "expiring") and until is not None and until > now
