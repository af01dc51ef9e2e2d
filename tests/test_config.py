"""The YAML config: the example loads, and every problem is reported with its field path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Role, load_config, parse_config
from bot.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"


@pytest.fixture
def example_data() -> dict[str, Any]:
    """The example config as plain YAML data, safe to mutate."""
    return copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")))


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_example_config_loads() -> None:
    """chatops.example.yml is valid and has the documented people and environments."""
    config = load_config(EXAMPLE_CONFIG)
    assert list(config.environments) == ["staging", "production"]
    assert config.default_environment == "staging"
    assert config.people["alice"] == "U0ALICE01"
    assert config.environments["production"].approvals_required == 2
    assert config.environments["staging"].roles[Role.deployer] == ["alice"]


def test_example_production_tags_exclude_release_candidates() -> None:
    """Production's allowed_tags accept v2.3 and refuse v2.3-rc.1; staging accepts both."""
    config = load_config(EXAMPLE_CONFIG)
    prod, staging = config.environments["production"], config.environments["staging"]
    assert prod.tag_allowed("v2.3") and not prod.tag_allowed("v2.3-rc.1")
    assert staging.tag_allowed("v2.3-rc.1")


def test_name_and_id_lookups_are_inverse() -> None:
    """user_id_of and name_of map between config names and Slack ids; unknown names give None."""
    config = load_config(EXAMPLE_CONFIG)
    assert config.user_id_of("bob") == "U0BOB0002"
    assert config.name_of("U0BOB0002") == "bob"
    assert config.user_id_of("U0SOMEONE") == "U0SOMEONE"
    assert config.user_id_of("mallory") is None


def test_resolve_env_falls_back_to_default_environment() -> None:
    """No environment named means the config's default_environment."""
    config = load_config(EXAMPLE_CONFIG)
    resolved = config.resolve_env(None)
    assert resolved is not None and resolved[0] == "staging"
    assert config.resolve_env("moon") is None


def test_bad_channel_id_is_reported_at_its_path(example_data: dict[str, Any]) -> None:
    """A channel name instead of an id names environments.<env>.channels.deploy."""
    example_data["environments"]["staging"]["channels"]["deploy"] = "#staging-deploys"
    assert problems_of(example_data) == [
        "environments.staging.channels.deploy: '#staging-deploys' is not a Slack channel id (like C0123ABC)"]


def test_unknown_field_is_reported_at_its_path(example_data: dict[str, Any]) -> None:
    """A misspelt key is an unknown field at its full path."""
    example_data["environments"]["production"]["namespcae"] = "trading-prod"
    assert problems_of(example_data) == [
        "environments.production.namespcae: unknown field (did you mean 'namespace'?) (see docs/configuration.md)"]


def test_unknown_field_without_a_close_name_asks_to_check_spelling(example_data: dict[str, Any]) -> None:
    """An unknown key like no known field gets no guess, only the pointer to the docs."""
    example_data["environments"]["production"]["zzz"] = 1
    assert problems_of(example_data) == [
        "environments.production.zzz: unknown field (check the spelling; see docs/configuration.md)"]


def test_unknown_top_level_field_is_reported(example_data: dict[str, Any]) -> None:
    """An unknown top-level key is reported by its name."""
    example_data["peeple"] = {}
    assert [p.split(":")[0] for p in problems_of(example_data)] == ["peeple"]


def test_unknown_member_in_a_grant_is_reported_at_its_index(example_data: dict[str, Any]) -> None:
    """A grant to someone who is not a person, group, user id or subteam names the list index."""
    example_data["environments"]["production"]["roles"]["approver"] = ["group:release-approvers", "mallory"]
    problems = problems_of(example_data)
    assert len(problems) == 1
    assert problems[0].startswith("environments.production.roles.approver.1: 'mallory' is not a person")


def test_unknown_group_in_a_grant_is_reported(example_data: dict[str, Any]) -> None:
    """`group:NAME` must name a group defined under groups."""
    example_data["roles"]["auditor"] = ["root", "group:auditors"]
    assert problems_of(example_data)[0].startswith("roles.auditor.1: 'group:auditors'")


def test_group_member_must_be_a_person(example_data: dict[str, Any]) -> None:
    """Groups list people or user ids, not other groups."""
    example_data["groups"]["nested"] = ["group:release-approvers"]
    assert problems_of(example_data) == [
        "groups.nested.0: 'group:release-approvers' must be a person or a Slack user id"]


