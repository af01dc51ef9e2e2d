"""One dependency direction: the core, commands and persistence import no Slack SDK."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLACK_PACKAGES = ("slack_bolt", "slack_sdk")
CORE_PACKAGES = ("bot.core", "commands", "bot.persistence")
CORE_MODULES = ("bot.outbox", "bot.tasks", "bot.blocks")

PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {"slack_bolt", "slack_sdk"})))
"""


def modules_under(package: str) -> list[str]:
    """The package and every importable module below it, found on disk (not from a hand-kept list)."""
    path = REPO.joinpath(*package.split("."))
    found = [package]
    for info in pkgutil.walk_packages([str(path)], prefix=package + "."):
        found.append(info.name)
    return found


def core_modules() -> list[str]:
    return [m for pkg in CORE_PACKAGES for m in modules_under(pkg)] + list(CORE_MODULES)


def slack_modules_loaded_by(modules: list[str]) -> list[str]:
    """Import `modules` in a fresh interpreter and return the Slack SDK modules that got loaded."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_discovery_finds_the_core_modules() -> None:
    """The module walk sees the modules this test is meant to guard."""
    found = set(core_modules())
    assert {"commands.dispatch", "bot.core.rbac", "bot.core.redact", "commands.grammar", "commands.audit",
            "commands.registry", "bot.persistence.audit", "bot.persistence.db", "bot.outbox"} <= found


def test_core_is_slack_free() -> None:
    """Importing every core, commands and persistence module, outbox, tasks and blocks loads no Slack SDK."""
    assert slack_modules_loaded_by(core_modules()) == []


@pytest.mark.parametrize("module", ["integrations.slack_web", "bot.slack.app"])
def test_probe_detects_slack_imports(module: str) -> None:
    """The probe does see Slack when a module that uses it is imported (so the check above can fail)."""
    loaded = slack_modules_loaded_by([module])
    assert any(name.startswith(SLACK_PACKAGES) for name in loaded)


def test_core_does_not_import_front_ends_or_commands() -> None:
    """bot.core depends on nothing above it: no commands/, no Slack adapter, no console, no integrations."""
    import ast

    offenders = []
    for path in (REPO / "bot" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in ("commands", "integrations") or name.startswith(
                        ("bot.slack", "bot.console", "bot.http", "bot.container", "bot.cli")):
                    offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []
