"""Roles granted to Slack user groups (subteam:S...) are resolved through usergroups.users.list."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.bot_server import REPO, start_bot
from tests.harness.slack_api import FakeSlack

ERIN = "U0ERIN005"


def test_subteam_grant_gives_role(tmp_path: Path) -> None:
    """erin, a member of Slack user group S0SRE granted approver in production, is an approver there."""
    data = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    data["environments"]["production"]["roles"]["approver"].append("subteam:S0SRE")
    config = tmp_path / "chatops.yml"
    config.write_text(yaml.safe_dump(data))
    with FakeSlack(usergroups={"S0SRE": [ERIN]}) as fake:
        bot = start_bot(fake, f"sqlite:///{tmp_path}/g.db", config=config)
        try:
            call = fake.wait_for("usergroups.users.list", timeout=10)[0]
            assert call.params["usergroup"] == "S0SRE"
            text = ""
            for attempt in range(50):  # the directory is filled right after the call returns
                bot.command("/status", "--env production", ERIN, name=f"s{attempt}")
                text = fake.wait_for_response(f"s{attempt}")[0].body["text"]
                if "approver" in text:
                    break
            assert "Your roles: approver, operator, viewer" in text
            bot.command("/status", "--env staging", ERIN, name="staging")
            assert "approver" not in fake.wait_for_response("staging")[0].body["text"]
        finally:
            bot.stop()
