"""KubernetesCluster (integrations/kubernetes.py) through the unmodified official client against the
Kubernetes API stand-in over real HTTP (tests/harness/k8s_api.py), and deploy/rbac.yaml."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from bot.config import KubernetesTarget
from bot.core.ports import WorkloadRef
from bot.errors import BackendUnavailable, ConfigError, IntegrationError
from integrations.kubernetes import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    TOKEN_ENV,
    KubernetesCluster,
    cluster_from_target,
)
from tests.harness.k8s_api import FakeKubernetes

REPO = Path(__file__).resolve().parents[1]
TOKEN = "k8s-test-token"
NS = "trading-prod"
APP = "trading-bot-swarm"
REF = WorkloadRef(NS, APP, APP)
CANARY = f"{APP}-canary"


def image(tag: str) -> str:
    return f"registry.example.com/trading-bot-swarm:{tag}"


def job_manifest(name: str, backoff_limit: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "migrate", "image": image("v2.2"),
                            "command": ["python", "-m", "migrate"]}],
        }}},
    }


def rs_images(fake: FakeKubernetes, deployment: str = APP) -> list[tuple[str, str]]:
    """(revision, image) of the Deployment's ReplicaSets, oldest revision first."""
    return [(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
             rs["spec"]["template"]["spec"]["containers"][0]["image"])
            for rs in fake.replicasets(NS, deployment)]


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    """The API stand-in (token required, 0.5 s progress deadline) with the swarm rolled out at v2.1."""
    with FakeKubernetes(token=TOKEN, progress_deadline=0.5) as server:
        server.add_deployment(NS, APP, image("v2.1"), replicas=3)
        yield server


@pytest.fixture
def cluster(fake: FakeKubernetes) -> KubernetesCluster:
    """A KubernetesCluster built from a `host:` target, authenticated by $CHATOPS_KUBERNETES_TOKEN."""
    return cluster_from_target(KubernetesTarget(host=fake.url), timeout=2.0, environ={TOKEN_ENV: TOKEN})


def rolled_out(fake: FakeKubernetes, cluster: KubernetesCluster, ref: WorkloadRef = REF) -> None:
    fake.until(lambda: cluster.rollout_status(ref).complete)


# -- images and rollouts ---------------------------------------------------------------------------

