"""The traffic-router port of a canary (Argo Rollouts' `SetWeight`, one implementation per way of
splitting traffic): the canary strategy says *what share* the canary gets, the router says *how*.

* `ReplicaRatioRouter` (`router: replicas`): the Service selects stable and canary pods alike, so the
  share is the canary's fraction of the pods — the canary gets ceil(total × weight) replicas and the
  stable Deployment is scaled down by as many.
* `IstioRouter` (`router: istio`): the canary runs at full size and a VirtualService splits traffic
  between the stable and canary subsets by weight; the stable Deployment keeps its replicas.

Both are idempotent: a retried or resumed step calls them again with the same weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.core.ports import Cluster, WorkloadRef
from bot.core.workflows.deploy.model import CanaryPlan, Target

WaitRollout = Callable[[WorkloadRef, str], None]


@dataclass(frozen=True)
class CanaryPlacement:
    """Where the canary runs: next to the stable `target`, as Deployment `name`, with the new `image`;
    `total` is the stable Deployment's replica count before the run."""

    target: Target
    name: str
    image: str
    total: int
    labels: dict[str, str]

    @property
    def ref(self) -> WorkloadRef:
        return WorkloadRef(self.target.namespace, self.name, self.target.container)


class TrafficRouter(Protocol):
    @property
    def name(self) -> str:
        """"replicas", "istio": shown in the message and the audit log."""
        ...

    def set_weight(self, cluster: Cluster, canary: CanaryPlacement, weight: int, wait: WaitRollout) -> None:
        """Send `weight` % of the traffic to the canary (creating or resizing it as this router needs) and
        return once the canary's pods are ready."""
        ...

    def stable_replicas(self, canary: CanaryPlacement, weight: int) -> int:
        """The stable Deployment's replicas while the canary has `weight` % (for the run's effects)."""
        ...

    def all_to_stable(self, cluster: Cluster, canary: CanaryPlacement) -> bool:
        """Send every request to the stable Deployment at its full size again (promotion, rollback). The
        canary Deployment itself is left for the caller to delete. True when stable was resized."""
        ...


def canary_replicas(total: int, weight: int) -> int:
    return max(1, math.ceil(total * weight / 100))


class ReplicaRatioRouter:
    name = "replicas"

    def set_weight(self, cluster: Cluster, canary: CanaryPlacement, weight: int, wait: WaitRollout) -> None:
        t = canary.target
        n = canary_replicas(canary.total, weight)
        cluster.ensure_copy(t.ref, canary.name, canary.image, n, canary.labels)
        cluster.scale(t.namespace, t.deployment, max(0, canary.total - n))
        wait(canary.ref, canary.name)

    def stable_replicas(self, canary: CanaryPlacement, weight: int) -> int:
        return max(0, canary.total - canary_replicas(canary.total, weight))

    def all_to_stable(self, cluster: Cluster, canary: CanaryPlacement) -> bool:
        t = canary.target
        if cluster.replicas(t.namespace, t.deployment) == canary.total:
            return False
        cluster.scale(t.namespace, t.deployment, canary.total)
        return True


@dataclass(frozen=True)
class IstioRouter:
    virtual_service: str
    host: str
    stable_subset: str
    canary_subset: str
    name: str = "istio"

    def _weights(self, cluster: Cluster, namespace: str, weight: int) -> None:
        cluster.set_virtual_service_weights(namespace, self.virtual_service, self.host, self.stable_subset,
                                            self.canary_subset, weight)

    def set_weight(self, cluster: Cluster, canary: CanaryPlacement, weight: int, wait: WaitRollout) -> None:
        cluster.ensure_copy(canary.target.ref, canary.name, canary.image, canary.total, canary.labels)
        wait(canary.ref, canary.name)  # traffic only once the canary can take it
        self._weights(cluster, canary.target.namespace, weight)

    def stable_replicas(self, canary: CanaryPlacement, weight: int) -> int:
        return canary.total

    def all_to_stable(self, cluster: Cluster, canary: CanaryPlacement) -> bool:
        self._weights(cluster, canary.target.namespace, 0)
        return False


def router_for(canary: CanaryPlan, target: Target) -> TrafficRouter:
    """The router a canary plan names."""
    if canary.router == "istio":
        return IstioRouter(canary.virtual_service or target.deployment, canary.host or target.deployment,
                           canary.stable_subset, canary.canary_subset)
    return ReplicaRatioRouter()
