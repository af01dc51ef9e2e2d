"""Deploy correlation on the real bot: an alert fails a running canary analysis at once (not at the next query
interval, which is an hour here), the run's thread names the alert, and the deploy is named on later alerts."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.workflows.deploy.correlation import (
    AlertFact,
    fail_analysis_for_alert,
    rollback_candidate,
    severity_rank,
    suspect_deploy,
)
from bot.persistence.models import Run, RunSignal
from bot.timeutil import aware
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import NAMES, Deployer, start_deploy_bot, wait_until, write_config

HOUR = 3600


def slow_canary(data: dict[str, Any]) -> None:
    """Production canary analysis once an hour: only a pushed alert can end it within the test."""
    data["environments"]["production"]["canary"]["interval_seconds"] = HOUR


def signal(d: Deployer, severity: str = "critical", name: str = "TradingBotDown", key: str = "g1") -> Run | None:
    """Deliver an alert to correlation the way the Alertmanager route does: in its own transaction."""
    c = d.container
    with c.db.transaction() as session:
        run = fail_analysis_for_alert(session, c.core.runs, c.config,
                                      AlertFact("production", name, severity, "3 of 12 bots down", key))
        return None if run is None else Run(id=run.id)


def analysing(d: Deployer, run_id: str) -> None:
    wait_until(lambda: (d.step(run_id, "rollout").data or {}).get("applied") == 50
               and (d.step(run_id, "rollout").data or {}).get("tracker") is None
               and d.step(run_id, "rollout").status == "running", 30, "the canary to analyse at 50%")


@pytest.fixture(scope="module")
def alerted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str, list[Run | None]]]:
    """A production canary of v2.3 (analysis hourly) that a critical alert failed, a warning ignored before."""
    tmp = tmp_path_factory.mktemp("correlation")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(Path(tmp), slow_canary))
        _, run_id = d.deploy("v2.3 --env production --canary")
        d.approve_all(run_id)
        d.tick(run_id)
        analysing(d, run_id)
        results = [signal(d, "warning", "HighLatency", "g0"), signal(d), signal(d)]
        d.wait_state(run_id, timeout=40)
        yield d, run_id, results
        d.stop()


def test_critical_alert_fails_the_canary_at_once(alerted: tuple[Deployer, str, list[Run | None]]) -> None:
    """The run rolls back long before its hourly analysis; the reason names the alert; v2.2.0 is live again."""
    d, run_id, _ = alerted
    run = d.run(run_id)
    assert run.state == "rolled_back"
    reason = run.rollback_reason or ""
    assert "alert TradingBotDown (critical) fired in production during the canary analysis" in reason
    assert d.live_image().endswith(":v2.2.0")


def test_the_runs_thread_says_which_alert_did_it(alerted: tuple[Deployer, str, list[Run | None]]) -> None:
    """The run's thread has the alert line, before the rollback."""
    d, run_id, _ = alerted
    thread = d.thread_texts(run_id)
    assert any(t.startswith(":rotating_light: Alert *TradingBotDown* (critical) fired in production: failing the "
                            "canary analysis now") for t in thread)
    assert [r["action"] for r in d.audit("deploy.alert_signal", run_id=run_id)] == ["deploy.alert_signal"]


def test_below_threshold_and_repeats_do_not_signal(alerted: tuple[Deployer, str, list[Run | None]]) -> None:
    """A warning (below `fail_analysis_at: high`) signals nothing; a second delivery of one group signals once."""
    d, run_id, results = alerted
    assert results[0] is None and results[1] is not None and results[1].id == run_id and results[2] is None
    with d.container.db.read() as session:
        signals = session.execute(select(RunSignal)).scalars().all()
    assert [(s.run_id, s.dedup_key, s.consumed_at is not None) for s in signals] == [(run_id, "g1", True)]


def test_a_later_alert_names_the_suspect_deploy(alerted: tuple[Deployer, str, list[Run | None]]) -> None:
    """An alert starting minutes after the deploy names version, requester and approvers; one outside the
    window or before the deploy does not."""
    d, run_id, _ = alerted
    run = d.run(run_id)
    finished, started = aware(run.finished_at), aware(run.started_at)
    assert finished is not None and started is not None
    with d.container.db.read() as session:
        config = d.container.config
        text = suspect_deploy(session, config, "production", finished + timedelta(minutes=4))
        during = suspect_deploy(session, config, "production", started + (finished - started) / 2)
        late = suspect_deploy(session, config, "production", finished + timedelta(minutes=31))
        before = suspect_deploy(session, config, "production", started - timedelta(minutes=1))
        elsewhere = suspect_deploy(session, config, "staging", finished)
    assert text == "started 4 min after deploy v2.3 by <@U0ALICE01>, approved by <@U0BOB0002>, <@U0CAROL03>"
    assert during is not None and during.startswith("started during deploy v2.3 by <@U0ALICE01>")
    assert late is None and before is None and elsewhere is None


def test_a_rolled_back_deploy_is_not_offered_for_rollback(alerted: tuple[Deployer, str, list[Run | None]]) -> None:
    """The Roll back button's candidate: none, since the canary already rolled itself back."""
    d, _, _ = alerted
    with d.container.db.read() as session:
        assert rollback_candidate(session, d.container.config, "production") is None


def test_severity_ranks_follow_the_runbook() -> None:
    """critical > high > medium (warning) > low (info) > unknown."""
    assert [severity_rank(s) for s in ("critical", "high", "warning", "info", "bogus", None)] == [4, 3, 2, 1, 0, 0]
