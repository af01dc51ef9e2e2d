"""The SIMULATED backends (integrations/simulated.py): cluster, metrics, trading, probe and worlds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.core.ports import Cluster, HealthProbe, MetricsSource, TradingControls, WorkloadRef
from bot.errors import BackendUnavailable, IntegrationError
from integrations.simulated import SimCluster, SimMetrics, SimProbe, SimTrading, sim_world_for

REPO = Path(__file__).resolve().parents[1]
REF = WorkloadRef("trading-staging", "trading-bot-swarm", "trading-bot-swarm")
IMAGE = "registry.example.com/trading-bot-swarm"

ERROR_RATE = 'sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))'
P95_MS = "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m])) by (le)) * 1000"
P95_S = "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m])) by (le))"
ORDERS = "sum(rate(orders_successful_total[5m])) / sum(rate(orders_total[5m]))"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock."""
    return FakeClock()


@pytest.fixture
def cluster(clock: FakeClock) -> SimCluster:
    """A simulated cluster with the staging deployment at v2.2.0 (3 replicas), 1 s rollouts."""
    sim = SimCluster(rollout_seconds=1.0, clock=clock)
    sim.add_deployment(REF.namespace, REF.deployment, REF.container, f"{IMAGE}:v2.2.0")
    return sim


def test_everything_is_labelled_simulated() -> None:
    """Every simulated backend says so, in its label and its docstring."""
    for cls in (SimCluster, SimMetrics, SimTrading, SimProbe):
        assert cls.label == "simulated"
        assert "SIMULATED" in (cls.__doc__ or "")


def test_simulated_backends_satisfy_the_ports(cluster: SimCluster) -> None:
    """The simulated classes can be used where the core expects the ports."""
    ports: tuple[Cluster, MetricsSource, TradingControls, HealthProbe] = (cluster, SimMetrics(), SimTrading(),
                                                                          SimProbe())
    assert len(ports) == 4


def test_seeded_deployment_is_rolled_out(cluster: SimCluster) -> None:
    """A seeded deployment reports a complete rollout at its image."""
    assert cluster.current_image(REF) == f"{IMAGE}:v2.2.0"
    status = cluster.rollout_status(REF)
    assert status.complete and not status.failed and status.available == 3


def test_rollout_progresses_then_completes(cluster: SimCluster, clock: FakeClock) -> None:
    """set_image starts a rollout whose replicas progress and which completes after rollout_seconds."""
    cluster.set_image(REF, f"{IMAGE}:v2.3.0")
    assert cluster.current_image(REF) == f"{IMAGE}:v2.3.0"
    first = cluster.rollout_status(REF)
    assert not first.complete and first.updated == 1 and first.available == 0
    clock.advance(0.7)
    middle = cluster.rollout_status(REF)
    assert not middle.complete and middle.available == 2 and middle.updated == 3
    clock.advance(0.3)
    done = cluster.rollout_status(REF)
    assert done.complete and (done.desired, done.updated, done.available) == (3, 3, 3)


def test_same_image_is_a_no_op(cluster: SimCluster) -> None:
    """Setting the current image starts no rollout and adds no revision."""
    cluster.set_image(REF, f"{IMAGE}:v2.2.0")
    assert cluster.rollout_status(REF).complete
    assert cluster.history(REF.namespace, REF.deployment) == [(1, f"{IMAGE}:v2.2.0")]


def test_failed_rollout_hits_the_progress_deadline(cluster: SimCluster, clock: FakeClock) -> None:
    """After fail_next_rollout the rollout stalls, then reports failed with ProgressDeadlineExceeded."""
    cluster.fail_next_rollout()
    cluster.set_image(REF, f"{IMAGE}:v2.3.0")
    clock.advance(0.5)
    stalled = cluster.rollout_status(REF)
    assert not stalled.complete and not stalled.failed and stalled.available == 0
    clock.advance(0.5)
    failed = cluster.rollout_status(REF)
    assert failed.failed and not failed.complete and "progress deadline" in failed.message


def test_failure_applies_to_the_next_rollout_only(cluster: SimCluster, clock: FakeClock) -> None:
    """The rollout after a failed one (setting the previous image back) completes normally."""
    cluster.fail_next_rollout()
    cluster.set_image(REF, f"{IMAGE}:v2.3.0")
    clock.advance(1.0)
    cluster.set_image(REF, f"{IMAGE}:v2.2.0")
    clock.advance(1.0)
    assert cluster.rollout_status(REF).complete


