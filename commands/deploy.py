"""/deploy VERSION: the grammar and typed command (execution arrives with the deploy workflow)."""

from __future__ import annotations

from dataclasses import dataclass

from commands.grammar import CommandSpec, Flag, Positional, env_value, text_value, version_value


@dataclass(frozen=True)
class Deploy:
    version: str
    env: str | None = None
    canary: bool = False
    blue_green: bool = False
    dry_run: bool = False
    reason: str | None = None

    @property
    def strategy(self) -> str:
        return "canary" if self.canary else "blue-green" if self.blue_green else "rolling"


SPEC = CommandSpec(
    name="deploy",
    summary="plan a deployment of VERSION, approve it, run it by the runbook",
    target=Deploy,
    positionals=(Positional("version", version_value, "the release tag, e.g. v2.3"),),
    flags=(
        Flag("env", "target environment (default: the config's default_environment)", env_value, metavar="ENV"),
        Flag("canary", "shift traffic 10/25/50/75/100 % with analysis at each step"),
        Flag("blue-green", "deploy to the idle colour, then switch the Service"),
        Flag("dry-run", "post the plan only"),
        Flag("reason", "why (shown in the plan and the audit log)", text_value, metavar="TEXT"),
    ),
    exclusive=(("canary", "blue-green"),),
    examples=("/deploy v2.3 --canary", "/deploy v2.3 --env production --canary --reason \"fix fills\""),
)
