"""SIMULATED backends: an in-memory cluster, metrics, trading API and health probe for the console.

Nothing here talks to a real system. Every class carries `label = "simulated"` so front ends can say
so; the same classes serve as test doubles. They implement the ports in `bot.core.ports` and raise
from the same error tree as the real integrations. All are thread-safe (the console runs work on
background threads) and time-based behaviour reads an injectable `clock` (default `time.monotonic`).
"""

from __future__ import annotations

import copy
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.core.ports import (
    STOP_MODES,
    HealthReport,
    JobStatus,
    ProbeResult,
    RolloutStatus,
    StopMode,
    TradingStatus,
    WorkloadRef,
    WorkloadStatus,
)
from bot.errors import BackendUnavailable, IntegrationError
from integrations.trading_api import validate_fraction

LABEL = "simulated"
Clock = Callable[[], float]
SEED_TAG = "v2.2.0"


@dataclass
class _Revision:
    """One ReplicaSet: a pod template (here: the image) and its `deployment.kubernetes.io/revision`."""

    number: int
    image: str


@dataclass
class _Deployment:
    namespace: str
    name: str
    container: str
    image: str
    replicas: int
    labels: dict[str, str]
    revisions: list[_Revision] = field(default_factory=list)
    rollout_started: float = 0.0
    rollout_fails: bool = False
    rollout_started_wall: float = field(default_factory=time.time)  # wall clock, for "running since"

    @property
    def revision(self) -> int:
        return max(r.number for r in self.revisions)


@dataclass
class _Job:
    manifest: dict[str, Any]
    created: float
    fail_log: str | None


