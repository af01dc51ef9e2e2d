"""Block Kit as readable text, for the console (buttons shown with their labels)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(\|[^>]*)?>")
_USER = re.compile(r"<@([UW][A-Z0-9]+)(\|[^>]*)?>")
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")


def mrkdwn(text: str, user_name: Callable[[str], str | None] = lambda _u: None) -> str:
    text = _CHANNEL.sub(lambda m: f"#{m.group(1)}", text)
    text = _USER.sub(lambda m: "@" + (user_name(m.group(1)) or m.group(1)), text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return str(obj or "")


def menu_choices(menu: dict[str, Any]) -> list[dict[str, Any]]:
    """A `static_select`'s options as buttons the console can click: "Silence for…" + "2 h" → "Silence for 2 h"."""
    name = _text_of(menu.get("placeholder")).rstrip("…. ")
    return [{"type": "button", "text": {"type": "plain_text", "text": f"{name} {_text_of(o.get('text'))}"},
             "action_id": menu.get("action_id"), "value": o.get("value", "")} for o in menu.get("options") or []]


def buttons_of(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for block in blocks or []:
        if block.get("type") == "actions":
            for e in block.get("elements", []):
                if e.get("type") == "button":
                    out.append(e)
                elif e.get("type") == "static_select":
                    out += menu_choices(e)
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") == "button":
            out.append(accessory)
    return out


def render(text: str, blocks: list[dict[str, Any]] | None, user_name: Callable[[str], str | None] = lambda _u: None,
           indent: str = "  ") -> str:
    if not blocks:
        return "\n".join(indent + line for line in mrkdwn(text, user_name).splitlines())
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"== {_text_of(block.get('text'))} ==")
        elif kind == "section":
            if block.get("text"):
                lines += mrkdwn(_text_of(block["text"]), user_name).splitlines()
            for field in block.get("fields") or []:
                lines += mrkdwn(_text_of(field), user_name).replace("\n", ": ", 1).splitlines()
            if isinstance(block.get("accessory"), dict) and block["accessory"].get("type") == "button":
                lines.append(f"[ {_text_of(block['accessory'].get('text'))} ]")
        elif kind == "context":
            parts = [mrkdwn(_text_of(e), user_name) for e in block.get("elements") or []]
            lines += ("(" + " ".join(parts) + ")").splitlines()  # every line of a note indented alike
        elif kind == "divider":
            lines.append("-" * 40)
        elif kind == "actions":
            labels = [f"[ {_text_of(e.get('text'))} ]" if e.get("type") == "button" else
                      f"[ {_text_of(e.get('placeholder'))} ▾ "
                      + " · ".join(_text_of(o.get("text")) for o in e.get("options") or []) + " ]"
                      for e in block.get("elements") or [] if e.get("type") in ("button", "static_select")]
            if labels:
                lines.append("  ".join(labels))
        else:
            lines.append(f"<{kind} block>")
    return "\n".join(indent + line for line in lines)
