"""Tickable checklists (Slack-free core): items kept in the database, one message re-rendered on every tick.

An owner (an incident, a finished rollback) calls `create()` in its own transaction: the items are
stored and the message is posted through the outbox under `message_key(id)`. A click on an item's
Tick / Untick button becomes `tick()`: the checklist row is locked, the clicker's role checked, the
item records who and when (or is cleared), the change is audited and the message updated — all in
the click's one transaction, so a tick survives restarts and is never half-recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot import blocks
from bot.blocks import user_text
from bot.config import Role
from bot.core.model import Actor, Reply
from bot.core.rbac import Authorizer
from bot.errors import NotFound
from bot.ids import ActionId, encode_value
from bot.outbox import Outbox
from bot.persistence.audit import AuditEntry, append
from bot.persistence.models import Checklist, ChecklistItem
from bot.timeutil import aware, utcnow

#: runbook 8.3, "Post-Rollback Actions" — after a rollback, and for every incident
RUNBOOK_POST_ROLLBACK: tuple[str, ...] = (
    "Document rollback reason and timeline",
    "Conduct incident retrospective",
    "Update rollback procedures based on learnings",
    "Create bug tickets for issues found",
    "Communicate status to stakeholders",
)
MAX_ITEMS = 40  # one section per item, within Slack's 50 blocks per message
MAX_ITEM_TEXT = 300


def message_key(checklist_id: str) -> str:
    """The outbox key of a checklist's message."""
    return f"checklist:{checklist_id}"


@dataclass(frozen=True)
class ItemView:
    idx: int
    text: str
    done_by: str | None
    done_by_name: str | None
    done_at: datetime | None

    @property
    def done(self) -> bool:
        return self.done_at is not None


def _view(item: ChecklistItem) -> ItemView:
    return ItemView(item.idx, item.text, item.done_by, item.done_by_name, aware(item.done_at))


def items_of(session: Session, checklist_id: str) -> list[ItemView]:
    rows = session.execute(select(ChecklistItem).where(ChecklistItem.checklist_id == checklist_id)
                           .order_by(ChecklistItem.idx)).scalars()
    return [_view(r) for r in rows]


def load(session: Session, checklist_id: str, *, for_update: bool = False) -> Checklist:
    stmt = select(Checklist).where(Checklist.id == checklist_id)
    if for_update:
        stmt = stmt.with_for_update()
    found = session.execute(stmt).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no checklist {user_text(checklist_id[:64])!r}", hint="It may have been removed; run the "
                       "command that posted it again.")
    return found


def render(checklist: Checklist, items: Sequence[ItemView]) -> Reply:
    """The checklist's message: one section per item with its Tick / Untick button, who ticked it and when."""
    done = sum(1 for i in items if i.done)
    body: list[blocks.Block] = [blocks.section(f"*{user_text(checklist.title)}*")]
    lines = []
    for item in items:
        value = encode_value({"c": checklist.id, "e": checklist.environment, "i": item.idx, "d": 0 if item.done else 1})
        if item.done:
            who = user_text(item.done_by_name or item.done_by or "?")
            when = item.done_at.strftime("%Y-%m-%d %H:%M UTC") if item.done_at else "?"
            text = f"☑ ~{user_text(item.text)}~ — {who}, {when}"
            button = blocks.button(f"Untick {item.idx + 1}", ActionId.checklist_tick, value)
        else:
            text = f"☐ {user_text(item.text)}"
            button = blocks.button(f"Tick {item.idx + 1}", ActionId.checklist_tick, value, style="primary")
        lines.append(text)
        body.append(blocks.section_with_button(text, button, block_id=f"cl:{checklist.id}:{item.idx}"))
    summary = f"{done} of {len(items)} done" + (" — complete ✅" if items and done == len(items) else "")
    body.append(blocks.context(summary))
    text = f"{checklist.title} ({summary})\n" + "\n".join(lines)
    return Reply(text, blocks.message(*body), ephemeral=False)


def create(session: Session, outbox: Outbox, *, checklist_id: str, title: str, items: Sequence[str],
           environment: str, channel: str, correlation_id: str, role: Role = Role.viewer,
           actor: Actor | None = None, thread_key: str | None = None) -> Checklist:
    """Store the checklist and post it (in `channel`, or in the thread of `thread_key`). Creating one that
    exists already changes nothing (a repeated owner step posts it once)."""
    existing = session.get(Checklist, checklist_id)
    if existing is not None:
        return existing
    if not items or len(items) > MAX_ITEMS:
        raise ValueError(f"a checklist has 1 to {MAX_ITEMS} items")
    checklist = Checklist(id=checklist_id, title=title[:200], environment=environment, role=role.value,
                          message_key=message_key(checklist_id), created_at=utcnow(), version_no=1)
    session.add(checklist)
    for idx, text in enumerate(items):
        session.add(ChecklistItem(checklist_id=checklist_id, idx=idx, text=text[:MAX_ITEM_TEXT]))
    session.flush()
    append(session, AuditEntry(actor_id=actor.user_id if actor else "bot",
                               actor_name=actor.name if actor else "swarm-chatops", channel=channel,
                               environment=environment, action="checklist.created", outcome="ok",
                               correlation_id=correlation_id,
                               args={"checklist": checklist_id, "title": title, "items": len(items)}))
    outbox.post(session, channel, render(checklist, items_of(session, checklist_id)),
                key=checklist.message_key, thread_key=thread_key)
    return checklist


def tick(session: Session, outbox: Outbox, authorizer: Authorizer, *, checklist_id: str, idx: int, done: bool,
         actor: Actor, channel: str | None, correlation_id: str, environment: str | None = None) -> Reply:
    """Tick (or, `done` False, untick) one item as `actor`: role checked, recorded, audited, message updated.
    `environment` is what the button claimed: it must be the checklist's."""
    checklist = load(session, checklist_id, for_update=True)
    if environment is not None and environment != checklist.environment:
        raise NotFound(f"no checklist {user_text(checklist_id[:64])!r} in {user_text(environment)}")
    authorizer.require(actor, Role(checklist.role), checklist.environment,
                       f"tick items of “{user_text(checklist.title)}”")
    item = session.get(ChecklistItem, (checklist_id, idx))
    if item is None:
        raise NotFound(f"the checklist has no item {idx + 1}")
    label = user_text(item.text)
    if done and item.done_at is not None:
        who = user_text(item.done_by_name or item.done_by or "?")
        return Reply(f"“{label}” was already ticked by {who}.")
    if not done and item.done_at is None:
        return Reply(f"“{label}” is not ticked.")
    before = item.done_by
    if done:
        item.done_by, item.done_by_name, item.done_at = actor.user_id, actor.name, utcnow()
    else:
        item.done_by = item.done_by_name = None
        item.done_at = None
    checklist.version_no += 1
    session.flush()
    append(session, AuditEntry(actor_id=actor.user_id, actor_name=actor.name, channel=channel,
                               environment=checklist.environment,
                               action="checklist.tick" if done else "checklist.untick", outcome="ok",
                               correlation_id=correlation_id,
                               args={"checklist": checklist_id, "item": idx + 1, "text": item.text,
                                     **({"was_ticked_by": before} if before else {})}))
    outbox.update(session, checklist.message_key, render(checklist, items_of(session, checklist_id)))
    return Reply(f"{'Ticked' if done else 'Unticked'} “{label}”.")