def test_bad_regex_in_allowed_tags_is_reported(example_data: dict[str, Any]) -> None:
    """An allowed_tags pattern that does not compile names the field and the regex error."""
    example_data["environments"]["staging"]["allowed_tags"] = r"^v(\d+$"
    problems = problems_of(example_data)
    assert len(problems) == 1
    assert problems[0].startswith("environments.staging.allowed_tags: not a valid regular expression: ")
    assert "missing )" in problems[0]


def test_duplicate_user_ids_are_reported(example_data: dict[str, Any]) -> None:
    """Two names with one Slack id are refused, naming both people."""
    example_data["people"]["eve"] = "U0ALICE01"
    assert problems_of(example_data) == ["people: eve: user id U0ALICE01 is already used by alice"]


def test_malformed_user_id_is_reported(example_data: dict[str, Any]) -> None:
    """A person whose id is not a Slack user id is named."""
    example_data["people"]["zed"] = "zed@example.com"
    assert problems_of(example_data) == [
        "people: zed: 'zed@example.com' is not a Slack user id (like U0123ABC)"]


def test_unknown_default_environment_is_reported(example_data: dict[str, Any]) -> None:
    """default_environment must be one of the environments."""
    example_data["default_environment"] = "qa"
    assert problems_of(example_data) == ["default_environment: 'qa' is not an environment (staging, production)"]


def test_unknown_role_is_reported(example_data: dict[str, Any]) -> None:
    """A role name that does not exist is reported under roles, listing the valid ones."""
    example_data["roles"]["superuser"] = ["root"]
    problems = problems_of(example_data)
    assert len(problems) == 1 and problems[0].startswith("roles.superuser")
    assert "is not a role" in problems[0] and "viewer, operator, deployer, approver, auditor, admin" in problems[0]
    assert "Input should be" not in problems[0] and "[key]" not in problems[0]


def test_too_many_approvals_is_reported(example_data: dict[str, Any]) -> None:
    """approvals_required is bounded and the bound is named at the field."""
    example_data["environments"]["production"]["approvals_required"] = 11
    problems = problems_of(example_data)
    assert len(problems) == 1 and problems[0].startswith("environments.production.approvals_required: ")


def test_every_field_problem_is_listed_at_once(example_data: dict[str, Any]) -> None:
    """Several field problems come back together, one line each."""
    example_data["environments"]["staging"]["channels"]["deploy"] = "nope"
    example_data["environments"]["production"]["prometheus"] = {"url": "prometheus:9090"}
    example_data["bogus"] = 1
    paths = sorted(p.split(":")[0] for p in problems_of(example_data))
    assert paths == ["bogus", "environments.production.prometheus.url",
                     "environments.staging.channels.deploy"]


@pytest.mark.parametrize("data", [None, [], "people: x", 42])
def test_not_a_mapping_is_reported(data: Any) -> None:
    """A document that is not a mapping (empty, list, scalar) is one top-level problem."""
    assert problems_of(data) == ["(top level): must be a mapping with people and environments"]


def test_empty_environments_are_reported(example_data: dict[str, Any]) -> None:
    """At least one environment is required."""
    example_data["environments"] = {}
    assert problems_of(example_data) == ["environments: at least one environment is needed"]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Writes YAML text to a file in tmp_path and returns its path."""
    def write(text: str) -> Path:
        path = tmp_path / "chatops.yml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_invalid_yaml_names_the_line(write_config: Callable[[str], Path]) -> None:
    """A YAML syntax error is one problem naming the file, line and column."""
    path = write_config("people:\n  alice: U0ALICE01\n environments: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: not valid YAML at line 3, column 2: this line's indentation does not "
                                   "line up with the lines above it (expected <block end>, but found "
                                   "'<block mapping start>')"]
    assert info.value.source == str(path)


def test_yaml_tab_is_explained(write_config: Callable[[str], Path]) -> None:
    """A tab in the indentation is named as such, with what to do."""
    path = write_config("people:\n  alice: U0ALICE01\n\tbob: U0BOB0002\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: not valid YAML at line 3, column 1: a tab character: "
                                             "indent with spaces")


FIVE_PROBLEMS = """\
people: {alice: U0ALICE01, bob: U0BOB0002}
roles:
  operater: [alice]
  admin: [alcie]
environments:
  staging:
    namespace: trading-staging
    image: ghcr.io/x/y
    channels: {deploy: C0STAGING1}
    approvals_requierd: 1
    canary: {interval_seconds: 1}
