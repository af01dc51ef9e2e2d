"""Role-based access: who holds which role in which environment, from the YAML config.

Grants come from `roles:` (every environment) and `environments.<env>.roles:`; a member is a
person's name, a Slack user id, `group:<name>` (defined in the config) or `subteam:<S...>`
(a Slack user group, resolved through `GroupDirectory`). `admin` implies every role and any
role implies `viewer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.config import Config, Role
from bot.core.model import Actor
from bot.errors import PermissionDenied

# subteam id -> member user ids; kept fresh by a background refresher (no network on checks)
GroupDirectory = Callable[[str], frozenset[str]]


def _no_groups(_subteam: str) -> frozenset[str]:
    return frozenset()


class Authorizer:
    def __init__(self, config: Config, groups: GroupDirectory = _no_groups) -> None:
        self.config = config
        self.groups = groups

    def _matches(self, user_id: str, members: Iterable[str]) -> bool:
        for member in members:
            if member.startswith("group:"):
                if self._matches(user_id, self.config.groups.get(member[6:], ())):
                    return True
            elif member.startswith("subteam:"):
                if user_id in self.groups(member[8:]):
                    return True
            elif self.config.user_id_of(member) == user_id:
                return True
        return False

    def roles_of(self, user_id: str, environment: str | None) -> set[Role]:
        """Roles held in `environment` (None: roles granted for every environment only)."""
        held = {role for role, members in self.config.roles.items() if self._matches(user_id, members)}
        env = self.config.environments.get(environment) if environment else None
        if env is not None:
            held |= {role for role, members in env.roles.items() if self._matches(user_id, members)}
        if Role.admin in held:
            return set(Role)
        if held:
            held.add(Role.viewer)
        return held

    def has(self, user_id: str, role: Role, environment: str | None) -> bool:
        return role in self.roles_of(user_id, environment)

    def has_anywhere(self, user_id: str, role: Role) -> bool:
        return any(self.has(user_id, role, env) for env in self.config.environments) or self.has(
            user_id, role, None
        )

    def require(self, actor: Actor, role: Role, environment: str | None, action: str) -> None:
        if not self.has(actor.user_id, role, environment):
            raise PermissionDenied(f"{actor.label} may not {action}", role=role.value, environment=environment)

    def require_anywhere(self, actor: Actor, role: Role, action: str) -> None:
        if not self.has_anywhere(actor.user_id, role):
            raise PermissionDenied(f"{actor.label} may not {action}", role=role.value, environment=None)

    def environments_visible_to(self, user_id: str) -> list[str]:
        return [env for env in self.config.environments if self.has(user_id, Role.viewer, env)]
