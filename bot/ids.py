"""Every action id a button can carry, in one place; button values are small typed JSON payloads."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

MAX_VALUE = 2000  # Slack's limit for a button value


class ActionId(StrEnum):
    audit_page = "audit.page"
    deploy_approve = "deploy.approve"
    deploy_abort = "deploy.abort"
    deploy_tick = "deploy.tick"
    #: App Home buttons, value {"env": name}: start /stop-trading or /rollback for that environment
    stop_trading = "stop_trading.start"
    rollback = "rollback.start"
    #: an alert group's root, value {"g": group id, "e": environment} (+ "m": minutes for a silence; "h": hours
    #: on roots posted before the menu); `alert_silence_for` is the *Silence for…* menu (the option's value)
    alert_ack = "alert.ack"
    alert_silence = "alert.silence"
    alert_silence_for = "alert.silence_for"
    alert_unsilence = "alert.unsilence"
    alert_rollback = "alert.rollback"
    alert_stop_trading = "alert.stop_trading"
    #: a checklist item's Tick / Untick (bot/core/checklists.py), value {"c": checklist id, "i": item, "d": 1|0}
    checklist_tick = "checklist.tick"


def encode_value(payload: dict[str, Any]) -> str:
    value = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(value) > MAX_VALUE:
        raise ValueError(f"button value is {len(value)} characters, Slack allows {MAX_VALUE}")
    return value


def decode_value(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        raise ValueError("button value is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("button value is not a JSON object")
    return data
