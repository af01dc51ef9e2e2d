"""manifest.yml: valid for Slack, and in step with the commands, events and Slack calls in the code.

The schema is Slack's published one, read from the read-only `shared/` folder that sits beside CI's
clone (`<repo>/../shared/slack-manifest-schema/`), or from the file `CHATOPS_MANIFEST_SCHEMA` names.
A clone without it skips the one test that needs it (the reason says where it looked); `.ci/run`
sets `CHATOPS_REQUIRE_MANIFEST_SCHEMA=1`, which turns that skip into a failure, so CI never skips it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from commands import registry

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifest.yml"
DEFAULT_SCHEMA = REPO.parent / "shared" / "slack-manifest-schema" / "manifest.schema.1.0.0.json"
SCHEMA = Path(os.environ.get("CHATOPS_MANIFEST_SCHEMA") or DEFAULT_SCHEMA)
REQUIRE_SCHEMA = "CHATOPS_REQUIRE_MANIFEST_SCHEMA"  # set (to anything but "" or "0") by .ci/run
SLACK_PATH = "/slack/events"  # the one route bot/http.py serves Slack on

# Each bot scope the manifest may request, and the code that needs it (a Slack Web API method as
# slack_sdk spells it). `commands` is needed by the slash commands themselves.
SCOPE_NEEDS = {
    "chat:write": ("chat_postMessage", "chat_update", "chat_postEphemeral"),
    "usergroups:read": ("usergroups_users_list",),
    "users:read": ("users_info",),
    "channels:manage": ("conversations_create", "conversations_invite"),
}
_EVENT_LISTENER = re.compile(r"""\.event\(\s*["']([a-z_]+)["']""")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def _source(*folders: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for f in folders for p in sorted((REPO / f).rglob("*.py")))


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    """manifest.yml parsed."""
    data = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "manifest.yml must be a mapping"
    return data


def load_schema(path: Path, required: bool) -> dict[str, Any]:
    """The schema at `path`; if it is absent, skip the test (a user's clone) or fail it (CI: `required`)."""
    if not path.is_file():
        where = (f"Slack manifest schema not found at {path} (it sits beside CI's clone in "
                 "../shared/slack-manifest-schema/; CHATOPS_MANIFEST_SCHEMA may name the file)")
        if required:
            pytest.fail(f"{where}; {REQUIRE_SCHEMA} is set, so this test must not be skipped")
        pytest.skip(f"{where}; skipped outside CI")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """Slack's manifest schema 1.0.0 from ../shared (or CHATOPS_MANIFEST_SCHEMA)."""
    return load_schema(SCHEMA, os.environ.get(REQUIRE_SCHEMA, "") not in ("", "0"))


@pytest.fixture(scope="module")
def listed_specs() -> dict[str, Any]:
    """Command name -> CommandSpec for every command the registry lists."""
    commands, _actions = registry.build()
    return {entry.spec.name: entry.spec for entry in commands.values() if entry.listed}


def _slash_commands(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Command name in the registry -> manifest entry (a Slack name like /swarm-status maps to status)."""
    commands, _actions = registry.build()
    by_slack_name = {e.spec.slack_name: name for name, e in commands.items() if e.spec.slack_name}
    items = manifest.get("features", {}).get("slash_commands", [])
    return {by_slack_name.get(item["command"].lstrip("/"), item["command"].lstrip("/")): item for item in items}


# Slack's built-in commands, which an app cannot register (its manifest is rejected as a whole)
SLACK_RESERVED = {"status", "me", "join", "away", "dnd", "shrug", "remind", "msg", "feed", "who", "collapse",
                  "expand", "leave", "open", "search", "topic", "mute", "pro", "shortcuts"}


def test_manifest_avoids_slack_reserved_names(manifest: dict[str, Any]) -> None:
    """No manifest command uses a name Slack reserves for its built-ins (e.g. /status)."""
    names = {item["command"].lstrip("/") for item in manifest["features"]["slash_commands"]}
    assert not names & SLACK_RESERVED, f"reserved by Slack: {sorted(names & SLACK_RESERVED)}"


def test_manifest_is_valid_for_slack(manifest: dict[str, Any], schema: dict[str, Any]) -> None:
    """manifest.yml validates against Slack's manifest schema 1.0.0 (every problem listed)."""
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in validator.iter_errors(manifest)]
    assert not problems, "manifest.yml is invalid:\n" + "\n".join(problems)


def test_manifest_is_major_version_1(manifest: dict[str, Any]) -> None:
    """The manifest declares major version 1, the schema it is checked against."""
    assert manifest["_metadata"]["major_version"] == 1


def test_manifest_has_exactly_the_listed_commands(manifest: dict[str, Any], listed_specs: dict[str, Any]) -> None:
    """Every listed command in the registry is in the manifest, and the manifest has no others."""
    in_manifest = set(_slash_commands(manifest))
    missing = sorted(set(listed_specs) - in_manifest)
    extra = sorted(in_manifest - set(listed_specs))
    assert not missing, f"commands missing from manifest.yml: {['/' + n for n in missing]}"
    assert not extra, f"manifest.yml has commands the registry does not list: {['/' + n for n in extra]}"


def test_commands_are_described_and_unescaped(manifest: dict[str, Any]) -> None:
    """Each slash command has a description, a usage hint and should_escape false."""
    for name, item in _slash_commands(manifest).items():
        assert item.get("description", "").strip(), f"/{name} has no description"
        assert item.get("usage_hint", "").strip(), f"/{name} has no usage_hint"
        assert item.get("should_escape") is False, f"/{name}: should_escape must be false"


def test_usage_hints_name_only_real_options(manifest: dict[str, Any], listed_specs: dict[str, Any]) -> None:
    """A usage hint offers no --option that its command does not accept."""
    for name, item in _slash_commands(manifest).items():
        spec = listed_specs.get(name)
        if spec is None:
            continue  # reported by test_manifest_has_exactly_the_listed_commands
        accepted = {flag.name for flag in spec.flags} | {"help"}
        unknown = sorted(set(_FLAG.findall(item.get("usage_hint", ""))) - accepted)
        assert not unknown, f"/{name} usage_hint offers options it does not accept: {unknown}"


def test_request_urls_all_point_at_slack_events(manifest: dict[str, Any]) -> None:
    """Commands, interactivity and events all use one HTTPS URL ending in /slack/events."""
    settings = manifest["settings"]
    urls = {item["url"] for item in _slash_commands(manifest).values()}
    assert settings["interactivity"]["is_enabled"] is True
    urls.add(settings["interactivity"]["request_url"])
    if "event_subscriptions" in settings:
        urls.add(settings["event_subscriptions"]["request_url"])
    assert len(urls) == 1, f"request URLs differ: {sorted(urls)}"
    url = urlsplit(urls.pop())
    assert url.scheme == "https" and url.path == SLACK_PATH, f"expected https://<host>{SLACK_PATH}"


def test_bot_events_match_the_bolt_listeners(manifest: dict[str, Any]) -> None:
    """The manifest subscribes to exactly the events bot/slack/ listens to."""
    listened = set(_EVENT_LISTENER.findall(_source("bot/slack")))
    subscribed = set(manifest["settings"].get("event_subscriptions", {}).get("bot_events", []))
    assert subscribed == listened, f"bot_events {sorted(subscribed)} but listeners for {sorted(listened)}"
    home_tab = manifest["features"].get("app_home", {}).get("home_tab_enabled", False)
    assert home_tab == ("app_home_opened" in listened), "home_tab_enabled must follow the app_home_opened listener"


def test_every_bot_scope_is_used_by_the_code(manifest: dict[str, Any]) -> None:
    """Least privilege: each requested bot scope is needed by a Slack call the code makes."""
    code = _source("bot", "commands", "integrations")
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert "commands" in scopes
    for scope in scopes:
        if scope == "commands":
            continue
        assert scope in SCOPE_NEEDS, f"{scope}: unknown scope; add the call that needs it to SCOPE_NEEDS"
        assert any(call in code for call in SCOPE_NEEDS[scope]), f"{scope}: no code calls {SCOPE_NEEDS[scope]}"


def test_no_scope_the_code_needs_is_missing(manifest: dict[str, Any]) -> None:
    """Every Slack call in the code that needs a scope has that scope in the manifest."""
    code = _source("bot", "commands", "integrations")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    needed = {scope for scope, calls in SCOPE_NEEDS.items() if any(call in code for call in calls)}
    assert needed <= scopes, f"scopes missing from manifest.yml: {sorted(needed - scopes)}"


def test_socket_mode_is_off_by_default(manifest: dict[str, Any]) -> None:
    """The shipped manifest is for HTTP mode (README explains switching to Socket Mode)."""
    assert manifest["settings"]["socket_mode_enabled"] is False


# --- the schema's absence: skipped in a user's clone, a failure in CI ------------------------------------------
def _run_schema_test(tmp_path: Path, **env: str) -> Any:
    """Run test_manifest_is_valid_for_slack in a child pytest with CHATOPS_MANIFEST_SCHEMA pointing nowhere."""
    import subprocess
    import sys

    child_env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_SCHEMA, "CHATOPS_MANIFEST_SCHEMA")}
    child_env.update(CHATOPS_MANIFEST_SCHEMA=str(tmp_path / "absent" / "manifest.schema.1.0.0.json"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q",
         f"{Path(__file__).resolve()}::test_manifest_is_valid_for_slack"],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=120)


