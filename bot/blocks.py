"""Block Kit, built in this one module as plain dicts (no Slack SDK import: the core stays Slack-free).

Limits kept here: at most 50 blocks per message, 3,000 characters per section text. Text a person
typed goes through `user_text()` before it is put into any message.
"""

from __future__ import annotations

from typing import Any

from bot.core.redact import redact_text

MAX_BLOCKS = 50
MAX_SECTION = 3000

Block = dict[str, Any]


def user_text(text: str) -> str:
    """Text a person typed (a reason, a version, an argument quoted back), made safe to show in Slack:
    secrets redacted as in the audit log, then `&`, `<`, `>` escaped, so it can never become a mention
    (`<!channel>`), a disguised link (`<https://…|…>`) or any other markup in the bot's voice."""
    return redact_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = MAX_SECTION) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n… (truncated)"


def header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, 150), "emoji": True}}


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def section_with_button(text: str, element: dict[str, Any], *, block_id: str | None = None) -> Block:
    """A section with a button beside its text (a checklist item and its Tick / Untick)."""
    block = {**section(text), "accessory": element}
    if block_id:
        block["block_id"] = block_id[:255]
    return block


def fields(pairs: list[tuple[str, str]]) -> Block:
    return {"type": "section",
            "fields": [{"type": "mrkdwn", "text": _clip(f"*{k}*\n{v}", 2000)} for k, v in pairs[:10]]}


def context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text)}]}


def divider() -> Block:
    return {"type": "divider"}


def button(label: str, action_id: str, value: str, *, style: str | None = None,
           confirm: tuple[str, str] | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": label[:75]},
                               "action_id": action_id, "value": value}
    if style in ("primary", "danger"):
        element["style"] = style
    if confirm:
        element["confirm"] = {"title": {"type": "plain_text", "text": confirm[0][:100]},
                              "text": {"type": "mrkdwn", "text": confirm[1][:300]},
                              "confirm": {"type": "plain_text", "text": "Yes"},
                              "deny": {"type": "plain_text", "text": "Cancel"}}
    return element


def static_select(placeholder: str, action_id: str, options: list[tuple[str, str]]) -> dict[str, Any]:
    """A menu (`static_select`); each option is (label, value). Slack allows 100 options, 75 characters of
    label and 150 of value: a longer value is refused here rather than by Slack."""
    if not options or len(options) > 100:
        raise ValueError(f"a menu needs 1 to 100 options, not {len(options)}")
    for _label, value in options:
        if len(value) > 150:
            raise ValueError(f"menu option value is {len(value)} characters, Slack allows 150")
    return {"type": "static_select", "action_id": action_id,
            "placeholder": {"type": "plain_text", "text": placeholder[:150]},
            "options": [{"text": {"type": "plain_text", "text": label[:75]}, "value": value}
                        for label, value in options]}


def actions(*elements: dict[str, Any], block_id: str | None = None) -> Block:
    block: Block = {"type": "actions", "elements": list(elements)[:25]}
    if block_id:
        block["block_id"] = block_id
    return block


def message(*blocks: Block) -> list[Block]:
    out = [b for b in blocks if b]
    if len(out) > MAX_BLOCKS:
        out = out[: MAX_BLOCKS - 1] + [context(f"… {len(out) - MAX_BLOCKS + 1} more blocks not shown")]
    return out