def test_unknown_deployment_and_container_raise(cluster: SimCluster) -> None:
    """A missing deployment or a wrong container name raises IntegrationError."""
    with pytest.raises(IntegrationError, match="not found"):
        cluster.current_image(WorkloadRef("trading-staging", "nope", "nope"))
    with pytest.raises(IntegrationError, match="no container"):
        cluster.set_image(WorkloadRef(REF.namespace, REF.deployment, "sidecar"), "x:1")


def test_canary_copy_scale_and_delete(cluster: SimCluster, clock: FakeClock) -> None:
    """ensure_copy creates a labelled copy that rolls out; scale and delete work; delete is idempotent."""
    cluster.ensure_copy(REF, "trading-bot-swarm-canary", f"{IMAGE}:v2.3.0", 1, {"track": "canary"})
    copy = cluster.describe(REF.namespace, "trading-bot-swarm-canary")
    assert copy["image"] == f"{IMAGE}:v2.3.0"
    assert copy["labels"] == {"app": "trading-bot-swarm", "track": "canary"}
    canary = WorkloadRef(REF.namespace, "trading-bot-swarm-canary", REF.container)
    assert not cluster.rollout_status(canary).complete
    clock.advance(1.0)
    assert cluster.rollout_status(canary).complete
    cluster.scale(REF.namespace, "trading-bot-swarm-canary", 2)
    assert cluster.replicas(REF.namespace, "trading-bot-swarm-canary") == 2
    cluster.delete_deployment(REF.namespace, "trading-bot-swarm-canary")
    cluster.delete_deployment(REF.namespace, "trading-bot-swarm-canary")
    assert cluster.deployments(REF.namespace) == ["trading-bot-swarm"]


def test_virtual_service_weights_are_readable(cluster: SimCluster) -> None:
    """set_virtual_service_weights stores the split, weights() reads it back."""
    cluster.set_virtual_service_weights(REF.namespace, "trading-bot-swarm", "swarm.local", "stable", "canary",
                                        10)
    assert cluster.weights(REF.namespace, "trading-bot-swarm") == {"stable": 90, "canary": 10}


def test_service_selector_round_trip(cluster: SimCluster) -> None:
    """The seeded service selects app=<deployment>; a new selector is stored."""
    assert cluster.service_selector(REF.namespace, "trading-bot-swarm") == {"app": "trading-bot-swarm"}
    cluster.set_service_selector(REF.namespace, "trading-bot-swarm",
                                 {"app": "trading-bot-swarm", "color": "green"})
    assert cluster.service_selector(REF.namespace, "trading-bot-swarm")["color"] == "green"


def _job(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"template": {"spec": {"containers": [
        {"name": "migrate", "image": f"{IMAGE}:v2.3.0", "command": ["alembic", "upgrade", "head"]}]}}}}


def test_job_succeeds_after_a_while(cluster: SimCluster, clock: FakeClock) -> None:
    """A job is active at first, succeeded after job_seconds, and creating it again changes nothing."""
    cluster.create_job(REF.namespace, _job("migrate-v2-3-0"))
    assert cluster.job_status(REF.namespace, "migrate-v2-3-0").active == 1
    clock.advance(0.3)
    cluster.create_job(REF.namespace, _job("migrate-v2-3-0"))
    assert cluster.job_status(REF.namespace, "migrate-v2-3-0").succeeded
    assert "alembic upgrade head" in cluster.job_log_tail(REF.namespace, "migrate-v2-3-0")


def test_job_fails_with_its_log(cluster: SimCluster, clock: FakeClock) -> None:
    """Jobs matching a fail_jobs prefix fail and their log tail shows the given log."""
    cluster.fail_jobs("migrate-", "line 1\nline 2\nERROR: relation orders does not exist")
    cluster.create_job(REF.namespace, _job("migrate-v2-3-0"))
    clock.advance(0.3)
    assert cluster.job_status(REF.namespace, "migrate-v2-3-0").failed
    assert cluster.job_log_tail(REF.namespace, "migrate-v2-3-0", lines=2) == (
        "line 2\nERROR: relation orders does not exist")


def test_rollout_completes_on_the_wall_clock() -> None:
    """With the default clock a rollout completes about rollout_seconds of real time after set_image."""
    sim = SimCluster(rollout_seconds=0.05)
    sim.add_deployment(REF.namespace, REF.deployment, REF.container, "x:1")
    started = time.monotonic()
    sim.set_image(REF, "x:2")
    while not sim.rollout_status(REF).complete and time.monotonic() - started < 2.0:
        threading.Event().wait(0.005)  # poll the readiness condition itself
    elapsed = time.monotonic() - started
    assert sim.rollout_status(REF).complete and 0.05 <= elapsed < 1.0


