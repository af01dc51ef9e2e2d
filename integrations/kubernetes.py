"""Kubernetes through the official client: the `Cluster` port, namespaced calls only (deploy/rbac.yaml).

Every API call carries `_request_timeout`, and the clients built here do not retry behind our back
(urllib3 would otherwise repeat a timed-out GET up to three times). Vendor errors become our tree:

* connection refused/reset, timeouts, HTTP 429 and 5xx  -> `BackendUnavailable("kubernetes", ...)`
* any other API error (404 names the object, 403 hints at RBAC, 409 and 422 carry the server's message)
                                                        -> `IntegrationError("kubernetes", ...)`

`rollout_status` judges like `kubectl rollout status`. Rolling back means setting the previous image
again (the deploy engine knows it from the plan), so nothing here reads the ReplicaSet history.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from bot.config import KubernetesTarget
from bot.core.ports import JobStatus, RolloutStatus, WorkloadRef, WorkloadStatus
from bot.errors import BackendUnavailable, ConfigError, IntegrationError

SYSTEM = "kubernetes"
TOKEN_ENV = "CHATOPS_KUBERNETES_TOKEN"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
ISTIO_GROUP, ISTIO_VERSION, VIRTUAL_SERVICES = "networking.istio.io", "v1beta1", "virtualservices"
# Sent explicitly: left alone, v37 of the client picks json-patch for a list body and strategic merge
# for a dict (kubernetes/client/rest.py), and merge-patch for custom objects.
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_CONFLICT_RETRIES = 3
_MISSING, _TAKEN = 404, 409  # statuses some calls expect: Not Found; AlreadyExists / Conflict
_T = TypeVar("_T")
Json = dict[str, Any]


class KubernetesCluster:
    """`bot.core.ports.Cluster` over an `ApiClient`; `timeout` (seconds) bounds every API call."""

    label = "kubernetes"

    def __init__(self, api_client: client.ApiClient, *, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.api_client = api_client
        self.timeout = timeout
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # -- images and rollouts -----------------------------------------------------------------------

    def current_image(self, ref: WorkloadRef) -> str:
        return _image_of(self._deployment(ref.namespace, ref.deployment), ref)

    def set_image(self, ref: WorkloadRef, image: str) -> None:
        if _image_of(self._deployment(ref.namespace, ref.deployment), ref) == image:
            return
        # what `kubectl set image` sends: containers merge by name, the others stay untouched
        patch = {"spec": {"template": {"spec": {"containers": [{"name": ref.container, "image": image}]}}}}
        self._call(_what(ref), self.apps.patch_namespaced_deployment, ref.deployment, ref.namespace, patch,
                   _content_type=STRATEGIC_MERGE_PATCH)

    def rollout_status(self, ref: WorkloadRef) -> RolloutStatus:
        """`kubectl rollout status`, one look (no waiting)."""
        return _rollout_of(self._deployment(ref.namespace, ref.deployment), ref.deployment)

    def workload_status(self, ref: WorkloadRef) -> WorkloadStatus:
        """What is running: the template's image, the rollout (as `rollout_status`), ready/desired replicas,
        the Deployment's revision, and since when: the Progressing condition's lastUpdateTime (so a rollback
        onto an old ReplicaSet is dated by its rollout). One read: the Deployment."""
        dep = self._deployment(ref.namespace, ref.deployment)
        image = _image_of(dep, ref)
        rollout = _rollout_of(dep, ref.deployment)
        st = dep.status or client.V1DeploymentStatus()
        wanted = (_meta(dep).annotations or {}).get(REVISION_ANNOTATION)
        progressing = next((c for c in st.conditions or [] if c.type == "Progressing"), None)
        # the Role grants no list on ReplicaSets (deploy/rbac.yaml, least privilege): the Deployment's own
        # revision annotation and its Progressing condition say which rollout is current and since when
        revision = int(wanted) if wanted is not None and wanted.isdigit() else None
        since = progressing.last_update_time if progressing is not None else None
        source = f"rollout ({progressing.reason or 'Progressing'})" if since is not None and progressing else ""
        return WorkloadStatus(image, rollout, st.ready_replicas or 0, rollout.desired, revision, since, source)

    # -- replicas and copies -----------------------------------------------------------------------

    def replicas(self, namespace: str, deployment: str) -> int:
        replicas = self._deployment(namespace, deployment).spec.replicas
        return 1 if replicas is None else replicas

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self._call(f"deployment {namespace}/{deployment}", self.apps.patch_namespaced_deployment_scale,
                   deployment, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)

    def ensure_copy(self, ref: WorkloadRef, name: str, image: str, replicas: int,
                    labels: dict[str, str]) -> None:
        """Create or replace Deployment `name`: `ref`'s spec with `image`, `replicas`, and `labels` added to
        its labels, selector and pod labels (its pods are its own, yet still match `ref`'s Services)."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        source = self._plain(self._deployment(ref.namespace, ref.deployment))
        spec = source["spec"]
        spec["replicas"] = replicas
        spec.pop("paused", None)
        selector = spec.setdefault("selector", {})
        selector["matchLabels"] = {**selector.get("matchLabels", {}), **labels}
        pod_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        pod_labels = {**pod_meta.get("labels", {}), **labels}
        pod_meta["labels"] = {k: v for k, v in pod_labels.items() if k != HASH_LABEL}
        containers = spec["template"].get("spec", {}).get("containers", [])
        container = next((c for c in containers if c.get("name") == ref.container), None)
        if container is None:
            raise _no_container(ref, [c.get("name", "?") for c in containers])
        container["image"] = image
        metadata = {"name": name, "namespace": ref.namespace,
                    "labels": {**source["metadata"].get("labels", {}), **labels},
                    "annotations": {"swarm-chatops/copy-of": ref.deployment}}
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}
        what = f"deployment {ref.namespace}/{name}"
        for _ in range(_CONFLICT_RETRIES):
            existing = self._try(_MISSING, what, self.apps.read_namespaced_deployment, name, ref.namespace)
            if existing is None:
                created = self._try(_TAKEN, what, self.apps.create_namespaced_deployment, ref.namespace, body)
                if created is not None:
                    return
                continue  # someone created it meanwhile: replace that
            replacement = copy.deepcopy(body)
            revision = (_meta(existing).annotations or {}).get(REVISION_ANNOTATION)
            if revision is not None:
                replacement["metadata"]["annotations"][REVISION_ANNOTATION] = revision
            replacement["metadata"]["resourceVersion"] = _meta(existing).resource_version
            if self._try(_TAKEN, what, self.apps.replace_namespaced_deployment, name, ref.namespace,
                         replacement) is not None:
                return
        raise IntegrationError(SYSTEM, f"{what} kept changing while being updated; try again")

    def delete_deployment(self, namespace: str, name: str) -> None:
        what = f"deployment {namespace}/{name}"
        self._try(_MISSING, what, self.apps.delete_namespaced_deployment, name, namespace,
                  propagation_policy="Background")

    # -- traffic -----------------------------------------------------------------------------------

    def set_virtual_service_weights(self, namespace: str, name: str, host: str, stable_subset: str,
                                    canary_subset: str, canary_weight: int) -> None:
        if not 0 <= canary_weight <= 100:
            raise ValueError("canary_weight must be between 0 and 100")
        what = f"virtualservice {namespace}/{name}"
        where = (ISTIO_GROUP, ISTIO_VERSION, namespace, VIRTUAL_SERVICES, name)
        for _ in range(_CONFLICT_RETRIES):
            vs = cast(Json, self._call(what, self.custom.get_namespaced_custom_object, *where))
            http = _weighted_http(vs.get("spec", {}).get("http") or [], host, stable_subset, canary_subset,
                                  canary_weight)
            # a merge patch replaces the whole list; the resourceVersion turns a concurrent edit into
            # a 409 (and another round) instead of overwriting it
            patch = {"metadata": {"resourceVersion": vs.get("metadata", {}).get("resourceVersion")},
                     "spec": {"http": http}}
            if self._try(_TAKEN, what, self.custom.patch_namespaced_custom_object, *where, patch,
                         _content_type=MERGE_PATCH) is not None:
                return
        raise IntegrationError(SYSTEM, f"{what} kept changing while being updated; try again")

    def service_selector(self, namespace: str, service: str) -> dict[str, str]:
        what = f"service {namespace}/{service}"
        svc = self._call(what, self.core.read_namespaced_service, service, namespace)
        return dict((svc.spec.selector if svc.spec else None) or {})

    def set_service_selector(self, namespace: str, service: str, selector: dict[str, str]) -> None:
        # a merge patch could only add or change keys; JSON-patch "add" replaces the whole map
        patch = [{"op": "add", "path": "/spec/selector", "value": dict(selector)}]
        self._call(f"service {namespace}/{service}", self.core.patch_namespaced_service, service, namespace,
                   patch, _content_type=JSON_PATCH)

    # -- jobs --------------------------------------------------------------------------------------

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        body = copy.deepcopy(manifest)
        metadata = body.setdefault("metadata", {})
        if not metadata.get("name"):
            raise IntegrationError(SYSTEM, "the Job manifest has no metadata.name")
        metadata["namespace"] = namespace
        body.setdefault("apiVersion", "batch/v1")
        body.setdefault("kind", "Job")
        self._try(_TAKEN, f"job {namespace}/{metadata['name']}", self.batch.create_namespaced_job, namespace,
                  body)

    def job_status(self, namespace: str, name: str) -> JobStatus:
        job = self._call(f"job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace)
        st = job.status or client.V1JobStatus()
        active = st.active or 0
        conditions = {c.type: c for c in st.conditions or [] if c.status == "True"}
        for kind, succeeded, verb in (("Complete", True, "completed"), ("Failed", False, "failed")):
            if kind in conditions:
                text = ": ".join(filter(None, (conditions[kind].reason, conditions[kind].message)))
                message = f"job {name} {verb}" + (f": {text}" if text else "")
                return JobStatus(succeeded, not succeeded, active, message)
        return JobStatus(False, False, active, f"job {name} running: {active} active, {st.succeeded or 0} "
                                               f"succeeded, {st.failed or 0} failed pod(s)")

    def job_log_tail(self, namespace: str, name: str, lines: int = 40) -> str:
        if lines <= 0:
            return ""
        what = f"job {namespace}/{name}"
        job = self._call(what, self.batch.read_namespaced_job, name, namespace)
        selector = job.spec.selector if job.spec else None
        match = (selector.match_labels if selector else None) or {"job-name": name}
        pods = self._call(f"pods of {what}", self.core.list_namespaced_pod, namespace,
                          label_selector=_selector(match)).items
        if not pods:
            raise IntegrationError(SYSTEM, f"{what} has no pods (not started yet, or already cleaned up)")
        pod = max(pods, key=_log_preference)
        containers = pod.spec.containers if pod.spec else []
        pod_name = _meta(pod).name or ""
        log = self._call(f"log of pod {namespace}/{pod_name}", self.core.read_namespaced_pod_log, pod_name,
                         namespace, container=containers[0].name if containers else None, tail_lines=lines)
        return str(log)

    # -- plumbing ----------------------------------------------------------------------------------

    def _deployment(self, namespace: str, name: str) -> client.V1Deployment:
        what = f"deployment {namespace}/{name}"
        return self._call(what, self.apps.read_namespaced_deployment, name, namespace)

    def _plain(self, model: Any) -> Json:
        """A client model as the JSON the API speaks (camelCase keys, no nulls)."""
        plain = self.api_client.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
        return copy.deepcopy(cast(Json, plain or {}))

    def _call(self, what: str, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call the API with our timeout; every failure becomes our error tree."""
        try:
            return method(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except pydantic.ValidationError as exc:
            raise IntegrationError(SYSTEM, f"{what}: invalid request or answer: {_first_error(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            detail = _describe_transport_error(exc, self.timeout)
            raise BackendUnavailable(SYSTEM, f"{what}: {detail}") from exc

    def _try(self, expected: int, what: str, method: Callable[..., _T], *args: Any,
             **kwargs: Any) -> _T | None:
        """`_call`, except that the `expected` HTTP status (404 or 409) answers None."""
        try:
            return self._call(what, method, *args, **kwargs)
        except IntegrationError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == expected:
                return None
            raise


def cluster_from_target(target: KubernetesTarget, *, timeout: float = 10.0,
                        environ: Mapping[str, str] | None = None) -> KubernetesCluster:
    """Build the cluster from an environment's `kubernetes:` settings.

    `in_cluster` uses the pod's ServiceAccount; `kubeconfig`/`context` load a kubeconfig (the default one
    when only a context is named); `host` talks to that API URL with the bearer token from
    $CHATOPS_KUBERNETES_TOKEN, if set. Raises `ConfigError` when the configuration cannot be loaded.
    """
    env = os.environ if environ is None else environ
    cfg = client.Configuration()
    cfg.retries = False  # the workflow engine owns retries; urllib3's would multiply the timeout
    try:
        if target.in_cluster:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        elif target.kubeconfig or target.context:
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig, context=target.context, persist_config=False,
                client_configuration=cfg)
            return KubernetesCluster(api_client, timeout=timeout)
        elif target.host:
            cfg.host = target.host
            if env.get(TOKEN_ENV):
                cfg.api_key = {"BearerToken": env[TOKEN_ENV]}
                cfg.api_key_prefix = {"BearerToken": "Bearer"}
        else:
            raise ConfigError(["kubernetes: set one of in_cluster, kubeconfig, context or host"])
    except (ConfigException, OSError) as exc:
        raise ConfigError([f"kubernetes: cannot load the cluster configuration: {exc}"]) from exc
    return KubernetesCluster(client.ApiClient(cfg), timeout=timeout)


# -- helpers -------------------------------------------------------------------------------------------

def _rollout_of(dep: client.V1Deployment, name: str) -> RolloutStatus:
    """`kubectl rollout status` of a Deployment already read."""
    desired = 1 if dep.spec.replicas is None else dep.spec.replicas
    st = dep.status or client.V1DeploymentStatus()
    updated, available, total = st.updated_replicas or 0, st.available_replicas or 0, st.replicas or 0

    def status(message: str, *, complete: bool = False, failed: bool = False) -> RolloutStatus:
        return RolloutStatus(complete, failed, desired, updated, available, message)

    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if (_meta(dep).generation or 0) > (st.observed_generation or 0):
        return status("Waiting for deployment spec update to be observed...")
    progressing = next((c for c in st.conditions or [] if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        detail = f": {progressing.message}" if progressing.message else ""
        return status(f'deployment "{name}" exceeded its progress deadline{detail}', failed=True)
    if updated < desired:
        return status(f"{waiting}{updated} out of {desired} new replicas have been updated...")
    if total > updated:
        return status(f"{waiting}{total - updated} old replicas are pending termination...")
    if available < updated:
        return status(f"{waiting}{available} of {updated} updated replicas are available...")
    return status(f'deployment "{name}" successfully rolled out', complete=True)


def _translate(exc: ApiException, what: str) -> IntegrationError:
    status = exc.status or 0
    message = _status_message(exc)
    if status == 0 or status == 429 or status >= 500:
        return BackendUnavailable(SYSTEM, f"{what}: API server answered {status or 'nothing'}: {message}")
    if status == 404:
        return IntegrationError(SYSTEM, f"{what} not found", hint=message)
    if status == 401:
        return IntegrationError(SYSTEM, f"{what}: unauthorized (401): the credentials were refused",
                                hint=f"Check the kubeconfig, or ${TOKEN_ENV} for a `host:` target.")
    if status == 403:
        return IntegrationError(SYSTEM, f"{what}: forbidden (403): {message}",
                                hint="The bot's ServiceAccount lacks this permission; see deploy/rbac.yaml.")
    return IntegrationError(SYSTEM, f"{what}: {exc.reason or 'error'} ({status}): {message}")


def _status_message(exc: ApiException) -> str:
    """The `message` of the Status the API server answered with, else the raw body (shortened)."""
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return (body.strip() or str(exc.reason or "no details"))[:300]


def _describe_transport_error(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", None) or exc
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x, yet means refused/unresolvable
    timed_out = isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError)
    if timed_out and not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return f"no answer within {timeout:g}s ({type(reason).__name__})"
    return f"cannot reach the API server ({type(reason).__name__}: {reason})"


def _first_error(exc: pydantic.ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    return f"{'.'.join(str(p) for p in errors[0]['loc'])}: {errors[0]['msg']}"


def _what(ref: WorkloadRef) -> str:
    return f"deployment {ref.namespace}/{ref.deployment}"


def _meta(obj: Any) -> client.V1ObjectMeta:
    return cast(client.V1ObjectMeta, obj.metadata or client.V1ObjectMeta())


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _no_container(ref: WorkloadRef, names: list[str]) -> IntegrationError:
    return IntegrationError(SYSTEM, f'{_what(ref)} has no container "{ref.container}" '
                                    f"(containers: {', '.join(names) or 'none'})")


def _image_of(dep: client.V1Deployment, ref: WorkloadRef) -> str:
    containers = (dep.spec.template.spec.containers if dep.spec.template.spec else None) or []
    container = next((c for c in containers if c.name == ref.container), None)
    if container is None:
        raise _no_container(ref, [c.name for c in containers])
    if not container.image:
        raise IntegrationError(SYSTEM, f'{_what(ref)} container "{ref.container}" has no image')
    return container.image


def _log_preference(pod: client.V1Pod) -> tuple[bool, float, str]:
    """Failed pods first, then the newest (the name breaks ties between pods of the same second)."""
    meta = _meta(pod)
    created = meta.creation_timestamp.timestamp() if meta.creation_timestamp else 0.0
    return pod.status is not None and pod.status.phase == "Failed", created, meta.name or ""


def _weighted_http(http: list[Json], host: str, stable: str, canary: str, weight: int) -> list[Json]:
    """Every http rule routing to `host` gets stable = 100 - weight and canary = weight (a rule is added
    when none routes to `host`); its other destinations go, so weights sum to 100. Settings of existing
    destinations (e.g. port) are kept; rules for other hosts are untouched."""
    rules = copy.deepcopy(http)

    def route(old: list[Json]) -> list[Json]:
        mine = [d.get("destination", {}) for d in old if d.get("destination", {}).get("host") == host]
        by_subset = {d.get("subset"): d for d in mine}
        out = []
        for subset, share in ((stable, 100 - weight), (canary, weight)):
            dest = copy.deepcopy(by_subset.get(subset) or (mine[0] if mine else {"host": host}))
            out.append({"destination": {**dest, "subset": subset}, "weight": share})
        return out

    touched = False
    for rule in rules:
        if any(d.get("destination", {}).get("host") == host for d in rule.get("route") or []):
            rule["route"] = route(rule["route"])
            touched = True
    if not touched:
        rules.append({"route": route([])})
    return rules


def _revision(rs: client.V1ReplicaSet) -> int:
    try:
        return int((_meta(rs).annotations or {}).get(REVISION_ANNOTATION, ""))
    except ValueError:
        return -1
