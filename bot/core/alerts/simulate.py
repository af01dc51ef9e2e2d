"""Realistic Alertmanager webhook payloads (version 4), for the console's `sim alert` and for tests.

The shape is what Alertmanager 0.25 sends: a group key built from the route's matchers and the
group labels, fingerprints as 16 hex digits of the labels' hash, `endsAt` the zero time while
firing. Fingerprints depend only on the labels, so resolving an alert sent earlier matches it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

ZERO = "0001-01-01T00:00:00Z"


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert(name: str, *, status: str = "firing", severity: str = "high", env: str | None = "staging",
          starts_at: datetime | None = None, ends_at: datetime | None = None, summary: str | None = None,
          extra_labels: dict[str, str] | None = None, generator_url: str = "http://prometheus.local:9090/graph",
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"alertname": name, "severity": severity, **({"env": env} if env else {}), **(extra_labels or {})}
    starts = starts_at or datetime.now(UTC)
    return {
        "status": status, "labels": labels,
        "annotations": {"summary": summary or f"{name} in {env or 'an unknown environment'}", **(annotations or {})},
        "startsAt": _ts(starts), "endsAt": _ts(ends_at) if status == "resolved" and ends_at else
        (_ts(datetime.now(UTC)) if status == "resolved" else ZERO),
        "generatorURL": generator_url, "fingerprint": fingerprint(labels),
    }


def notification(alerts: list[dict[str, Any]], *, group_labels: dict[str, str] | None = None,
                 receiver: str = "chatops", external_url: str = "http://alertmanager.local:9093",
                 runbook_url: str | None = None, dashboard: str | None = None) -> dict[str, Any]:
    """A notification of one group: `group_labels` default to the first alert's alertname (and env)."""
    first = alerts[0]["labels"]
    groups = group_labels if group_labels is not None else {
        k: first[k] for k in ("alertname", "env") if k in first}
    common = {k: v for k, v in first.items() if all(a["labels"].get(k) == v for a in alerts)}
    summaries = {a["annotations"].get("summary") for a in alerts}
    annotations: dict[str, str] = {"summary": summaries.pop()} if len(summaries) == 1 else {}
    if runbook_url:
        annotations["runbook_url"] = runbook_url
    if dashboard:
        annotations["dashboard"] = dashboard
    matchers = ", ".join(f'{k}="{v}"' for k, v in sorted(groups.items()))
    return {
        "version": "4", "groupKey": "{}/{}:{" + matchers + "}", "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver, "groupLabels": groups, "commonLabels": common, "commonAnnotations": annotations,
        "externalURL": external_url, "alerts": alerts,
    }