def test_concurrent_set_image_keeps_history_consistent(cluster: SimCluster) -> None:
    """Many threads rolling images at once leave one revision per distinct image, numbered uniquely."""
    images = [f"{IMAGE}:v3.{i}.0" for i in range(8)]

    def roll(image: str) -> None:
        for _ in range(50):
            cluster.set_image(REF, image)

    threads = [threading.Thread(target=roll, args=(image,)) for image in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = cluster.history(REF.namespace, REF.deployment)
    assert sorted(image for _, image in history) == sorted([f"{IMAGE}:v2.2.0", *images])
    assert len({number for number, _ in history}) == len(history)
    assert history[-1][1] == cluster.current_image(REF)


@pytest.mark.parametrize(("promql", "expected"), [
    (ERROR_RATE, 0.002), (P95_MS, 180.0), (P95_S, 0.18), (ORDERS, 0.998),
    ("sum(rate(http_requests_total[5m]))", 100.0), ("up", None)])  # a request rate: request_rate
def test_metrics_query_rule(promql: str, expected: float | None) -> None:
    """Queries are recognised by their metric names; unrecognised ones answer None."""
    assert SimMetrics().query(promql) == pytest.approx(expected) if expected is not None else \
        SimMetrics().query(promql) is None


def test_metrics_knobs_change_answers() -> None:
    """set() changes what the matching query answers."""
    metrics = SimMetrics()
    metrics.set("error_rate", 0.05)
    metrics.set("p95_latency_ms", 900)
    assert metrics.query(ERROR_RATE) == 0.05 and metrics.query(P95_MS) == 900.0


def test_metrics_nodata_and_down() -> None:
    """nodata makes every query None; down raises BackendUnavailable."""
    metrics = SimMetrics()
    metrics.set("nodata", True)
    assert metrics.query(ERROR_RATE) is None
    metrics.set("down", True)
    with pytest.raises(BackendUnavailable):
        metrics.query(ERROR_RATE)


def test_metrics_unknown_knob_is_rejected() -> None:
    """A misspelt knob raises ValueError naming the known ones."""
    with pytest.raises(ValueError, match="error_rate"):
        SimMetrics().set("eror_rate", 1)


def test_trading_state_and_history() -> None:
    """SimTrading follows stop/maintenance/start and records each call."""
    trading = SimTrading()
    trading.stop("deploy")
    trading.maintenance(True)
    stopped = trading.status()
    assert (stopped.trading, stopped.active_bots, stopped.maintenance) == (False, 0, True)
    trading.maintenance(False)
    trading.start(0.25)
    status = trading.status()
    assert (status.trading, status.active_bots, status.total_bots) == (True, 5, 20)
    assert trading.history == [("stop", "deploy"), ("maintenance", True), ("maintenance", False),
                               ("start", 0.25)]


def test_trading_rejects_invalid_fraction() -> None:
    """SimTrading validates the fraction like the real client."""
    with pytest.raises(ValueError):
        SimTrading().start(1.5)


def test_probe_healthy_until_marked() -> None:
    """SimProbe is healthy by default and fails matching URLs after set_unhealthy."""
    probe = SimProbe()
    assert probe.check("http://swarm/health", {"status": "healthy"}).ok
    probe.set_unhealthy("/health/detailed", "components.cache: missing")
    result = probe.check("http://swarm/health/detailed", {})
    assert not result.ok and "components.cache: missing" in result.detail
    assert probe.check("http://swarm/health", {}).ok


def test_sim_world_for_seeds_each_environment_from_the_example_config() -> None:
    """One world per environment, its deployment at <image>:v2.2.0, worlds independent of each other."""
    config = load_config(REPO / "chatops.example.yml")
    worlds = sim_world_for(config.environments)
    assert set(worlds) == {"staging", "production"}
    for name, env in config.environments.items():
        ref = WorkloadRef(env.namespace, env.deployment, env.container)
        assert worlds[name].cluster.current_image(ref) == f"{env.image}:v2.2.0"
        assert worlds[name].cluster.rollout_status(ref).complete
    worlds["staging"].metrics.set("error_rate", 0.5)
    assert worlds["production"].metrics.query(ERROR_RATE) == 0.002
    assert worlds["staging"].trading is not worlds["production"].trading
