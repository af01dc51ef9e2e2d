"""RBAC over the example config: who holds which role where, and how grants combine."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Config, Role, load_config, parse_config
from bot.core.model import Actor
from bot.core.rbac import Authorizer
from bot.errors import PermissionDenied

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"

ALICE, BOB, CAROL, DAVE, ERIN, ROOT = ("U0ALICE01", "U0BOB0002", "U0CAROL03", "U0DAVE004", "U0ERIN005",
                                       "U0ROOT006")
SUBTEAM = "S0ONCALL1"
ONCALL_MEMBER = "U0ONCALL7"  # not in the config's people: known only through the Slack user group


@pytest.fixture(scope="module")
def example_config() -> Config:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="module")
def authz(example_config: Config) -> Authorizer:
    """An Authorizer over the example config, with no Slack user groups."""
    return Authorizer(example_config)


@pytest.fixture
def config_with_subteam_grant() -> Config:
    """The example config plus `subteam:S0ONCALL1` as operator in production."""
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")))
    data["environments"]["production"]["roles"]["operator"].append(f"subteam:{SUBTEAM}")
    return parse_config(data)


def test_alice_deploys_to_staging_and_production(authz: Authorizer) -> None:
    """alice is a deployer in both environments."""
    assert authz.has(ALICE, Role.deployer, "staging")
    assert authz.has(ALICE, Role.deployer, "production")


def test_alice_approves_in_staging_only(authz: Authorizer) -> None:
    """alice may approve staging deploys but not production ones."""
    assert authz.has(ALICE, Role.approver, "staging")
    assert not authz.has(ALICE, Role.approver, "production")


@pytest.mark.parametrize("user", [BOB, CAROL])
def test_release_approvers_group_approves_production(authz: Authorizer, user: str) -> None:
    """bob and carol approve in production through group:release-approvers."""
    assert authz.has(user, Role.approver, "production")


@pytest.mark.parametrize("user", [BOB, CAROL])
def test_release_approvers_do_not_approve_staging(authz: Authorizer, user: str) -> None:
    """The production group grant does not leak into staging."""
    assert authz.roles_of(user, "staging") == set()


@pytest.mark.parametrize("env", [None, "staging", "production"])
def test_dave_is_only_a_viewer_everywhere(authz: Authorizer, env: str | None) -> None:
    """dave's global viewer grant gives exactly viewer, in every environment and globally."""
    assert authz.roles_of(DAVE, env) == {Role.viewer}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_erin_operates_both_environments(authz: Authorizer, env: str) -> None:
    """erin is an operator (and therefore viewer), nothing more."""
    assert authz.roles_of(ERIN, env) == {Role.operator, Role.viewer}


@pytest.mark.parametrize("env", [None, "staging", "production"])
def test_admin_implies_every_role(authz: Authorizer, env: str | None) -> None:
    """root, an admin, holds all roles everywhere."""
    assert authz.roles_of(ROOT, env) == set(Role)


def test_root_is_an_auditor_globally(authz: Authorizer) -> None:
    """root's auditor grant is valid for the whole log (environment None)."""
    assert authz.has(ROOT, Role.auditor, None)


def test_any_role_implies_viewer(authz: Authorizer) -> None:
    """A deployer-only grant (alice in production) still lets alice view production."""
    assert authz.roles_of(ALICE, "production") == {Role.deployer, Role.viewer}


def test_unknown_user_has_nothing(authz: Authorizer) -> None:
    """Someone not in the config holds no role anywhere and sees no environment."""
    assert all(authz.roles_of("U0NOBODY9", env) == set() for env in (None, "staging", "production"))
    assert authz.environments_visible_to("U0NOBODY9") == []
    assert not authz.has_anywhere("U0NOBODY9", Role.viewer)


def test_environment_grants_are_not_global(authz: Authorizer) -> None:
    """alice's per-environment grants give her nothing when no environment is named."""
    assert authz.roles_of(ALICE, None) == set()
    assert authz.has_anywhere(ALICE, Role.deployer)


def test_visible_environments_follow_viewer_role(authz: Authorizer) -> None:
    """bob sees only production; dave sees both, in config order."""
    assert authz.environments_visible_to(BOB) == ["production"]
    assert authz.environments_visible_to(DAVE) == ["staging", "production"]


def test_require_names_the_role_and_environment(authz: Authorizer) -> None:
    """A refusal names the actor, the action, the role needed and where."""
    with pytest.raises(PermissionDenied) as info:
        authz.require(Actor(ALICE, "alice"), Role.approver, "production", "approve deploys")
    assert info.value.message == "alice may not approve deploys"
    assert (info.value.role, info.value.environment) == ("approver", "production")
    assert "*approver* role in `production`" in info.value.user_text()


def test_require_passes_silently_when_granted(authz: Authorizer) -> None:
    """A permitted action raises nothing."""
    authz.require(Actor(BOB, "bob"), Role.approver, "production", "approve deploys")


def test_require_anywhere_refuses_without_any_grant(authz: Authorizer) -> None:
    """dave is not an operator anywhere, so require_anywhere refuses him."""
    with pytest.raises(PermissionDenied) as info:
        authz.require_anywhere(Actor(DAVE, "dave"), Role.operator, "restart bots")
    assert info.value.environment is None


def test_subteam_grant_uses_the_group_directory(config_with_subteam_grant: Config) -> None:
    """A member of a Slack user group granted as subteam:S... holds that role."""
    asked: list[str] = []

    def directory(subteam: str) -> frozenset[str]:
        asked.append(subteam)
        return frozenset({ONCALL_MEMBER}) if subteam == SUBTEAM else frozenset()

    authz = Authorizer(config_with_subteam_grant, directory)
    assert authz.roles_of(ONCALL_MEMBER, "production") == {Role.operator, Role.viewer}
    assert SUBTEAM in asked


def test_subteam_grant_without_membership_gives_nothing(config_with_subteam_grant: Config) -> None:
    """Without a directory (or outside the group) the subteam grant gives no role."""
    assert Authorizer(config_with_subteam_grant).roles_of(ONCALL_MEMBER, "production") == set()


def test_subteam_membership_change_is_seen_on_the_next_check(config_with_subteam_grant: Config) -> None:
    """The directory is asked on every check, so removing a member revokes the role."""
    members = {SUBTEAM: frozenset({ONCALL_MEMBER})}
    authz = Authorizer(config_with_subteam_grant, lambda s: members.get(s, frozenset()))
    assert authz.has(ONCALL_MEMBER, Role.operator, "production")
    members[SUBTEAM] = frozenset()
    assert not authz.has(ONCALL_MEMBER, Role.operator, "production")


def test_grant_by_raw_user_id_works() -> None:
    """A grant may list a bare Slack user id that is not among the config's people."""
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")))
    data["roles"]["auditor"].append("U0EXTERN8")
    authz = Authorizer(parse_config(data))
    assert authz.has("U0EXTERN8", Role.auditor, None)
