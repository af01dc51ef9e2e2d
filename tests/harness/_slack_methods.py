"""Web API method implementations for :class:`tests.harness.slack_api.FakeSlack` (private mixin).

Every method takes the decoded request parameters and returns the JSON answer. They mutate the fake
workspace (messages, views, channel membership) and are always called with ``FakeSlack``'s lock held.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_TOKEN = "xoxb-test-token"
TEAM_ID = "T0TEST"
TEAM_DOMAIN = "chatops-test"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
BOT_NAME = "chatops"
DEFAULT_USERS: dict[str, str] = {"U0TEST": "tester"}
DEFAULT_CHANNELS: dict[str, str] = {"C0TEST": "general"}

#: Slack's rule for channel names: lower case letters, digits, hyphens, underscores; at most 80
_CHANNEL_NAME = re.compile(r"^[a-z0-9_-]{1,80}$")
_TS_BASE_MICROS = 1_700_000_000 * 1_000_000
_TS_STEP_MICROS = 100

Params = dict[str, Any]
Json = dict[str, Any]


class WebApiMethods:
    """The fake workspace state plus one handler per supported Web API method."""

    team_id: str
    bot_user_id: str
    bot_id: str
    users: dict[str, str]
    usergroups: dict[str, list[str]]
    channels: dict[str, str]
    channel_members: dict[str, list[str]]
    messages: dict[tuple[str, str], Json]
    ephemerals: list[Json]
    views: dict[str, Json]
    _ts_counter: Iterator[int]
    _handlers: dict[str, Callable[[Params], Json]]

    def _init_workspace(self) -> None:
        self._ts_counter = itertools.count(1)
        self._handlers = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "views.publish": self._views_publish,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.members": self._conversations_members,
            "conversations.join": self._conversations_join,
            "conversations.create": self._conversations_create,
            "conversations.invite": self._conversations_invite,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroup_users,
        }

    @property
    def supported_methods(self) -> list[str]:
        """Names of the Web API methods the fake implements."""
        return sorted(self._handlers)

    def _dispatch(self, method: str, params: Params) -> Json:
        handler = self._handlers.get(method)
        return handler(params) if handler else {"ok": False, "error": "unknown_method"}

    # ------------------------------------------------------------------ helpers
    def _next_ts(self) -> str:
        """Unique, strictly increasing Slack-style ts: ``1700000000.000100``, ``1700000000.000200``, ..."""
        micros = _TS_BASE_MICROS + next(self._ts_counter) * _TS_STEP_MICROS
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _resolve_channel(self, channel: str) -> str:
        name = channel.lstrip("#")
        return next((cid for cid, cname in self.channels.items() if cname == name), channel)

    def _channel_obj(self, cid: str) -> Json:
        members = self.channel_members.get(cid, [])
        return {
            "id": cid,
            "name": self.channels[cid],
            "is_channel": True,
            "is_private": False,
            "is_archived": False,
            "is_member": self.bot_user_id in members,
            "num_members": len(members),
        }

    def _user_obj(self, uid: str) -> Json:
        name = self.users[uid]
        return {
            "id": uid,
            "team_id": self.team_id,
            "name": name,
            "real_name": name,
            "deleted": False,
            "is_bot": False,
            "tz": "UTC",
            "profile": {"real_name": name, "display_name": name},
        }

    def _known_channel(self, p: Params) -> str | None:
        cid = self._resolve_channel(str(p.get("channel", "")))
        return cid if cid in self.channels else None

    # ------------------------------------------------------------------ methods
    def _auth_test(self, p: Params) -> Json:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_DOMAIN,
            "user": BOT_NAME,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, p: Params) -> Json:
        if not p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not any(p.get(k) for k in ("text", "blocks", "attachments")):
            return {"ok": False, "error": "no_text"}
        channel, ts = self._resolve_channel(str(p["channel"])), self._next_ts()
        message: Json = {
            "type": "message",
            "text": p.get("text", ""),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "ts": ts,
            "team": self.team_id,
        }
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if key in p:
                message[key] = p[key]
        self.messages[(channel, ts)] = {**message, "channel": channel}
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, p: Params) -> Json:
        channel, ts = self._resolve_channel(str(p.get("channel", ""))), str(p.get("ts", ""))
        stored = self.messages.get((channel, ts))
        if stored is None:
            return {"ok": False, "error": "message_not_found"}
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in p:
                stored[key] = p[key]
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        message = {k: v for k, v in stored.items() if k != "channel"}
        return {"ok": True, "channel": channel, "ts": ts, "text": stored.get("text", ""), "message": message}

    def _post_ephemeral(self, p: Params) -> Json:
        if not p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("user"):
            return {"ok": False, "error": "user_not_found"}
        ts = self._next_ts()
        self.ephemerals.append(
            {
                "channel": self._resolve_channel(str(p["channel"])),
                "user": p["user"],
                "text": p.get("text", ""),
                "blocks": p.get("blocks"),
                "message_ts": ts,
            }
        )
        return {"ok": True, "message_ts": ts}

    def _views_publish(self, p: Params) -> Json:
        view = p.get("view")
        if not p.get("user_id") or not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        published = {"id": f"V{len(self.views) + 1:08d}", "team_id": self.team_id, "type": "home", **view}
        self.views[str(p["user_id"])] = published
        return {"ok": True, "view": published}

    def _conversations_info(self, p: Params) -> Json:
        cid = self._known_channel(p)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": self._channel_obj(cid)}

    def _conversations_list(self, p: Params) -> Json:
        return {
            "ok": True,
            "channels": [self._channel_obj(cid) for cid in self.channels],
            "response_metadata": {"next_cursor": ""},
        }

    def _conversations_members(self, p: Params) -> Json:
        cid = self._known_channel(p)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        members = list(self.channel_members.get(cid, []))
        return {"ok": True, "members": members, "response_metadata": {"next_cursor": ""}}

    def _conversations_join(self, p: Params) -> Json:
        cid = self._known_channel(p)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        members = self.channel_members.setdefault(cid, [])
        if self.bot_user_id not in members:
            members.append(self.bot_user_id)
        return {"ok": True, "channel": self._channel_obj(cid)}

    def _users_info(self, p: Params) -> Json:
        uid = str(p.get("user", ""))
        if uid not in self.users:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": self._user_obj(uid)}

    def _usergroup_users(self, p: Params) -> Json:
        group = str(p.get("usergroup", ""))
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _conversations_create(self, p: Params) -> Json:
        name = str(p.get("name", ""))
        if not name:
            return {"ok": False, "error": "invalid_name_required"}
        if not _CHANNEL_NAME.match(name):
            return {"ok": False, "error": "invalid_name_specials" if len(name) <= 80 else "invalid_name_maxlength"}
        if name in self.channels.values():
            return {"ok": False, "error": "name_taken"}
        cid = f"C1NEW{len(self.channels) + 1:05d}"
        self.channels[cid] = name
        self.channel_members[cid] = [self.bot_user_id]  # the creator is a member
        return {"ok": True, "channel": {**self._channel_obj(cid), "creator": self.bot_user_id}}

    def _conversations_invite(self, p: Params) -> Json:
        cid = self._known_channel(p)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        members = self.channel_members.setdefault(cid, [])
        if self.bot_user_id not in members:
            return {"ok": False, "error": "not_in_channel"}
        users = [u for u in str(p.get("users", "")).split(",") if u]
        if not users:
            return {"ok": False, "error": "no_user"}
        force = str(p.get("force", "")).lower() in ("1", "true")
        unknown = [u for u in users if u not in self.users]
        if unknown and not force:
            return {"ok": False, "error": "user_not_found"}
        new = [u for u in users if u in self.users and u not in members]
        if not new and not unknown:
            return {"ok": False, "error": "already_in_channel"}
        members.extend(new)
        answer: Json = {"ok": True, "channel": self._channel_obj(cid)}
        if unknown:
            answer["errors"] = [{"user": u, "ok": False, "error": "user_not_found"} for u in unknown]
        return answer