def test_set_image_rolls_out_to_complete(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """set_image patches the container (strategic merge) and the rollout then completes with 3/3 available."""
    cluster.set_image(REF, image("v2.2"))
    rolled_out(fake, cluster)
    status = cluster.rollout_status(REF)
    assert (status.desired, status.updated, status.available, status.failed) == (3, 3, 3, False)
    assert status.message == f'deployment "{APP}" successfully rolled out'
    assert cluster.current_image(REF) == image("v2.2")
    patch = fake.wait_for(lambda r: r.is_("PATCH", f"/deployments/{APP}"))
    assert patch.content_type == STRATEGIC_MERGE_PATCH
    assert rs_images(fake) == [("1", image("v2.1")), ("2", image("v2.2"))]


def test_rollout_status_reads_progress_like_kubectl() -> None:
    """Tick by tick, rollout_status says what `kubectl rollout status` would print, then complete."""
    with FakeKubernetes(tick_interval=None) as manual:
        manual.add_deployment(NS, APP, image("v2.1"), replicas=3)
        cluster = cluster_from_target(KubernetesTarget(host=manual.url), timeout=2.0)
        cluster.set_image(REF, image("v2.2"))
        seen = [cluster.rollout_status(REF)]
        for _ in range(3):
            manual.tick()
            seen.append(cluster.rollout_status(REF))
    waiting = f'Waiting for deployment "{APP}" rollout to finish: '
    assert [s.message for s in seen] == [
        "Waiting for deployment spec update to be observed...",
        f"{waiting}2 out of 3 new replicas have been updated...",
        f"{waiting}1 old replicas are pending termination...",
        f'deployment "{APP}" successfully rolled out',
    ]
    assert [(s.updated, s.available, s.complete) for s in seen] == [(3, 3, False), (2, 3, False),
                                                                     (3, 3, False), (3, 3, True)]


def test_set_image_same_image_sends_no_patch(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """set_image to the image already running changes nothing."""
    cluster.set_image(REF, image("v2.1"))
    assert fake.requests_matching(lambda r: r.method != "GET") == []


def test_unknown_container_is_named(cluster: KubernetesCluster) -> None:
    """A container the Deployment does not have is an IntegrationError naming it and the ones it has."""
    with pytest.raises(IntegrationError, match=f'no container "sidecar" \\(containers: {APP}\\)'):
        cluster.current_image(WorkloadRef(NS, APP, "sidecar"))


def test_rollout_failure_detected_by_progress_deadline(fake: FakeKubernetes,
                                                       cluster: KubernetesCluster) -> None:
    """Pods that never get ready: after the progress deadline the rollout reports failed, not complete."""
    fake.fail_rollouts(APP)
    cluster.set_image(REF, image("v2.2-broken"))
    fake.until(lambda: cluster.rollout_status(REF).failed)
    status = cluster.rollout_status(REF)
    assert not status.complete
    assert "exceeded its progress deadline" in status.message
    assert status.available == 3  # the old pods kept serving


# -- copies, scaling, deletion ---------------------------------------------------------------------

def test_ensure_copy_creates_canary_with_its_own_selector(fake: FakeKubernetes,
                                                          cluster: KubernetesCluster) -> None:
    """The canary copy runs the new image with the extra label in its selector and pods, and rolls out."""
    cluster.ensure_copy(REF, CANARY, image("v2.2"), 1, {"track": "canary"})
    copy_ = fake.deployment(NS, CANARY)
    assert copy_["spec"]["selector"]["matchLabels"] == {"app": APP, "track": "canary"}
    assert copy_["spec"]["template"]["metadata"]["labels"] == {"app": APP, "track": "canary"}
    assert copy_["spec"]["replicas"] == 1
    rolled_out(fake, cluster, WorkloadRef(NS, CANARY, APP))
    assert cluster.current_image(WorkloadRef(NS, CANARY, APP)) == image("v2.2")
    assert fake.deployment(NS, APP)["spec"]["selector"]["matchLabels"] == {"app": APP}


def test_ensure_copy_replaces_an_existing_copy(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Calling ensure_copy again updates the same Deployment (image and replicas) in place."""
    cluster.ensure_copy(REF, CANARY, image("v2.2"), 1, {"track": "canary"})
    cluster.ensure_copy(REF, CANARY, image("v2.3"), 2, {"track": "canary"})
    assert cluster.current_image(WorkloadRef(NS, CANARY, APP)) == image("v2.3")
    assert cluster.replicas(NS, CANARY) == 2
    assert len(fake.requests_matching(lambda r: r.method == "POST")) == 1
    assert len(fake.requests_matching(lambda r: r.is_("PUT", f"/deployments/{CANARY}"))) == 1


def test_scale_sets_replicas(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """scale goes through the scale subresource and replicas reads it back."""
    cluster.scale(NS, APP, 5)
    assert cluster.replicas(NS, APP) == 5
    assert fake.wait_for(lambda r: r.is_("PATCH", f"/deployments/{APP}/scale")).content_type == MERGE_PATCH
    rolled_out(fake, cluster)


def test_delete_deployment_is_idempotent(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Deleting the canary removes it and its ReplicaSets; deleting it again is fine."""
    cluster.ensure_copy(REF, CANARY, image("v2.2"), 1, {"track": "canary"})
    rolled_out(fake, cluster, WorkloadRef(NS, CANARY, APP))
    cluster.delete_deployment(NS, CANARY)
    cluster.delete_deployment(NS, CANARY)
    assert fake.replicasets(NS, CANARY) == []
    with pytest.raises(IntegrationError, match=f"deployment {NS}/{CANARY} not found"):
        cluster.replicas(NS, CANARY)


# -- traffic ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [10, 25, 50, 75, 100])
def test_virtual_service_weights(fake: FakeKubernetes, cluster: KubernetesCluster, weight: int) -> None:
    """Each canary step of runbook 8.6 sets canary = w and stable = 100 - w on the host's route."""
    fake.add_virtual_service(NS, APP, APP)
    cluster.set_virtual_service_weights(NS, APP, APP, "stable", "canary", weight)
    route = fake.virtual_service(NS, APP)["spec"]["http"][0]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("stable", 100 - weight),
                                                                           ("canary", weight)]
    assert {d["destination"]["host"] for d in route} == {APP}
    assert fake.wait_for(lambda r: r.method == "PATCH").content_type == MERGE_PATCH


def test_virtual_service_route_is_built_when_missing(fake: FakeKubernetes,
                                                     cluster: KubernetesCluster) -> None:
    """A VirtualService with no route to the host gets one; rules for other hosts stay as they were."""
    other = {"route": [{"destination": {"host": "dashboard", "subset": "v1"}, "weight": 100}]}
    fake.add_virtual_service(NS, APP, APP, http=[other])
    cluster.set_virtual_service_weights(NS, APP, APP, "stable", "canary", 25)
    http = fake.virtual_service(NS, APP)["spec"]["http"]
    assert http[0] == other
    assert http[1]["route"] == [{"destination": {"host": APP, "subset": "stable"}, "weight": 75},
                                {"destination": {"host": APP, "subset": "canary"}, "weight": 25}]


def test_virtual_service_concurrent_edit_is_retried(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """A 409 on the weight patch (someone edited the VirtualService) means read again and patch again."""
    fake.add_virtual_service(NS, APP, APP)
    fake.error_next(1, status=409, method="PATCH")
    cluster.set_virtual_service_weights(NS, APP, APP, "stable", "canary", 50)
    assert [r.status for r in fake.requests_matching(lambda r: r.method == "PATCH")] == [409, 200]
    route = fake.virtual_service(NS, APP)["spec"]["http"][0]["route"]
    assert [d["weight"] for d in route] == [50, 50]


def test_service_selector_switch_removes_keys(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Switching the blue-green selector replaces it exactly: keys absent from the new one disappear."""
    fake.add_service(NS, APP, {"app": APP, "version": "blue", "track": "stable"})
    assert cluster.service_selector(NS, APP) == {"app": APP, "version": "blue", "track": "stable"}
    cluster.set_service_selector(NS, APP, {"app": APP, "version": "green"})
    assert cluster.service_selector(NS, APP) == {"app": APP, "version": "green"}
    assert fake.wait_for(lambda r: r.method == "PATCH").content_type == JSON_PATCH


# -- jobs ------------------------------------------------------------------------------------------

def test_job_succeeds(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """A created Job runs and then reports succeeded; its pod's log is readable."""
    fake.set_job_log("migrate-", "applying 0042\nmigrations done\n")
    cluster.create_job(NS, job_manifest("migrate-v2-2"))
    fake.until(lambda: cluster.job_status(NS, "migrate-v2-2").succeeded)
    status = cluster.job_status(NS, "migrate-v2-2")
    assert (status.failed, status.active) == (False, 0)
    assert cluster.job_log_tail(NS, "migrate-v2-2", lines=1) == "migrations done\n"


def test_job_failure_reports_log_tail(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """A failing Job reports failed after its retries, and the log tail comes from a failed pod."""
    fake.fail_jobs("migrate-", log="".join(f"step {i}\n" for i in range(50)) + "ERROR: relation missing\n")
    cluster.create_job(NS, job_manifest("migrate-v2-2", backoff_limit=1))
    fake.until(lambda: cluster.job_status(NS, "migrate-v2-2").failed)
    status = cluster.job_status(NS, "migrate-v2-2")
    assert not status.succeeded and "BackoffLimitExceeded" in status.message
    assert cluster.job_log_tail(NS, "migrate-v2-2", lines=2) == "step 49\nERROR: relation missing\n"
    assert len(fake.pods(NS, "job-name=migrate-v2-2")) == 2  # first try and one retry


def test_create_job_is_idempotent(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Creating a Job that already exists leaves it as it is."""
    cluster.create_job(NS, job_manifest("smoke-v2-2"))
    uid = fake.job(NS, "smoke-v2-2")["metadata"]["uid"]
    cluster.create_job(NS, job_manifest("smoke-v2-2"))
    assert fake.job(NS, "smoke-v2-2")["metadata"]["uid"] == uid
    assert [r.status for r in fake.requests_matching(lambda r: r.method == "POST")] == [201, 409]


def test_invalid_job_manifest_is_integration_error(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """A manifest field Kubernetes does not know is refused before anything is sent, and named."""
    manifest = job_manifest("migrate-v2-2")
    manifest["spec"]["backofLimit"] = 3
    with pytest.raises(IntegrationError, match="backofLimit"):
        cluster.create_job(NS, manifest)
    assert fake.requests == []


# -- errors ----------------------------------------------------------------------------------------

def test_server_error_is_backend_unavailable(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """An HTTP 503 from the API server is BackendUnavailable."""
    fake.error_next(1, status=503)
    with pytest.raises(BackendUnavailable, match="503"):
        cluster.current_image(REF)


def test_timeout_is_backend_unavailable_without_retries(fake: FakeKubernetes) -> None:
    """A late answer is BackendUnavailable after one timeout, with no hidden retry of the request."""
    quick = cluster_from_target(KubernetesTarget(host=fake.url), timeout=0.3, environ={TOKEN_ENV: TOKEN})
    fake.delay_next(1, seconds=3.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="no answer within 0.3s"):
        quick.current_image(REF)
    assert time.monotonic() - started < 1.5
    assert len(fake.requests) == 1


def test_unreachable_api_is_backend_unavailable(fake: FakeKubernetes) -> None:
    """Nothing listening at the host is BackendUnavailable."""
    url = fake.url
    fake.stop()
    unreachable = cluster_from_target(KubernetesTarget(host=url), timeout=1.0)
    with pytest.raises(BackendUnavailable, match="cannot reach the API server"):
        unreachable.current_image(REF)


def test_missing_deployment_is_integration_error_naming_it(cluster: KubernetesCluster) -> None:
    """A 404 is an IntegrationError (not BackendUnavailable) that names the Deployment."""
    with pytest.raises(IntegrationError, match=f"deployment {NS}/absent not found") as caught:
        cluster.current_image(WorkloadRef(NS, "absent", APP))
    assert not isinstance(caught.value, BackendUnavailable)


def test_forbidden_points_at_rbac(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """A 403 is an IntegrationError whose hint points at deploy/rbac.yaml."""
    fake.error_next(1, status=403)
    with pytest.raises(IntegrationError, match="forbidden") as caught:
        cluster.current_image(REF)
    assert "deploy/rbac.yaml" in (caught.value.hint or "")


def test_missing_token_is_unauthorized(fake: FakeKubernetes) -> None:
    """Without $CHATOPS_KUBERNETES_TOKEN the stand-in refuses the call and the error says why."""
    anonymous = cluster_from_target(KubernetesTarget(host=fake.url), environ={})
    with pytest.raises(IntegrationError, match="unauthorized"):
        anonymous.current_image(REF)


def test_target_without_a_way_in_is_config_error() -> None:
    """A `kubernetes:` block naming no way to reach a cluster is a ConfigError."""
    with pytest.raises(ConfigError, match="in_cluster, kubeconfig, context or host"):
        cluster_from_target(KubernetesTarget())


def test_kubeconfig_target_reaches_the_cluster(fake: FakeKubernetes, tmp_path: Path) -> None:
    """A kubeconfig file with a named context is loaded (new_client_from_config) and used."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "bot", "user": {"token": TOKEN}}],
        "contexts": [{"name": "swarm", "context": {"cluster": "fake", "user": "bot", "namespace": NS}},
                     {"name": "other", "context": {"cluster": "fake", "user": "nobody"}}],
    }))
    from_file = cluster_from_target(KubernetesTarget(kubeconfig=str(kubeconfig), context="swarm"))
    assert from_file.current_image(REF) == image("v2.1")
    assert from_file.api_client.configuration.retries is False


def test_client_is_the_unmodified_official_client(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """The official client's own classes talk to the stand-in, and its installed files match their RECORD."""
    assert type(cluster.api_client) is kubernetes.client.ApiClient
    assert type(cluster.api_client.rest_client) is kubernetes.client.rest.RESTClientObject
    dist = importlib.metadata.distribution("kubernetes")
    checked = 0
    for entry in dist.files or []:
        path = str(entry)
        if entry.hash is None or not (path.startswith("kubernetes/client/") and path.endswith(".py")):
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(entry.read_binary()).digest()).rstrip(b"=").decode()
        assert (entry.hash.mode, digest) == ("sha256", entry.hash.value), f"{entry} was modified"
        checked += 1
    assert checked > 100
    cluster.current_image(REF)
    agent = fake.wait_for(lambda r: r.method == "GET").header("User-Agent") or ""
    assert agent.startswith(f"OpenAPI-Generator/{dist.version}/python")


def test_every_api_call_has_a_timeout(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Every request the cluster sends carries the configured `_request_timeout`."""
    timeouts: list[Any] = []
    real_request = cluster.api_client.rest_client.request

    def spy(*args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs.get("_request_timeout"))
        return real_request(*args, **kwargs)

    cluster.api_client.rest_client.request = spy  # type: ignore[method-assign]
    exercise_every_method(fake, cluster)
    assert len(timeouts) == len(fake.requests) > 15
    assert set(timeouts) == {cluster.timeout}


# -- RBAC ------------------------------------------------------------------------------------------

def exercise_every_method(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Call every `Cluster` method at least once (each write path included)."""
    fake.add_service(NS, APP, {"app": APP, "version": "blue"})
    fake.add_virtual_service(NS, APP, APP)
    cluster.set_image(REF, image("v2.2"))
    rolled_out(fake, cluster)
    cluster.replicas(NS, APP)
    cluster.scale(NS, APP, 4)
    cluster.ensure_copy(REF, CANARY, image("v2.2"), 1, {"track": "canary"})
    cluster.ensure_copy(REF, CANARY, image("v2.3"), 1, {"track": "canary"})
    cluster.delete_deployment(NS, CANARY)
    cluster.set_virtual_service_weights(NS, APP, APP, "stable", "canary", 10)
    cluster.set_service_selector(NS, APP, cluster.service_selector(NS, APP) | {"version": "green"})
    cluster.create_job(NS, job_manifest("smoke-v2-2"))
    fake.until(lambda: cluster.job_status(NS, "smoke-v2-2").succeeded)
    cluster.job_log_tail(NS, "smoke-v2-2")




def rbac_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if doc]


def role_grants() -> set[tuple[str, str, str]]:
    (role,) = [doc for doc in rbac_documents() if doc["kind"] == "Role"]
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_is_namespaced_without_wildcards() -> None:
    """deploy/rbac.yaml: one namespace, a Role bound to the bot's account, no `*`, nothing cluster-wide."""
    docs = rbac_documents()
    assert sorted(doc["kind"] for doc in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    assert len({doc["metadata"]["namespace"] for doc in docs}) == 1
    assert all("*" not in part for grant in role_grants() for part in grant)
    (binding,) = [doc for doc in docs if doc["kind"] == "RoleBinding"]
    (account,) = [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


def test_rbac_allows_every_method_of_the_adapter(fake: FakeKubernetes, cluster: KubernetesCluster) -> None:
    """Every request any `Cluster` method sends, on the deploy's object names, is allowed by the Role
    (resourceNames included); tests/test_rbac_manifest.py checks each rule is needed by real deploys."""
    from tests.test_rbac_manifest import allowed

    exercise_every_method(fake, cluster)
    refused = sorted({r.rbac for r in fake.requests if not allowed(r.rbac)}, key=str)
    assert not refused, f"deploy/rbac.yaml does not allow: {refused}"
