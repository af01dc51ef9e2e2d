"""Ports: what the core needs from the outside world, as typing.Protocols.

`integrations/` implements them (Kubernetes via the official client, Prometheus and the
trading admin API via httpx, HTTP health probes) and `integrations/simulated.py` provides
labelled simulated versions for the console. Every method either returns a value or raises
from the error tree (`IntegrationError` / `BackendUnavailable`); none returns None to mean failure.
Snapshots only: waiting and timeouts belong to the durable workflow engine, so a restarted
process can pick a wait up again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class WorkloadRef:
    namespace: str
    deployment: str
    container: str


@dataclass(frozen=True)
class RolloutStatus:
    """A Deployment's rollout, as `kubectl rollout status` judges it."""

    complete: bool  # observedGeneration caught up and updated == available == desired replicas
    failed: bool  # Progressing=False with reason ProgressDeadlineExceeded
    desired: int
    updated: int
    available: int
    message: str = ""


def image_tag(image: str) -> str | None:
    """The version part of an image reference: `reg:5000/app:v2.3` -> `v2.3`, `app@sha256:ab..` -> the
    digest (`sha256:ab..`), `app` (no tag) -> None."""
    if "@" in image:
        return image.split("@", 1)[1] or None
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] or None if ":" in last else None


@dataclass(frozen=True)
class WorkloadStatus:
    """What is actually running for a Deployment: its pod template's image, since when, and its rollout."""

    image: str  # the container's image in the Deployment's pod template
    rollout: RolloutStatus  # one look, as `kubectl rollout status`
    ready: int  # ready replicas (status.readyReplicas)
    desired: int  # spec.replicas
    revision: int | None = None  # deployment.kubernetes.io/revision of the current ReplicaSet
    #: when the current version took over: the newer of the current ReplicaSet's creationTimestamp and the
    #: time of the Deployment's Progressing condition naming that ReplicaSet (a rollback to an old
    #: ReplicaSet is dated by its rollout, not by the ReplicaSet's creation); None when unknown
    since: datetime | None = None
    since_source: str = ""  # what `since` was taken from, e.g. "rollout condition", "replicaset created"

    @property
    def tag(self) -> str | None:
        return image_tag(self.image)


@dataclass(frozen=True)
class JobStatus:
    succeeded: bool
    failed: bool
    active: int
    message: str = ""


class Cluster(Protocol):
    """The Kubernetes operations a deployment needs (namespaced, least privilege)."""

    def current_image(self, ref: WorkloadRef) -> str:
        """The container's image reference, e.g. `registry.example.com/trading-bot-swarm:v2.2`."""
        ...

    def set_image(self, ref: WorkloadRef, image: str) -> None:
        """Patch the container image (a no-op when it already is `image`)."""
        ...

    def rollout_status(self, ref: WorkloadRef) -> RolloutStatus: ...

    def workload_status(self, ref: WorkloadRef) -> WorkloadStatus:
        """What is running: image, since when, rollout state, ready/desired replicas (reads only)."""
        ...

    def replicas(self, namespace: str, deployment: str) -> int: ...

    def scale(self, namespace: str, deployment: str, replicas: int) -> None: ...

    def ensure_copy(self, ref: WorkloadRef, name: str, image: str, replicas: int,
                    labels: dict[str, str]) -> None:
        """Create or update Deployment `name` as a copy of `ref` with another image, replicas and extra
        labels (the `<name>-canary` Deployment, or the idle blue/green colour)."""
        ...

    def delete_deployment(self, namespace: str, name: str) -> None:
        """Delete if present (idempotent)."""
        ...

    def set_virtual_service_weights(self, namespace: str, name: str, host: str, stable_subset: str,
                                    canary_subset: str, canary_weight: int) -> None:
        """Istio VirtualService: route `canary_weight` % to the canary subset, the rest to stable."""
        ...

    def service_selector(self, namespace: str, service: str) -> dict[str, str]: ...

    def set_service_selector(self, namespace: str, service: str, selector: dict[str, str]) -> None: ...

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Create the Job (idempotent: an existing Job of the same name is left as it is)."""
        ...

    def job_status(self, namespace: str, name: str) -> JobStatus: ...

    def job_log_tail(self, namespace: str, name: str, lines: int = 40) -> str:
        """The last lines of the Job's (failed) pod log."""
        ...


class MetricsSource(Protocol):
    def query(self, promql: str) -> float | None:
        """Instant query; a single number, or None for no data / NaN. Raises BackendUnavailable."""
        ...


StopMode = Literal["graceful", "emergency"]
STOP_MODES: tuple[str, ...] = ("graceful", "emergency")


@dataclass(frozen=True)
class TradingStatus:
    """The swarm's trading state as its admin API reports it.

    `trading`: bots may open positions; `active_bots`: how many of them do. `open_orders`,
    `open_positions` and `pnl` are None when the API does not report them (a stop cannot be verified
    against a field that is missing). `halt` is the mode of the last stop still in force, if the API says.
    """

    trading: bool
    active_bots: int
    total_bots: int
    maintenance: bool
    detail: dict[str, Any] = field(default_factory=dict)
    open_orders: int | None = None
    open_positions: int | None = None
    pnl: float | None = None
    halt: str | None = None  # "graceful" | "emergency" | None


@dataclass(frozen=True)
class HealthReport:
    """`GET /health/detailed` (runbook 6.1): the overall status and each component's, e.g.
    {"database": "OK", "cache": "OK", "message_queue": "OK", "external_apis": "OK"}."""

    status: str
    components: dict[str, str] = field(default_factory=dict)
    http_status: int = 200

    @property
    def healthy(self) -> bool:
        return (200 <= self.http_status < 300 and self.status.lower() == "healthy"
                and all(v.upper() == "OK" for v in self.components.values()))


class TradingControls(Protocol):
    """The swarm's admin HTTP API."""

    def stop(self, reason: str, mode: StopMode = "graceful") -> None:
        """Stop trading. graceful (runbook 5.2 "stop trading gracefully"; freqtrade's stopentry + cancel):
        no new positions, resting orders cancelled, open positions kept and still managed. emergency
        (runbook 8.2 "emergency-stop"): every bot halts at once. Answering is not proof: verify with
        `status()`."""
        ...

    def start(self, fraction: float) -> None:
        """Start trading on `fraction` (0 < f <= 1) of the bots."""
        ...

    def status(self) -> TradingStatus: ...

    def maintenance(self, on: bool) -> None: ...

    def health_detailed(self) -> HealthReport:
        """`GET /health/detailed`. A non-2xx answer with a JSON body is a report (unhealthy), not an error;
        unreachable, timeouts and 5xx without a body raise BackendUnavailable."""
        ...


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


class HealthProbe(Protocol):
    def check(self, url: str, expect: dict[str, Any]) -> ProbeResult:
        """GET `url`; ok when it answers 2xx JSON containing every key/value of `expect`
        (nested dicts match recursively)."""
        ...


@dataclass
class EnvBackends:
    """The backends wired for one environment (real or simulated; `labels` says which)."""

    cluster: Cluster
    metrics: MetricsSource
    trading: TradingControls
    probe: HealthProbe
    labels: dict[str, str] = field(default_factory=dict)  # kubernetes/prometheus/trading_api -> description