default_environment: stagin
"""


def test_every_problem_of_a_file_is_reported_at_once(write_config: Callable[[str], Path]) -> None:
    """Five problems of different kinds (types, unknown keys, references) come out in one run, in our words."""
    with pytest.raises(ConfigError) as info:
        load_config(write_config(FIVE_PROBLEMS))
    assert sorted(info.value.problems) == sorted([
        "roles.operater: 'operater' is not a role (did you mean 'operator'?); use one of: viewer, operator, "
        "deployer, approver, auditor, admin",
        "environments.staging.canary.interval_seconds: must be at least 5.0, not 1",
        "environments.staging.approvals_requierd: unknown field (did you mean 'approvals_required'?) "
        "(see docs/configuration.md)",
        "roles.admin.0: 'alcie' is not a person, a group:NAME, a Slack user id or a subteam:S... user group "
        "(did you mean 'alice'?)",
        "default_environment: 'stagin' is not an environment (did you mean 'staging'?)",
    ])


def test_misspelt_group_member_and_strategy_get_suggestions(example_data: dict[str, Any]) -> None:
    """Did-you-mean for a misspelt person in a group and for a value outside a fixed list."""
    example_data["groups"] = {"release": ["bbo"]}
    example_data["environments"]["staging"]["default_strategy"] = "canery"
    problems = problems_of(example_data)
    assert "groups.release.0: 'bbo' must be a person or a Slack user id (did you mean 'bob'?)" in problems
    assert ("environments.staging.default_strategy: 'canery' is not an allowed value (did you mean 'canary'?); "
            "use one of: rolling, canary, blue-green") in problems


def test_type_errors_are_worded_for_people(example_data: dict[str, Any]) -> None:
    """Wrong types say what is expected and what was found, not pydantic's wording."""
    example_data["environments"]["staging"]["approvals_required"] = "two"
    example_data["environments"]["staging"]["channels"] = "C0STAGING1"
    problems = problems_of(example_data)
    assert "environments.staging.approvals_required: must be a whole number, not text 'two'" in problems
    assert ("environments.staging.channels: must be a mapping (key: value lines), not text 'C0STAGING1'"
            in problems)
    assert not any("Input should" in p for p in problems)


def test_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    """A missing config file names the path and the CHATOPS_CONFIG variable."""
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: file not found")
    assert "CHATOPS_CONFIG" in info.value.problems[0]


def test_empty_file_is_not_a_mapping(write_config: Callable[[str], Path]) -> None:
    """An empty YAML file is reported as not being a mapping (not a crash on None)."""
    with pytest.raises(ConfigError) as info:
        load_config(write_config(""))
    assert info.value.problems == ["(top level): must be a mapping with people and environments"]


def test_loaded_file_problems_name_the_file_as_source(write_config: Callable[[str], Path]) -> None:
    """Validation problems from a file carry the file path as their source."""
    path = write_config("people: {}\nenvironments: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["environments: at least one environment is needed"]


def test_bad_analysis_query_is_reported_at_its_path(example_data: dict[str, Any]) -> None:
    """A canary check whose PromQL template uses an unknown placeholder is caught by config check."""
    example_data["environments"]["production"]["analysis"] = [
        {"name": "errors", "query": 'sum(rate(x{ns="{namspace}"}[1m]))', "op": ">", "threshold": 0.05}]
    assert any(p.startswith("environments.production") and "analysis.0.query" in p and "namspace" in p
               for p in problems_of(example_data))


def test_empty_analysis_is_reported(example_data: dict[str, Any]) -> None:
    """analysis: [] would leave a canary unjudged: refused."""
    example_data["environments"]["production"]["analysis"] = []
    assert any("at least one check" in p for p in problems_of(example_data))


def test_procedure_without_rollout_is_reported(example_data: dict[str, Any]) -> None:
    """A procedure that never rolls out would deploy nothing: refused."""
    example_data["environments"]["staging"]["procedure"] = [{"kind": "precheck"}]
    assert any("needs a step of kind rollout" in p for p in problems_of(example_data))


def test_kubernetes_without_a_way_to_connect_is_reported(example_data: dict[str, Any]) -> None:
    """kubernetes: {} names the environment and the three ways to connect."""
    example_data["environments"]["staging"]["kubernetes"] = {}
    assert any(p.startswith("environments.staging") and "in_cluster" in p for p in problems_of(example_data))
