"""REST semantics of the Kubernetes API stand-in (tests/harness/k8s_api.py): routing, verbs per resource,
create / replace / patch / delete with the API server's checks, the scale subresource and pod logs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ._k8s_controller import Controller
from ._k8s_patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, PatchError, apply_patch
from ._k8s_store import KINDS, ApiError, Json, Store, already_exists, bad_request, conflict, invalid

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<gv>apps/v1|batch/v1|networking\.istio\.io/v1beta1))/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>scale|log))?$"
)
_GROUP_VERSIONS = {"deployments": "apps/v1", "replicasets": "apps/v1", "jobs": "batch/v1",
                   "virtualservices": "networking.istio.io/v1beta1", "services": None, "pods": None}
#: (resource, sub-resource) -> allowed verbs; "list"/"create" act on the collection
VERBS = {
    ("deployments", None): {"get", "create", "update", "patch", "delete"},
    ("deployments", "scale"): {"get", "update", "patch"},
    ("replicasets", None): {"list", "get"},
    ("services", None): {"get", "create", "update", "patch"},
    ("jobs", None): {"get", "list", "create"},
    ("pods", None): {"get", "list"},
    ("pods", "log"): {"get"},
    ("virtualservices", None): {"get", "create", "update", "patch"},
}


class ResourceApi:
    """Answers one request against the store; callers hold `store.lock`. Raises `ApiError`."""

    def __init__(self, store: Store, controller: Controller) -> None:
        self.store = store
        self.controller = controller

    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               content_type: str) -> tuple[int, Any]:
        match = _PATH.match(path)
        resource = match["resource"] if match else ""
        if match is None or resource not in KINDS or match["gv"] != _GROUP_VERSIONS[resource]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name, sub = match["ns"], match["name"], match["sub"]
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}.get(method, "")
        if (name is None) != (verb in ("list", "create")) or verb not in VERBS.get((resource, sub), set()):
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        if verb == "list":
            return 200, self.store.list_body(resource, ns, query.get("labelSelector"))
        if verb == "create":
            return self.create(resource, ns, body)
        assert name is not None
        if sub == "log":
            return 200, self._log(ns, name, query)
        if sub == "scale":
            return self._scale(verb, ns, name, body, content_type)
        if verb == "get":
            return 200, self.store.get(resource, ns, name)
        if verb == "delete":
            obj = self.store.delete(resource, ns, name)
            self.controller.deleted(resource, obj)
            kind = KINDS[resource]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "group": kind.group, "kind": resource,
                                     "uid": obj["metadata"]["uid"]}}
        old = self.store.get(resource, ns, name)
        new = self._patched(resource, old, body, content_type) if verb == "patch" else body
        return 200, self._update(resource, ns, name, old, new)

    def create(self, resource: str, ns: str, body: Any) -> tuple[int, Json]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not a JSON object")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise bad_request("the namespace of the provided object does not match the namespace sent "
                              "on the request")
        if not meta.get("name"):
            raise invalid(resource, "", [("metadata.name",
                                          "Required value: name or generateName is required")])
        meta["namespace"] = ns
        for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            meta.pop(key, None)
        with self.store.lock:
            if self.store.find(resource, ns, meta["name"]) is not None:
                raise already_exists(resource, meta["name"])
            return 201, self.store.save(resource, self.controller.admit(resource, None, body))

    def _patched(self, resource: str, old: Json, body: Any, content_type: str) -> Json:
        mime = content_type.split(";", 1)[0].strip().lower()
        accepted = [JSON_PATCH, MERGE_PATCH]
        if resource != "virtualservices":  # custom resources have no strategic merge
            accepted.append(STRATEGIC_MERGE_PATCH)
        if mime not in accepted:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           f"accepted media types include: {', '.join(accepted)}")
        try:
            return apply_patch(mime, old, body)
        except PatchError as exc:
            raise ApiError(422, "Invalid",
                           f"the server rejected our request due to an error in our request: {exc}") from None

    def _update(self, resource: str, ns: str, name: str, old: Json, new: Any) -> Json:
        if not isinstance(new, dict):
            raise bad_request("the body of the request is not a JSON object")
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                              f"the URL ({name})")
        if meta.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]):
            raise conflict(resource, name)
        meta.update(name=name, namespace=ns, uid=old["metadata"]["uid"])
        return self.store.save(resource, self.controller.admit(resource, old, new))

    def _scale(self, verb: str, ns: str, name: str, body: Any, content_type: str) -> tuple[int, Json]:
        dep = self.store.get("deployments", ns, name)
        scale = _scale_of(dep)
        if verb == "get":
            return 200, scale
        new = self._patched("deployments", scale, body, content_type) if verb == "patch" else body
        replicas = (new.get("spec") or {}).get("replicas") if isinstance(new, dict) else None
        if not isinstance(replicas, int) or replicas < 0:
            raise invalid("deployments", name,
                          [("spec.replicas", f"Invalid value: {replicas!r}: must be >= 0")])
        updated = copy.deepcopy(dep)
        updated["spec"]["replicas"] = replicas
        return 200, _scale_of(self._update("deployments", ns, name, dep, updated))

    def _log(self, ns: str, name: str, query: dict[str, str]) -> str:
        pod = self.store.get("pods", ns, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container")
        if container is None and len(containers) > 1:
            raise bad_request(f"a container name must be specified for pod {name}, "
                              f"choose one of: {containers}")
        if container is not None and container not in containers:
            raise bad_request(f"container {container} is not valid for pod {name}")
        lines = self.controller.logs.get((ns, name), "").splitlines(keepends=True)
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) > 0 else []
        return "".join(lines)



def _scale_of(dep: Json) -> Json:
    meta = dep["metadata"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(dep["spec"]["selector"].get("matchLabels", {}).items()))
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k]
                     for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
        "spec": {"replicas": dep["spec"]["replicas"]},
        "status": {"replicas": dep.get("status", {}).get("replicas", 0), "selector": selector},
    }
