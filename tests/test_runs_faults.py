"""The runs engine on a flaky cluster: the Kubernetes API stand-in answers 500s, stalls past the client's
timeout or drops connections during rolling, canary and blue-green deploys and their rollbacks. Every run
either completes or rolls back to exactly the previous state — never half — and a rollback that cannot
finish keeps the environment locked, says what is left behind, and can be continued by a person."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from bot.core import locks
from bot.core.model import Actor
from bot.persistence.models import AuditRecord, Run
from tests.bot_server import RunningBot, start_bot
from tests.harness.slack_api import FakeSlack
from tests.real_world import ALICE, DEPLOY_CHANNEL, DEPLOYMENT, IMAGE, INCIDENT_CHANNEL, NAMESPACE, World, real_world
from tests.real_world import wait_until as _wait

OLD, NEW = f"{IMAGE}:v2.2.0", f"{IMAGE}:v2.3"
SELECTOR = {"app": DEPLOYMENT}


def configure(world: World, **prod: Any) -> None:
    data = yaml.safe_load(world.config.read_text())
    env = data["environments"]["production"]
    env["kubernetes"]["timeout_seconds"] = 1.0  # a stalled API call gives up after 1 s
    for key, value in prod.items():
        if isinstance(value, dict) and isinstance(env.get(key), dict):
            env[key].update(value)
        else:
            env[key] = value
    world.config.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with real_world(tmp_path, steps=[50, 100], interval=5.0, approvals=0) as w:
        configure(w)
        yield w


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as f:
        yield f


class Flaky:
    def __init__(self, world: World, fake: FakeSlack, tmp_path: Path) -> None:
        self.world, self.fake = world, fake
        self.bot: RunningBot = start_bot(fake, f"sqlite:///{tmp_path}/faults.db", config=world.config)

    def deploy(self, flags: str = "") -> str:
        self.bot.command("/deploy", f"v2.3 --env production {flags}".strip(), ALICE, name="req",
                         channel=DEPLOY_CHANNEL)
        _wait(lambda: self.runs(), 10, "the run")
        return self.runs()[0].id

    def runs(self) -> list[Run]:
        with self.bot.container.db.read() as session:
            return list(session.execute(select(Run).order_by(Run.created_at)).scalars())

    def run(self, run_id: str) -> Run:
        return next(r for r in self.runs() if r.id == run_id)

    def finish(self, run_id: str, timeout: float = 120) -> Run:
        _wait(lambda: self.run(run_id).state in ("succeeded", "rolled_back", "failed"), timeout, "the run to end")
        return self.run(run_id)

    def actions(self, run_id: str) -> list[str]:
        with self.bot.container.db.read() as session:
            rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
            return [r.action for r in rows if f'"run":"{run_id}"' in r.args.replace(" ", "")]

    def thread_texts(self) -> str:
        return "\n".join(str(m.get("text")) for m in self.fake.messages_in(DEPLOY_CHANNEL))

    def incident_texts(self) -> list[str]:
        return [str(m.get("text")) for m in self.fake.messages_in(INCIDENT_CHANNEL)]

    def replicas(self, name: str = DEPLOYMENT) -> int | None:
        try:
            return int(self.world.kube.deployment(NAMESPACE, name)["spec"]["replicas"])
        except Exception:  # noqa: BLE001 - absent
            return None

    def selector(self) -> dict[str, str]:
        return dict(self.world.kube.service(NAMESPACE, DEPLOYMENT)["spec"]["selector"])

    def previous_state(self) -> None:
        """Exactly what was there before the run: stable on v2.2.0 with 4 replicas, no copies, home selector."""
        assert self.world.image() == OLD
        assert self.replicas() == 4
        assert self.replicas(f"{DEPLOYMENT}-canary") is None and self.replicas(f"{DEPLOYMENT}-green") is None
        assert self.selector() == SELECTOR

    def new_state(self) -> None:
        assert self.world.image() == NEW and self.replicas() == 4
        assert self.replicas(f"{DEPLOYMENT}-canary") is None and self.replicas(f"{DEPLOYMENT}-green") is None
        assert self.selector() == SELECTOR

    def stop(self) -> None:
        self.bot.stop()


@pytest.fixture
def flaky(world: World, fake: FakeSlack, tmp_path: Path) -> Iterator[Callable[..., Flaky]]:
    made: list[Flaky] = []

    def make(**prod: Any) -> Flaky:
        if prod:
            configure(world, **prod)
        f = Flaky(world, fake, tmp_path)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop()


FAULTS: dict[str, Callable[[World], None]] = {
    "three 500s on the image patch": lambda w: w.kube.error_next(3, 500, method="PATCH",
                                                                 path_contains="/deployments/"),
    "two stalls past the timeout": lambda w: w.kube.delay_next(2, 2.5, method="PATCH", path_contains="/deployments/"),
    "two dropped connections": lambda w: w.kube.drop_next(2, method="PATCH", path_contains="/deployments/"),
    "a dropped read": lambda w: w.kube.drop_next(1, method="GET", path_contains="/deployments/"),
    "429 then 503 on reads (GET)": lambda w: (w.kube.error_next(1, 429, method="GET", path_contains="/deployments/"),
                                        w.kube.error_next(1, 503, method="GET", path_contains="/deployments/")),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_rolling_deploy_rides_out_transient_faults(flaky: Callable[..., Flaky], fault: str) -> None:
    """Transient faults during a rolling deploy are retried within the step's deadline: the run succeeds,
    each retry is audited, logged and shown in the thread."""
    f = flaky()
    reads = "GET" in fault or "read" in fault
    if not reads:  # PATCHes come from the run only
        FAULTS[fault](f.world)
    run_id = f.deploy()
    if reads:  # armed once the plan is made (its own read is not the engine's): they hit the run's reads
        FAULTS[fault](f.world)
    run = f.finish(run_id)
    assert run.state == "succeeded", run.outcome
    f.new_state()
    assert "deploy.step.retry" in f.actions(run_id)
    assert "retry 1 in" in f.thread_texts()


def test_canary_rides_out_500s_at_50_percent(flaky: Callable[..., Flaky]) -> None:
    """Three 500s on the Deployment patches while the canary is at 50 %: retried, the canary is promoted."""
    f = flaky()
    run_id = f.deploy("--canary")
    _wait(f.world.has_canary, 30, "the canary")
    f.world.kube.error_next(3, 500, method="PATCH")
    run = f.finish(run_id)
    assert run.state == "succeeded", run.outcome
    f.new_state()
    assert f.actions(run_id).count("deploy.step.retry") >= 1


def test_bad_canary_rolls_back_exactly_through_500s_and_drops(flaky: Callable[..., Flaky]) -> None:
    """A failing canary rolls back while the API answers 500s and drops connections: the rollback is retried
    until it is done, and the cluster is exactly as before; the outcome says nothing is left changed."""
    f = flaky()
    run_id = f.deploy("--canary")
    _wait(f.world.has_canary, 30, "the canary")
    f.world.kube.error_next(3, 500, method="DELETE")
    f.world.kube.drop_next(2, method="PATCH")
    f.world.exporter.set(version="canary", error_rate=0.2)
    try:
        run = f.finish(run_id)
    finally:
        f.world.exporter.set(version="canary", error_rate=0.002)
    assert run.state == "rolled_back", run.outcome
    f.previous_state()
    assert "still changed" not in (run.outcome or "") and "left behind" not in (run.outcome or "")
    with f.bot.container.db.read() as session:
        assert locks.current(session, "production") is None


def test_blue_green_rides_out_faults_on_the_switch(flaky: Callable[..., Flaky]) -> None:
    """500s and a drop on the Service switch: retried; green serves, then blue is updated and serves again."""
    f = flaky()
    f.world.kube.error_next(2, 500, method="PATCH", path_contains="/services/")
    f.world.kube.drop_next(1, method="PATCH", path_contains="/services/")
    run_id = f.deploy("--blue-green")
    run = f.finish(run_id)
    assert run.state == "succeeded", run.outcome
    f.new_state()


def test_blue_green_rollback_through_faults_restores_the_selector(flaky: Callable[..., Flaky]) -> None:
    """Errors after the switch to green: the rollback switches the Service home through 500s and removes green."""
    f = flaky(blue_green={"monitor_seconds": 20})
    run_id = f.deploy("--blue-green")
    _wait(lambda: "green" in str(f.selector()), 30, "the switch to green")
    f.world.kube.error_next(3, 500, method="PATCH", path_contains="/services/")
    f.world.exporter.set(version="canary", error_rate=0.2)
    f.world.exporter.set(version="stable", error_rate=0.2)
    try:
        run = f.finish(run_id)
    finally:
        f.world.exporter.set(version="canary", error_rate=0.002)
        f.world.exporter.set(version="stable", error_rate=0.002)
    assert run.state == "rolled_back", run.outcome
    f.previous_state()
    assert "still changed" not in (run.outcome or "")


def test_rollback_that_cannot_finish_keeps_the_lock_and_can_be_continued(flaky: Callable[..., Flaky]) -> None:
    """The API keeps failing during a canary's rollback past the rollback deadline: the run ends FAILED, the
    environment stays locked, the incident alert says what is left behind and what the cluster shows;
    once the API is back a person continues the rollback and it restores the previous state."""
    f = flaky(rollback_deadline_seconds=10)
    run_id = f.deploy("--canary")
    _wait(f.world.has_canary, 30, "the canary")
    f.world.kube.error_next(10_000, 500, method="PATCH")
    f.world.kube.error_next(10_000, 500, method="DELETE")
    f.world.exporter.set(version="canary", error_rate=0.2)
    try:
        run = f.finish(run_id, timeout=120)
    finally:
        f.world.exporter.set(version="canary", error_rate=0.002)
    assert run.state == "failed", run.outcome
    assert "could not finish" in (run.outcome or "") and "left behind" in (run.outcome or "")
    assert f"canary {DEPLOYMENT}-canary" in (run.outcome or "")  # the canary still takes traffic ...
    assert f.world.has_canary() and f.replicas() == 2  # ... as the cluster shows: 2 stable, the canary up
    # the alert goes out through the outbox, after the run's own transaction: wait for its delivery
    _wait(lambda: any("FAILED and needs a person" in t for t in f.incident_texts()), 30, "the incident alert")
    alert = next(t for t in f.incident_texts() if "FAILED and needs a person" in t)
    assert "What the backends show now" in alert and f"{DEPLOYMENT} replicas: 2" in alert
    assert "/rollback --env production" in alert
    assert "deploy.step.give_up" in f.actions(run_id)
    with f.bot.container.db.read() as session:
        holder = locks.current(session, "production")
    assert holder is not None and holder.run_id == run_id
    f.world.kube.clear_faults()
    with f.bot.container.db.transaction() as session:
        live = f.bot.container.core.runs.load(session, run_id)
        f.bot.container.executor.continue_rollback(session, live, Actor("U0ALICE01", "alice"))
    run = f.finish(run_id)
    assert run.state == "rolled_back", run.outcome
    f.previous_state()
    with f.bot.container.db.read() as session:
        assert locks.current(session, "production") is None


# --- the Istio router: the canary's share is a VirtualService weight ------------------------------------
def canary_weight(f: Flaky) -> int:
    routes = f.world.kube.virtual_service(NAMESPACE, DEPLOYMENT)["spec"]["http"][0]["route"]
    return int(next((r["weight"] for r in routes if r["destination"]["subset"] == "canary"), 0))


def istio(flaky: Callable[..., Flaky]) -> Flaky:
    f = flaky(canary={"router": "istio"})
    f.world.kube.add_virtual_service(NAMESPACE, DEPLOYMENT, DEPLOYMENT)
    return f


VS_FAULTS: dict[str, Callable[[World], None]] = {
    "three 500s": lambda w: w.kube.error_next(3, 500, method="PATCH", path_contains="/virtualservices/"),
    "two stalls past the timeout": lambda w: w.kube.delay_next(2, 2.5, method="PATCH",
                                                               path_contains="/virtualservices/"),
    "two dropped connections": lambda w: w.kube.drop_next(2, method="PATCH", path_contains="/virtualservices/"),
}


@pytest.mark.parametrize("fault", list(VS_FAULTS))
def test_istio_canary_rides_out_faults_on_the_virtual_service(flaky: Callable[..., Flaky], fault: str) -> None:
    """Transient faults on the VirtualService weight patches are retried: the canary is promoted, all traffic
    is on stable (canary weight 0) and nothing is left behind."""
    f = istio(flaky)
    VS_FAULTS[fault](f.world)
    run_id = f.deploy("--canary")
    run = f.finish(run_id)
    assert run.state == "succeeded", run.outcome
    f.new_state()
    assert canary_weight(f) == 0
    assert "deploy.step.retry" in f.actions(run_id)


def test_bad_istio_canary_rolls_back_exactly_through_faults(flaky: Callable[..., Flaky]) -> None:
    """A failing Istio canary rolls back while the API answers 500s on the VirtualService and the canary's
    deletion: the weight goes back to 0, the canary is removed, stable is as before."""
    f = istio(flaky)
    run_id = f.deploy("--canary")
    _wait(lambda: f.world.has_canary() and canary_weight(f) == 50, 30, "the canary at 50 %")
    f.world.kube.error_next(3, 500, method="PATCH", path_contains="/virtualservices/")
    f.world.kube.error_next(2, 500, method="DELETE")
    f.world.exporter.set(version="canary", error_rate=0.2)
    try:
        run = f.finish(run_id)
    finally:
        f.world.exporter.set(version="canary", error_rate=0.002)
    assert run.state == "rolled_back", run.outcome
    f.previous_state()
    assert canary_weight(f) == 0
    assert "still changed" not in (run.outcome or "") and "left behind" not in (run.outcome or "")
