"""The plan message (issue 6 item 16): Approve asks for confirmation, and the plan says who may approve
and when the approval window ends."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
)


def test_approve_has_a_confirm_dialog_and_the_plan_names_the_window(deployer: Deployer) -> None:
    _, run_id = deployer.deploy("v2.3 --env production --canary")
    approve = deployer.button(run_id, "Approve")
    confirm = approve.get("confirm") or {}
    assert confirm["title"]["text"] == "Approve v2.3 → production?"
    assert "registry.example.com/trading-bot-swarm:v2.3" in confirm["text"]["text"]
    assert confirm["confirm"]["text"] == "Yes" and confirm["deny"]["text"] == "Cancel"
    text = deployer.message_text(run_id)
    assert "approvers other than the requester; window ends" in text and "UTC" in text
