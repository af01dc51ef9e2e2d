"""Alertmanager's webhook payload (version 4) as strict pydantic models, and the notification's dedup key.

Unknown top-level fields are allowed (Alertmanager adds some, e.g. `truncatedAlerts`); the fields
the bot relies on are type-checked and bounded, so a malformed body is refused with a reason that
names the field instead of failing later.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Alertmanager writes this for "no end time yet" (a firing alert)
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_ALERTS = 2000  # per notification; Alertmanager's max_alerts is unlimited by default, 10,000 alerts are ~5 MB
Labels = dict[Annotated[str, Field(max_length=200)], Annotated[str, Field(max_length=4000)]]
Status = Literal["firing", "resolved"]


class MalformedNotification(ValueError):
    """The body is not an Alertmanager v4 notification; `reason` is machine-readable, `detail` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Alert(_Model):
    status: Status
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime = Field(ZERO_TIME, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL", max_length=4000)
    fingerprint: str = Field(..., min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_.:-]+$")

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "") or "(unnamed alert)"

    @property
    def ended(self) -> datetime | None:
        return None if self.ends_at <= ZERO_TIME else self.ends_at


class Notification(_Model):
    version: Literal["4"]
    group_key: str = Field(..., alias="groupKey", min_length=1, max_length=4000)
    status: Status
    receiver: str = Field("", max_length=500)
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL", max_length=2000)
    alerts: list[Alert] = Field(..., min_length=1, max_length=MAX_ALERTS)

    def dedup_key(self) -> str:
        """The same notification delivered again (a 5xx retry, the other member of an HA pair) has the
        same key: group key + every alert's fingerprint, status, startsAt and endsAt."""
        parts = sorted((a.fingerprint, a.status, a.starts_at.isoformat(), a.ends_at.isoformat()) for a in self.alerts)
        digest = hashlib.sha256(json.dumps([self.group_key, parts], separators=(",", ":")).encode()).hexdigest()
        return f"am:{digest}"

    def label(self, name: str) -> str | None:
        """A label of the group: its group labels, then the labels every alert shares, then the first alert's."""
        for source in (self.group_labels, self.common_labels, self.alerts[0].labels):
            if source.get(name):
                return source[name]
        return None


def parse_notification(body: bytes) -> Notification:
    """The body as a notification, or `MalformedNotification` naming the first problem."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise MalformedNotification("invalid_encoding", "the body is not UTF-8") from None
    except ValueError as exc:
        raise MalformedNotification("invalid_json", f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedNotification("invalid_payload", "the body must be a JSON object")
    if "version" in data and data["version"] != "4":
        raise MalformedNotification("unsupported_version", f"version {str(data['version'])[:20]!r}; only "
                                    "version 4 (Alertmanager 0.x) is understood")
    try:
        return Notification.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise MalformedNotification("invalid_payload", f"{where}: {first['msg']}{more}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")