class SimCluster:
    """SIMULATED Kubernetes (`Cluster` port) kept in memory; no cluster is touched.

    Deployments keep a ReplicaSet-like revision history (`history()`). A rollout (set_image, a new
    copy) completes `rollout_seconds` after it began, updated/available replicas rising meanwhile;
    after `fail_next_rollout()` the next rollout stalls and then reports ProgressDeadlineExceeded.
    Jobs succeed `job_seconds` after creation, or fail with a given log when their name starts with a
    prefix passed to `fail_jobs`.
    """

    label = LABEL
    system = "simulated cluster"

    def __init__(self, *, rollout_seconds: float = 1.0, job_seconds: float = 0.3,
                 clock: Clock = time.monotonic) -> None:
        self.rollout_seconds = rollout_seconds
        self.job_seconds = job_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._services: dict[tuple[str, str], dict[str, str]] = {}
        self._virtual_services: dict[tuple[str, str], dict[str, Any]] = {}
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._job_failures: dict[str, str] = {}
        self._fail_next = False

    # -- seeding and knobs ----------------------------------------------------------------------------

    def add_deployment(self, namespace: str, name: str, container: str, image: str,
                       replicas: int = 3) -> None:
        """Seed a Deployment already rolled out (revision 1) and a Service `name` selecting `app=name`."""
        with self._lock:
            dep = _Deployment(namespace, name, container, image, replicas, {"app": name},
                              [_Revision(1, image)], rollout_started=-math.inf,
                              rollout_started_wall=time.time() - self.rollout_seconds)
            self._deployments[(namespace, name)] = dep
            self._services.setdefault((namespace, name), {"app": name})

    def add_service(self, namespace: str, name: str, selector: dict[str, str]) -> None:
        with self._lock:
            self._services[(namespace, name)] = dict(selector)

    def fail_next_rollout(self) -> None:
        """Make the next rollout stall (new pods never become available) and hit its progress deadline."""
        with self._lock:
            self._fail_next = True

    def restart_rollout(self, namespace: str, name: str) -> None:
        """What `kubectl rollout restart` does for a stuck rollout: new pods, which (unless another failure
        is armed) become available."""
        with self._lock:
            self._start_rollout(self._get(namespace, name))

    def fail_jobs(self, prefix: str, log: str = "Error: simulated job failure") -> None:
        """Jobs created from now on whose name starts with `prefix`, or ends with `-<prefix>` (the bot names
        Jobs `<run id>-<job>`, so `fail_jobs("migrate")` hits every run's migration), fail with `log`."""
        with self._lock:
            self._job_failures[prefix] = log

    def clear_job_failures(self) -> None:
        with self._lock:
            self._job_failures.clear()

    # -- reads for the console and tests --------------------------------------------------------------

    def describe(self, namespace: str, name: str) -> dict[str, Any]:
        """A snapshot: image, replicas, labels, container and current revision."""
        with self._lock:
            dep = self._get(namespace, name)
            return {"image": dep.image, "replicas": dep.replicas, "labels": dict(dep.labels),
                    "container": dep.container, "revision": dep.revision}

    def history(self, namespace: str, name: str) -> list[tuple[int, str]]:
        """(revision, image) pairs, oldest first, like `kubectl rollout history`."""
        with self._lock:
            return sorted((r.number, r.image) for r in self._get(namespace, name).revisions)

    def deployments(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted(name for ns, name in self._deployments if ns == namespace)

    def weights(self, namespace: str, name: str) -> dict[str, int]:
        """The VirtualService's routing, subset -> percent."""
        with self._lock:
            vs = self._virtual_services.get((namespace, name))
            if vs is None:
                raise IntegrationError(self.system, f"virtualservice {namespace}/{name} not found")
            return dict(vs["weights"])

    # -- Cluster port ---------------------------------------------------------------------------------

    def current_image(self, ref: WorkloadRef) -> str:
        with self._lock:
            return self._container(ref).image

    def set_image(self, ref: WorkloadRef, image: str) -> None:
        with self._lock:
            self._roll_to(self._container(ref), image)

    def rollout_status(self, ref: WorkloadRef) -> RolloutStatus:
        with self._lock:
            dep = self._get(ref.namespace, ref.deployment)
            desired = dep.replicas
            progress = self._progress(dep.rollout_started, self.rollout_seconds)
            if dep.rollout_fails:
                if progress >= 1:
                    return RolloutStatus(
                        False, True, desired, min(1, desired), 0,
                        f'deployment "{dep.name}" exceeded its progress deadline (simulated)')
                return RolloutStatus(False, False, desired, min(1, desired), 0,
                                     f'Waiting for deployment "{dep.name}" rollout to finish: 0 of {desired} '
                                     "updated replicas are available... (simulated)")
            if progress >= 1 or desired == 0:
                return RolloutStatus(True, False, desired, desired, desired,
                                     f'deployment "{dep.name}" successfully rolled out (simulated)')
            available = min(desired - 1, int(progress * desired))
            updated = min(desired, available + 1)
            return RolloutStatus(False, False, desired, updated, available,
                                 f'Waiting for deployment "{dep.name}" rollout to finish: {available} of '
                                 f"{desired} updated replicas are available... (simulated)")

    def workload_status(self, ref: WorkloadRef) -> WorkloadStatus:
        """Image, rollout and replicas; `since` is when the current image's rollout finished (or began,
        while it is still rolling out), by the wall clock."""
        with self._lock:
            dep = self._container(ref)
            rollout = self.rollout_status(ref)
            since = dep.rollout_started_wall + (self.rollout_seconds if rollout.complete else 0.0)
            return WorkloadStatus(dep.image, rollout, rollout.available, dep.replicas, dep.revision,
                                  datetime.fromtimestamp(since, UTC),
                                  "rollout (simulated)" if rollout.complete else "rollout started (simulated)")

    def replicas(self, namespace: str, deployment: str) -> int:
        with self._lock:
            return self._get(namespace, deployment).replicas

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        with self._lock:
            self._get(namespace, deployment).replicas = replicas  # scaling is instant here

    def ensure_copy(self, ref: WorkloadRef, name: str, image: str, replicas: int,
                    labels: dict[str, str]) -> None:
        with self._lock:
            source = self._container(ref)
            existing = self._deployments.get((ref.namespace, name))
            if existing is None:
                copy_ = _Deployment(ref.namespace, name, source.container, image, replicas,
                                    {**source.labels, **labels}, [_Revision(1, image)])
                self._start_rollout(copy_)
                self._deployments[(ref.namespace, name)] = copy_
                return
            existing.replicas = replicas
            existing.labels = {**source.labels, **labels}
            self._roll_to(existing, image)

    def delete_deployment(self, namespace: str, name: str) -> None:
        with self._lock:
            self._deployments.pop((namespace, name), None)

    def set_virtual_service_weights(self, namespace: str, name: str, host: str, stable_subset: str,
                                    canary_subset: str, canary_weight: int) -> None:
        if not 0 <= canary_weight <= 100:
            raise ValueError("canary_weight must be between 0 and 100")
        with self._lock:
            self._virtual_services[(namespace, name)] = {
                "host": host, "weights": {stable_subset: 100 - canary_weight, canary_subset: canary_weight}}

    def service_selector(self, namespace: str, service: str) -> dict[str, str]:
        with self._lock:
            selector = self._services.get((namespace, service))
            if selector is None:
                raise IntegrationError(self.system, f"service {namespace}/{service} not found")
            return dict(selector)

    def set_service_selector(self, namespace: str, service: str, selector: dict[str, str]) -> None:
        with self._lock:
            if (namespace, service) not in self._services:
                raise IntegrationError(self.system, f"service {namespace}/{service} not found")
            self._services[(namespace, service)] = dict(selector)

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        name = _job_name(manifest)
        with self._lock:
            if (namespace, name) in self._jobs:
                return
            fail_log = next((log for prefix, log in self._job_failures.items()
                             if name.startswith(prefix) or name.endswith(f"-{prefix}")), None)
            self._jobs[(namespace, name)] = _Job(copy.deepcopy(manifest), self._clock(), fail_log)

    def job_status(self, namespace: str, name: str) -> JobStatus:
        with self._lock:
            job = self._job(namespace, name)
            if self._progress(job.created, self.job_seconds) < 1:
                return JobStatus(False, False, 1, f"job {name} running (simulated)")
            if job.fail_log is not None:
                return JobStatus(False, True, 0, f"job {name} failed: BackoffLimitExceeded (simulated)")
            return JobStatus(True, False, 0, f"job {name} completed (simulated)")

    def job_log_tail(self, namespace: str, name: str, lines: int = 40) -> str:
        with self._lock:
            job = self._job(namespace, name)
            finished = self._progress(job.created, self.job_seconds) >= 1
            log = [f"[simulated] job {name} started: {_job_command(job.manifest)}"]
            if finished:
                log += (job.fail_log.splitlines() if job.fail_log is not None
                        else [f"[simulated] job {name} completed successfully"])
            return "\n".join(log[-lines:] if lines > 0 else [])

    # -- internals ------------------------------------------------------------------------------------

    def _progress(self, started: float, duration: float) -> float:
        """Fraction of `duration` elapsed since `started` (1e-9 s slack absorbs float rounding)."""
        elapsed = self._clock() - started + 1e-9
        return elapsed / duration if duration > 0 else math.inf

    def _get(self, namespace: str, name: str) -> _Deployment:
        dep = self._deployments.get((namespace, name))
        if dep is None:
            raise IntegrationError(self.system, f"deployment {namespace}/{name} not found")
        return dep

    def _container(self, ref: WorkloadRef) -> _Deployment:
        dep = self._get(ref.namespace, ref.deployment)
        if dep.container != ref.container:
            raise IntegrationError(self.system, f"deployment {ref.namespace}/{ref.deployment} has no "
                                   f"container {ref.container!r} (it has {dep.container!r})")
        return dep

    def _job(self, namespace: str, name: str) -> _Job:
        job = self._jobs.get((namespace, name))
        if job is None:
            raise IntegrationError(self.system, f"job {namespace}/{name} not found")
        return job

    def _roll_to(self, dep: _Deployment, image: str) -> None:
        """Change the pod template like the Deployment controller: reuse a matching ReplicaSet (its
        revision becomes the newest) or add one; a template that does not change starts nothing."""
        if image == dep.image:
            return
        newest = dep.revision + 1
        match = next((r for r in dep.revisions if r.image == image), None)
        if match is not None:
            match.number = newest
        else:
            dep.revisions.append(_Revision(newest, image))
        dep.image = image
        self._start_rollout(dep)

    def _start_rollout(self, dep: _Deployment) -> None:
        dep.rollout_started = self._clock()
        dep.rollout_started_wall = time.time()
        dep.rollout_fails, self._fail_next = self._fail_next, False


def _job_name(manifest: Mapping[str, Any]) -> str:
    name = (manifest.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise IntegrationError("simulated cluster", "job manifest has no metadata.name")
    return name


def _job_command(manifest: Mapping[str, Any]) -> str:
    try:
        container = manifest["spec"]["template"]["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        return "(no container)"
    words = [*(container.get("command") or []), *(container.get("args") or [])]
    return " ".join(str(w) for w in words) or str(container.get("image", "(no command)"))


class SimMetrics:
    """SIMULATED Prometheus (`MetricsSource` port): answers from knobs, not from a server.

    Query rule (first match wins, on the raw PromQL text):
      1. contains `orders_successful`                   -> `order_success` (a ratio, default 0.998)
      2. contains `http_request_duration_seconds`       -> p95 latency: `p95_latency_ms` (default 180) when
         the query multiplies by 1000 (`* 1000` / `1000 *`), else that value in seconds (0.18)
      3. contains `http_requests_total` and `5..` or `5xx` (a 5xx status matcher) -> `error_rate`
         (default 0.002)
      4. contains `http_requests_total` (no 5xx matcher) -> `request_rate` in requests/s (default 100)
      5. anything else -> None (no data: inconclusive)
    Knobs `nodata=True` makes every query answer None; `down=True` makes every query raise
    BackendUnavailable. Every query is recorded in `queries`.
    """

    label = LABEL
    system = "simulated Prometheus"
    DEFAULTS: dict[str, float | bool] = {"error_rate": 0.002, "p95_latency_ms": 180.0, "order_success": 0.998,
                                         "request_rate": 100.0, "nodata": False, "down": False}
    _TIMES_1000 = re.compile(r"\*\s*1000(\.0*)?\b|\b1000(\.0*)?\s*\*|\*\s*1e3\b|\b1e3\s*\*")

    def __init__(self, **knobs: float | bool) -> None:
        self._lock = threading.Lock()
        self._knobs: dict[str, float | bool] = dict(self.DEFAULTS)
        self.queries: list[str] = []
        for name, value in knobs.items():
            self.set(name, value)

    def set(self, name: str, value: float | bool) -> None:
        if name not in self.DEFAULTS:
            raise ValueError(f"unknown metrics knob {name!r}; known: {', '.join(self.DEFAULTS)}")
        if name in ("nodata", "down"):
            value = bool(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        else:
            value = float(value)
        with self._lock:
            self._knobs[name] = value

    def get(self, name: str) -> float | bool:
        with self._lock:
            return self._knobs[name]

    def query(self, promql: str) -> float | None:
        with self._lock:
            self.queries.append(promql)
            knobs = dict(self._knobs)
        if knobs["down"]:
            raise BackendUnavailable(self.system, "Prometheus is down (simulated)")
        if knobs["nodata"]:
            return None
        return self.answer(promql, knobs)

    @classmethod
    def answer(cls, promql: str, knobs: Mapping[str, float | bool]) -> float | None:
        """The value the rule above picks for `promql` from `knobs`, or None."""
        if "orders_successful" in promql:
            return float(knobs["order_success"])
        if "http_request_duration_seconds" in promql:
            ms = float(knobs["p95_latency_ms"])
            return ms if cls._TIMES_1000.search(promql) else ms / 1000.0
        if "http_requests_total" in promql and ("5.." in promql or "5xx" in promql):
            return float(knobs["error_rate"])
        if "http_requests_total" in promql:
            return float(knobs["request_rate"])
        return None


class SimTrading:
    """SIMULATED trading admin API (`TradingControls` port): state in memory, every call in `history`.

    Modes (`set_mode`, the console's `sim trading ok|fail|hang|lie`): "ok"; "fail" (every call raises
    BackendUnavailable, as a 503 would); "hang" (every call waits `hang_seconds`, as long as the real
    client's timeout, then raises BackendUnavailable; `set_mode("ok")` lets waiting calls through);
    "lie" (`stop` is accepted and recorded, but nothing halts: bots keep trading, orders stay open).
    """

    label = LABEL
    system = "simulated trading API"
    MODES = ("ok", "fail", "hang", "lie")

    def __init__(self, *, total_bots: int = 20, trading: bool = True, maintenance: bool = False,
                 open_positions: int = 7, pnl: float | None = 1234.5, hang_seconds: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.total_bots = total_bots
        self._trading = trading
        self._active = total_bots if trading else 0
        self._orders = self._active  # one resting order per trading bot
        self._positions = open_positions
        self._pnl = pnl
        self._halt: str | None = None
        self._maintenance = maintenance
        self.mode = "ok"
        self.hang_seconds = hang_seconds
        self._released = threading.Event()
        self.history: list[tuple[str, Any]] = []
        self.stop_modes: list[str] = []  # the mode of each stop in `history`, in order

    def set_mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"trading mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        with self._lock:
            self.mode = mode
            if mode == "hang":
                self._released = threading.Event()
            else:
                self._released.set()

    def _gate(self, what: str) -> None:
        """Apply the fail/hang modes to one call."""
        with self._lock:
            mode, released = self.mode, self._released
        if mode == "fail":
            raise BackendUnavailable(self.system, f"{what} answered HTTP 503 (simulated outage)")
        if mode == "hang" and not released.wait(self.hang_seconds):
            raise BackendUnavailable(self.system, f"{what} timed out after {self.hang_seconds:g} s (simulated hang)")

    def stop(self, reason: str, mode: StopMode = "graceful") -> None:
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, got {mode!r}")
        self._gate("stop")
        with self._lock:
            self.history.append(("stop", reason))
            self.stop_modes.append(mode)
            if self.mode == "lie":
                return
            self._trading, self._active, self._orders, self._halt = False, 0, 0, mode

    def start(self, fraction: float) -> None:
        value = validate_fraction(fraction)
        self._gate("start")
        with self._lock:
            self.history.append(("start", value))
            self._trading, self._halt = True, None
            self._active = max(1, min(self.total_bots, math.ceil(value * self.total_bots)))
            self._orders = self._active

    def status(self) -> TradingStatus:
        self._gate("status")
        with self._lock:
            return TradingStatus(self._trading, self._active, self.total_bots, self._maintenance,
                                 {"simulated": True}, open_orders=self._orders, open_positions=self._positions,
                                 pnl=self._pnl, halt=self._halt)

    def maintenance(self, on: bool) -> None:
        self._gate("maintenance")
        with self._lock:
            self.history.append(("maintenance", bool(on)))
            self._maintenance = bool(on)

    def health_detailed(self) -> HealthReport:
        self._gate("health/detailed")
        return HealthReport("healthy", {"database": "OK", "cache": "OK", "message_queue": "OK",
                                        "external_apis": "OK"})


class SimProbe:
    """SIMULATED health probe (`HealthProbe` port): every URL is healthy unless marked otherwise."""

    label = LABEL

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unhealthy: dict[str, str] = {}
        self.checks: list[str] = []

    def set_unhealthy(self, url_substring: str,
                      detail: str = "status: expected 'healthy', got 'unhealthy'") -> None:
        """URLs containing `url_substring` fail from now on, with `detail`."""
        with self._lock:
            self._unhealthy[url_substring] = detail

    def set_healthy(self, url_substring: str | None = None) -> None:
        """Heal one marked substring, or every URL when None."""
        with self._lock:
            if url_substring is None:
                self._unhealthy.clear()
            else:
                self._unhealthy.pop(url_substring, None)

    def check(self, url: str, expect: dict[str, Any]) -> ProbeResult:
        with self._lock:
            self.checks.append(url)
            detail = next((d for sub, d in self._unhealthy.items() if sub in url), None)
        if detail is not None:
            return ProbeResult(False, f"{detail} (simulated)")
        return ProbeResult(True, "healthy (simulated)")


@dataclass
class SimWorld:
    """One environment's SIMULATED backends."""

    cluster: SimCluster
    metrics: SimMetrics
    trading: SimTrading
    probe: SimProbe
    label: str = LABEL


def sim_world_for(environments: Mapping[str, Any], *, clock: Clock = time.monotonic,
                  rollout_seconds: float = 1.0) -> dict[str, SimWorld]:
    """One SimWorld per environment, its Deployment seeded at `<image>:v2.2.0` from objects with
    `.namespace .deployment .container .image` (`bot.config.Environment`)."""
    worlds: dict[str, SimWorld] = {}
    for name, env in environments.items():
        cluster = SimCluster(rollout_seconds=rollout_seconds, clock=clock)
        cluster.add_deployment(env.namespace, env.deployment, env.container, f"{env.image}:{SEED_TAG}")
        worlds[name] = SimWorld(cluster, SimMetrics(), SimTrading(), SimProbe())
    return worlds
