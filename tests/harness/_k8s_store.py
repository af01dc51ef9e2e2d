"""Object storage and API errors for the Kubernetes API stand-in (tests/harness/k8s_api.py).

Objects are kept as plain JSON dicts keyed by (resource, namespace, name), each with a uid, a
resourceVersion from one counter and a creationTimestamp, as the API server would set them.
Errors are `ApiError`s, rendered as `Status` objects with the codes and reasons the real server uses.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._k8s_patch import parse_selector

Json = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """How one resource is named in URLs, in Status messages and in `kind`/`apiVersion`."""

    resource: str
    group: str
    kind: str
    api_version: str

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `services`, ... (the name the API server uses in messages)."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


KINDS = {
    k.resource: k
    for k in (
        Kind("deployments", "apps", "Deployment", "apps/v1"),
        Kind("replicasets", "apps", "ReplicaSet", "apps/v1"),
        Kind("services", "", "Service", "v1"),
        Kind("jobs", "batch", "Job", "batch/v1"),
        Kind("pods", "", "Pod", "v1"),
        Kind("virtualservices", "networking.istio.io", "VirtualService", "networking.istio.io/v1beta1"),
    )
}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API failure; `status()` is the `Status` object the server answers with."""

    def __init__(self, code: int, reason: str, message: str, details: Json | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Json:
        body: Json = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(kind: Kind, name: str) -> Json:
    return {"name": name, "group": kind.group, "kind": kind.resource}


def not_found(resource: str, name: str) -> ApiError:
    kind = KINDS[resource]
    return ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found', _details(kind, name))


def already_exists(resource: str, name: str) -> ApiError:
    kind = KINDS[resource]
    return ApiError(409, "AlreadyExists", f'{kind.qualified} "{name}" already exists', _details(kind, name))


def conflict(resource: str, name: str) -> ApiError:
    kind = KINDS[resource]
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(kind, name),
    )


def invalid(resource: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    kind = KINDS[resource]
    text = ", ".join(f"{field}: {message}" for field, message in causes)
    details = _details(kind, name) | {
        "kind": kind.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
    }
    message = f'{kind.kind}.{kind.group or "core"} "{name}" is invalid: {text}'
    return ApiError(422, "Invalid", message, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


class Store:
    """Thread-safe object storage; callers hold `lock` across read-modify-write sequences."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], Json] = {}
        self._versions = itertools.count(1000)

    def find(self, resource: str, namespace: str, name: str) -> Json | None:
        """The stored object itself (no copy), or None."""
        with self.lock:
            return self._objects.get((resource, namespace, name))

    def get(self, resource: str, namespace: str, name: str) -> Json:
        """A copy of the object; `ApiError` 404 when absent."""
        with self.lock:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def items(self, resource: str, namespace: str | None = None, selector: str | None = None) -> list[Json]:
        """The stored objects themselves (no copies), by name, optionally filtered by a label selector."""
        try:
            matches = parse_selector(selector or "")
        except ValueError as exc:
            raise bad_request(f"unable to parse requirement: {exc}") from None
        with self.lock:
            found = [
                obj for (res, ns, _), obj in self._objects.items()
                if res == resource and (namespace is None or ns == namespace)
                and matches(obj["metadata"].get("labels") or {})
            ]
        return sorted(found, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    def list_body(self, resource: str, namespace: str, selector: str | None) -> Json:
        kind = KINDS[resource]
        return {
            "kind": f"{kind.kind}List", "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": copy.deepcopy(self.items(resource, namespace, selector)),
        }

    def save(self, resource: str, obj: Json) -> Json:
        """Store `obj` with fresh bookkeeping metadata (uid, resourceVersion, ...); returns a copy."""
        kind = KINDS[resource]
        meta = obj.setdefault("metadata", {})
        with self.lock:
            key = (resource, meta["namespace"], meta["name"])
            old = self._objects.get(key)
            meta["uid"] = old["metadata"]["uid"] if old else meta.get("uid") or str(uuid.uuid4())
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else now_iso()
            meta["resourceVersion"] = str(next(self._versions))
            obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> Json:
        with self.lock:
            obj = self._objects.pop((resource, namespace, name), None)
        if obj is None:
            raise not_found(resource, name)
        return obj
