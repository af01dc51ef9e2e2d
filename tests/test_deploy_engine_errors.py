"""The engine's safety net: a run on which the engine itself keeps failing ends as failed, loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.container import Container
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import NAMES, fast_sims, start_deploy_bot, write_config


def broken_rollback_plan(_run: Any, _steps: Any) -> list[dict[str, Any]]:
    raise RuntimeError("simulated engine bug")


def with_broken_rollback(container: Container) -> Container:
    container.core.runs.registry.get("deploy").compensation = broken_rollback_plan
    container.executor.max_engine_errors = 3
    return fast_sims(container)


def test_engine_gives_up_after_repeated_errors_and_says_so(tmp_path: Path) -> None:
    """A bug while starting a rollback is retried, then the run ends failed, alerted and audited, and the
    environment stays locked by the run (it may be mid-change) until a person looks."""
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp_path}/c.db", write_config(tmp_path), prepare=with_broken_rollback)
        try:
            d.sim("staging").cluster.fail_next_rollout()
            _, run_id = d.deploy("v2.3 --env staging")
            d.wait_step(run_id, "checklist")
            d.tick(run_id)
            run = d.wait_state(run_id, "failed", timeout=60)
            assert "a person must look" in (run.outcome or "")
            assert [r["action"] for r in d.audit("deploy.engine_error", run_id)] == ["deploy.engine_error"]
            status = d.command("/swarm-status", "--env staging")
            assert f"run `{run_id}`" in status and "a person must look" in status
            metrics = d.bot.client.get(f"{d.bot.url}/metrics").text
            assert "chatops_deploy_executor_errors_total 3.0" in metrics
        finally:
            d.stop()