def test_missing_schema_skips_with_the_reason_in_a_users_clone(tmp_path: Path) -> None:
    """Without the schema and outside CI the test is skipped (exit 0), saying where the schema was looked for."""
    result = _run_schema_test(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert f"Slack manifest schema not found at {tmp_path / 'absent'}" in result.stdout
    assert "skipped outside CI" in result.stdout


def test_missing_schema_fails_when_ci_requires_it(tmp_path: Path) -> None:
    """With CHATOPS_REQUIRE_MANIFEST_SCHEMA=1 (as .ci/run sets it) the missing schema is a failure."""
    result = _run_schema_test(tmp_path, CHATOPS_REQUIRE_MANIFEST_SCHEMA="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout or "1 failed" in result.stdout
    assert "CHATOPS_REQUIRE_MANIFEST_SCHEMA is set, so this test must not be skipped" in result.stdout


def test_ci_run_refuses_to_start_without_the_schema(tmp_path: Path) -> None:
    """.ci/run stops at once, before the demo and the suite, when the schema is not there."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != REQUIRE_SCHEMA}
    env["CHATOPS_MANIFEST_SCHEMA"] = str(tmp_path / "absent.json")
    result = subprocess.run([str(REPO / ".ci" / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert f"ci: Slack manifest schema not found at {tmp_path / 'absent.json'}" in result.stderr
    assert "demo" not in result.stdout


def test_ci_run_makes_the_schema_required() -> None:
    """.ci/run exports CHATOPS_REQUIRE_MANIFEST_SCHEMA=1 before it runs the suite."""
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    export = script.index("export CHATOPS_REQUIRE_MANIFEST_SCHEMA=1")
    assert export < script.index("scripts/test")
