"""A forced deploy through a freeze (break-glass) puts the freeze back when the run ends and tells the
person who froze the environment (issue 6 item 10: before, the freeze was silently gone)."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from bot.core import locks
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    ROOT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
)


def test_forced_run_restores_the_freeze_and_tells_the_freezer(deployer: Deployer) -> None:
    deployer.command("/lock", "staging --reason 'quarter-end close' --hours 4", ALICE)
    _, run_id = deployer.deploy("v2.3 --env staging --canary --force", ROOT)
    with deployer.container.db.read() as session:
        during = locks.current(session, "staging")
    assert during is not None and during.kind == "run" and during.run_id == run_id
    deployer.tick(run_id)
    run = deployer.wait_state(run_id, timeout=60)
    assert run.state == "succeeded", run.outcome
    with deployer.container.db.read() as session:
        after = locks.current(session, "staging")
    assert after is not None and after.kind == "freeze" and after.held_by == ALICE
    assert after.reason == "quarter-end close"
    deployer.bot.settle()
    thread = "\n".join(str(m.get("text", "")) for m in deployer.fake.messages_in(run.channel))
    assert f"<@{ALICE}>: your freeze of staging was lifted for forced run `{run_id}` and is restored now" in thread
    assert [r["outcome"] for r in deployer.audit("lock.freeze_restored", run_id)] == ["ok"]
    assert "locked by <@U0ALICE01> for a freeze" in deployer.command("/deploy", "v2.4 --env staging", ALICE)
