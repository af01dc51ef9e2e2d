"""The durable engine across processes: a restarted bot resumes a run where it stopped, never redoing a
step; an unsafe step rolls back instead; two replicas never both run it; a dead one's lease is taken over."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.container import Container
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    BOTH_DATABASES,
    JOBS,
    NAMES,
    NEW_IMAGE,
    OLD_IMAGE,
    Deployer,
    config_path,
    fake_slack,
    fast_sims,
    module_database_url,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)


def sharing_backends_of(old: Deployer) -> Callable[[Container], Container]:
    """A `prepare` for a new bot: keep using the old bot's simulated world (cluster, metrics, trading)."""
    def prepare(container: Container) -> Container:
        container.sims = old.container.sims
        assert container.core.deploy is not None and old.container.core.deploy is not None
        container.core.runs.backends = old.container.core.runs.backends
        return container
    return prepare


@pytest.fixture
def bots() -> Iterator[list[Deployer]]:
    """Bots a test starts (each stopped at the end if it is still running)."""
    started: list[Deployer] = []
    yield started
    for d in started:
        d.stop()


def step_starts(d: Deployer, run_id: str) -> list[str]:
    return [r["args"]["step"] for r in d.audit("deploy.step.start", run_id) if r["args"]["phase"] == "main"]


# --- resume ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=BOTH_DATABASES)
def resumed_canary(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A production canary stopped (bot shut down) after passing 50 % and moving to 100 %, then finished by a
    new bot on the same database and simulated world; on SQLite and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("restart")
    url, config = module_database_url(request, tmp), write_config(tmp)
    with FakeSlack(users=dict(NAMES)) as fake:
        first = start_deploy_bot(fake, url, config)
        try:
            _, run_id = first.deploy("v2.3 --env production --canary")
            first.approve_all(run_id)
            first.tick(run_id)
            wait_until(lambda: [r for r in first.audit("kubernetes.canary_weight", run_id)
                                if r["args"]["weight"] == 100], 30, "the canary at 100 %")
        finally:
            first.stop()
        assert first.run(run_id).state == "running" and first.step(run_id, "rollout").status == "running"
        second = start_deploy_bot(fake, url, config, prepare=sharing_backends_of(first))
        try:
            second.wait_state(run_id)
            yield second, run_id
        finally:
            second.stop()


def test_restarted_bot_finishes_the_run(resumed_canary: tuple[Deployer, str]) -> None:
    """After a restart mid-canary the new process completes the run: succeeded, v2.3 promoted."""
    d, run_id = resumed_canary
    assert d.run(run_id).state == "succeeded"
    assert d.live_image() == NEW_IMAGE
    assert "Succeeded" in d.message_text(run_id)


def test_restart_resumes_the_interrupted_step_and_redoes_none(resumed_canary: tuple[Deployer, str]) -> None:
    """The rollout is resumed (deploy.step.resume), and no step, run start or canary step is started twice."""
    d, run_id = resumed_canary
    assert [r["args"]["step"] for r in d.audit("deploy.step.resume", run_id)] == ["Roll out"]
    assert step_starts(d, run_id) == [s.name for s in d.steps(run_id)]
    assert len(d.audit("deploy.start", run_id)) == 1
    assert d.step(run_id, "rollout").attempts == 1
    weights = [r["args"]["weight"] for r in d.audit("deploy.analysis", run_id)]
    assert weights == [50, 100]  # the 50 % stage passed before the restart and was not analysed again
    assert [r["args"]["weight"] for r in d.audit("kubernetes.canary_weight", run_id)] == [50, 100]
    assert d.verify_audit().ok


def unsafe_migration(data: dict[str, Any]) -> None:
    """Staging runs a migrate Job that must not be resumed (on_resume: rollback)."""
    staging = data["environments"]["staging"]
    staging["jobs"] = [j for j in JOBS if j["name"] == "migrate"]
    at = next(i for i, s in enumerate(staging["procedure"]) if s["kind"] == "rollout")
    staging["procedure"].insert(at, {"kind": "job", "name": "Database migrate", "job": "migrate",
                                     "on_resume": "rollback"})


def test_interrupted_unsafe_step_rolls_back_after_restart(fake_slack: FakeSlack, sqlite_url: str,
                                                          tmp_path: Path,
                                                          bots: list[Deployer]) -> None:
    """A step with on_resume: rollback, running at a restart, is failed (not rerun) and the run rolls back."""
    config = write_config(tmp_path, unsafe_migration)
    first = start_deploy_bot(fake_slack, sqlite_url, config)
    bots.append(first)
    first.sim("staging").cluster.job_seconds = 600  # the migration is still running when the bot stops
    _, run_id = first.deploy("v2.3 --env staging")
    first.tick(run_id)
    wait_until(lambda: (first.step(run_id, "job").data or {}).get("created"), 20, "the migrate Job")
    first.stop()
    second = start_deploy_bot(fake_slack, sqlite_url, config, prepare=sharing_backends_of(first))
    bots.append(second)
    run = second.wait_state(run_id)
    assert run.state == "rolled_back" and "interrupted by a restart" in (run.rollback_reason or "")
    assert second.step(run_id, "job").status == "failed"
    assert step_starts(second, run_id).count("Database migrate") == 1
    interrupted = [r["args"]["step"] for r in second.audit("deploy.step.interrupted", run_id)]
    assert interrupted == ["Database migrate"]
    assert second.audit("deploy.step.resume", run_id) == []
    assert second.live_image("staging") == OLD_IMAGE and second.sim("staging").trading.status().trading


# --- several processes ---------------------------------------------------------------------------------
def test_two_replicas_execute_a_run_once(fake_slack: FakeSlack, database_url: str, config_path: Path,
                                         bots: list[Deployer]) -> None:
    """Two bots on one database (one simulated world): one deploy.start and one start per step."""
    first = start_deploy_bot(fake_slack, database_url, config_path)
    bots.append(first)
    second = start_deploy_bot(fake_slack, database_url, config_path, prepare=sharing_backends_of(first))
    bots.append(second)
    _, run_id = first.deploy("v2.3 --env staging")
    second.tick(run_id)
    assert first.wait_state(run_id).state == "succeeded"
    assert len(first.audit("deploy.start", run_id)) == 1
    assert step_starts(first, run_id) == [s.name for s in first.steps(run_id)]
    history = first.sim("staging").trading.history
    assert history[0][0] == "stop" and len(history) == 6


def test_a_dead_replicas_run_is_taken_over_when_its_lease_expires(
        fake_slack: FakeSlack, sqlite_url: str, config_path: Path, bots: list[Deployer]) -> None:
    """A process that dies mid-run (lease not handed back) loses the run to another once the lease expires."""
    def dies_holding_its_lease(container: Container) -> Container:
        setattr(container.executor, "_release_lease", lambda _run_id: None)  # noqa: B010  (a crash hands nothing back)
        return fast_sims(container)

    first = start_deploy_bot(fake_slack, sqlite_url, config_path, prepare=dies_holding_its_lease,
                             deploy_lease_seconds=2)
    bots.append(first)
    _, run_id = first.deploy("v2.3 --env staging")
    first.wait_step(run_id, "checklist")
    first.stop()
    assert first.run(run_id).lease_owner is not None
    second = start_deploy_bot(fake_slack, sqlite_url, config_path, prepare=sharing_backends_of(first))
    bots.append(second)
    wait_until(lambda: second.audit("deploy.step.resume", run_id), 10, "the checklist to be resumed")
    second.tick(run_id)
    assert second.wait_state(run_id).state == "succeeded"
    assert step_starts(second, run_id) == [s.name for s in second.steps(run_id)]
