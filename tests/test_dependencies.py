"""pyproject.toml and the Dockerfile: every dependency is used and bounded; the base image is pinned or
the README says why not."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

#: what shows that a distribution is needed: the module the code imports, or (for one used indirectly)
#: a text the code contains
EVIDENCE: dict[str, tuple[str, ...]] = {
    "slack-bolt": ("slack_bolt",), "slack-sdk": ("slack_sdk",), "pydantic": ("pydantic",),
    "pydantic-settings": ("pydantic_settings",), "httpx": ("httpx",), "kubernetes": ("kubernetes",),
    "sqlalchemy": ("sqlalchemy",), "alembic": ("alembic",), "uvicorn": ("uvicorn",), "starlette": ("starlette",),
    "pyyaml": ("yaml",), "prometheus-client": ("prometheus_client",), "pytest": ("pytest",),
    "hypothesis": ("hypothesis",), "jsonschema": ("jsonschema",), "websockets": ("websockets",),
}
INDIRECT: dict[str, str] = {
    # Bolt's async Socket Mode handler is slack_sdk's aiohttp client
    "aiohttp": "slack_bolt.adapter.socket_mode.async_handler",
    # SQLAlchemy loads the driver from the URL's dialect
    "psycopg": "postgresql+psycopg",
}
TOOLS = {"ruff", "mypy", "types-pyyaml"}  # run as commands (mypy with its stubs), never imported
#: on the project's fixed design card, not imported yet: the next capabilities (OpenBao secrets, schedules)
DESIGN_CARD = {"hvac", "apscheduler"}


def _requirements() -> list[str]:
    project = PYPROJECT["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()


def _code() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for folder in ("bot", "commands", "integrations", "tests")
                     for p in sorted((REPO / folder).rglob("*.py")))


def test_every_dependency_has_an_upper_bound() -> None:
    """No requirement is open-ended: an incompatible major release cannot arrive unnoticed."""
    unbounded = [r for r in _requirements() if not re.search(r"<\s*\d", r)]
    assert not unbounded, f"requirements without an upper bound: {unbounded}"


def test_every_dependency_is_used() -> None:
    """Each distribution is imported by the code or the tests (or is needed indirectly, for a stated reason)."""
    code = _code()
    unused = []
    for requirement in _requirements():
        name = _name(requirement)
        if name in TOOLS or name in DESIGN_CARD:
            continue
        if name in INDIRECT:
            if INDIRECT[name] not in code:
                unused.append(name)
            continue
        assert name in EVIDENCE, f"{name}: add the module it provides to EVIDENCE (or remove it)"
        modules = EVIDENCE[name]
        if not any(re.search(rf"^\s*(import|from)\s+{re.escape(m)}\b", code, re.M) for m in modules):
            unused.append(name)
    assert not unused, f"dependencies nothing imports: {unused}"


def test_base_image_is_pinned_or_the_readme_says_why_not() -> None:
    """Both stages build on one base image; without a digest the README explains and says how to pin."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert froms and set(froms) == {"${PYTHON_IMAGE}"}, froms
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.M)
    if "@sha256:" not in default:
        readme = (REPO / "README.md").read_text(encoding="utf-8")
        assert "not pinned by digest" in readme
        assert "--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:" in readme
