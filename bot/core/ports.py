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
from typing import Any, Protocol


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


@dataclass(frozen=True)
class TradingStatus:
    trading: bool
    active_bots: int
    total_bots: int
    maintenance: bool
    detail: dict[str, Any] = field(default_factory=dict)


class TradingControls(Protocol):
    """The swarm's admin HTTP API."""

    def stop(self, reason: str) -> None: ...

    def start(self, fraction: float) -> None:
        """Start trading on `fraction` (0 < f <= 1) of the bots."""
        ...

    def status(self) -> TradingStatus: ...

    def maintenance(self, on: bool) -> None: ...


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
