"""A Kubernetes API stand-in over real HTTP, for the official client unchanged.

``FakeKubernetes`` serves the part of the API that ``integrations/kubernetes.py`` uses on ``127.0.0.1``
(free port) from a stdlib ``ThreadingHTTPServer``; point ``Configuration.host`` at ``fake.url``::

    with FakeKubernetes(token="t") as fake:
        fake.add_deployment("prod", "trading-bot-swarm", "registry.example.com/tbs:v2.1")
        cluster = cluster_from_target(KubernetesTarget(host=fake.url), environ={TOKEN_ENV: "t"})
        cluster.set_image(ref, "registry.example.com/tbs:v2.2")
        fake.until(lambda: cluster.rollout_status(ref).complete)

Served: deployments (get, create, replace, patch, delete, scale get/patch/replace), replicasets (list,
get), services (get, create, replace, patch), jobs (create, get, list), pods (get, list, log) and Istio
``networking.istio.io/v1beta1`` virtualservices (get, create, replace, patch). Lists take equality label
selectors. PATCH honours the Content-Type: json-patch, merge-patch, strategic-merge-patch (415 for the
custom resource, as the real server answers). Errors are ``Status`` objects (404 NotFound, 409
AlreadyExists/Conflict, 422 Invalid, ...). A patch or replace carrying a stale resourceVersion gets 409.

A simulated controller (``tests/harness/_k8s_controller.py``) ticks every ``tick_interval`` seconds
(``None``: only on ``tick()``), rolls Deployments out over ``rollout_ticks`` ticks through
ReplicaSets with revisions, and runs Jobs. Knobs: ``fail_rollouts``, ``heal_rollouts``, ``fail_jobs``,
``set_job_log``, ``error_next`` (answer a Status with that code, acting on nothing) and ``delay_next``
(act on the request, then hold the answer: a client timeout leaves the change made, as for real);
``clear_faults`` forgets the pending ones.

Every request, faulted ones included, is recorded as a ``Request`` with its arrival time (``at`` from
``time.time()``, ``monotonic`` for intervals); ``wait_for`` blocks on a condition variable until one
matches (e.g. to time when a rollback's PATCH reached the API), ``until`` re-checks a predicate after
each controller tick. Seed with ``add_deployment`` (already rolled out, revision 1), ``add_service`` and
``add_virtual_service``; inspect with ``deployment``, ``replicasets``, ``service``, ``virtual_service``,
``job`` and ``pods``.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._k8s_controller import REVISION, Controller, Settings
from ._k8s_resources import ResourceApi
from ._k8s_store import ApiError, Json, Store

__all__ = ["FakeKubernetes", "Request"]

_POLL_INTERVAL = 0.02
_FAULT_REASONS = {
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "injected fault: access denied"),
    409: ("Conflict", "injected fault: the object has been modified"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "an error on the server prevented the request from succeeding"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}


@dataclass(frozen=True)
class Request:
    """One recorded request; ``body`` is parsed JSON, the raw text, or None."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float  # time.time() on arrival
    monotonic: float  # time.monotonic() on arrival, for measuring intervals
    status: int
    faulted: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def content_type(self) -> str | None:
        return self.header("Content-Type")

    def is_(self, method: str, path_suffix: str) -> bool:
        """Shorthand for predicates: ``r.is_("PATCH", "/deployments/web")``."""
        return self.method == method and self.path.endswith(path_suffix)

    @property
    def rbac(self) -> tuple[str, str, str, str | None]:
        """(apiGroup, resource[/subresource], verb, name or None) as the API server's RBAC authorizer sees
        this request: GET on a collection is `list`, on an object `get`; POST `create`, PUT `update`."""
        parts = self.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[parts.index("namespaces") + 2:]  # resource [name [subresource]]
        resource = "/".join([rest[0]] + rest[2:3])
        name = rest[1] if len(rest) > 1 else None
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[self.method]
        return group, resource, verb, name


DROP = 0  # a fault "status" meaning: close the connection without an answer


@dataclass
class _Fault:
    remaining: int
    status: int = 503
    seconds: float = 0.0
    method: str | None = None
    path_contains: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and (self.path_contains is None or self.path_contains in path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKubernetes


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload, content_type, delay = self.server.fake._handle(
            self.command, self.path, dict(self.headers.items()), raw
        )
        if delay:
            self.server.fake._stopping.wait(delay)
        if status == DROP:  # the connection goes away without an answer (a dropped connection / reset)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout) before the answer came
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class FakeKubernetes:
    """Kubernetes API stand-in with a simulated controller; see the module docstring."""

    def __init__(self, *, token: str | None = None, tick_interval: float | None = 0.05,
                 rollout_ticks: int = 4, job_ticks: int = 3, progress_deadline: float = 1.0) -> None:
        self.token = token
        self.tick_interval = tick_interval
        self.store = Store()
        self.controller = Controller(self.store, Settings(rollout_ticks, job_ticks, progress_deadline))
        self.api = ResourceApi(self.store, self.controller)
        self.requests: list[Request] = []
        self._errors: list[_Fault] = []
        self._delays: list[_Fault] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeKubernetes:
        """Bind ``127.0.0.1:<free port>``, serve and run the controller in daemon threads (idempotent)."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.fake = self
            self._threads = [threading.Thread(target=self._server.serve_forever, name="FakeKubernetes",
                                              kwargs={"poll_interval": _POLL_INTERVAL}, daemon=True)]
            if self.tick_interval is not None:
                self._threads.append(threading.Thread(target=self._run_controller, name="FakeKubernetes-ctl",
                                                      daemon=True))
            for thread in self._threads:
                thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and ticking; delayed answers are cut short (idempotent)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``Configuration.host``."""
        if self._server is None:
            raise RuntimeError("FakeKubernetes is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _run_controller(self) -> None:
        assert self.tick_interval is not None
        while not self._stopping.wait(self.tick_interval):
            self.tick()

    # ------------------------------------------------------------------ controller, knobs, waiting
    def tick(self, n: int = 1) -> None:
        """Advance the simulated controllers ``n`` steps now."""
        for _ in range(n):
            self.controller.tick()
            with self._cond:
                self._cond.notify_all()

    def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Re-check ``predicate`` (it may call the API) after every tick; ``TimeoutError`` at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not reached within {timeout}s ({self.controller.ticks} ticks)")
            with self._cond:
                self._cond.wait_for(self._ticked_since(self.controller.ticks), remaining)

    def _ticked_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self.controller.ticks > seen

    def fail_rollouts(self, deployment: str, *, image: str | None = None) -> None:
        """New ReplicaSets of ``deployment`` (only those running ``image``, if given) never get ready."""
        with self.store.lock:
            self.controller.failing_rollouts[deployment] = image

    def heal_rollouts(self, deployment: str) -> None:
        """Undo ``fail_rollouts``: stuck ReplicaSets of ``deployment`` start getting ready."""
        with self.store.lock:
            self.controller.failing_rollouts.pop(deployment, None)
            self.controller.heal(None, deployment)

    def fail_jobs(self, name_prefix: str, log: str = "Error: job failed\n") -> None:
        """Pods of Jobs whose name starts with ``name_prefix`` fail, logging ``log``."""
        with self.store.lock:
            self.controller.failing_jobs[name_prefix] = log

    def set_job_log(self, name_prefix: str, log: str) -> None:
        """What succeeding pods of Jobs named ``name_prefix...`` log."""
        with self.store.lock:
            self.controller.job_logs[name_prefix] = log

    def error_next(self, n: int = 1, status: int = 503, *, method: str | None = None,
                   path_contains: str | None = None) -> None:
        """Answer the next ``n`` matching requests with ``status`` (a Status body) without acting on them."""
        with self._cond:
            self._errors.append(_Fault(n, status=status, method=method, path_contains=path_contains))

    def clear_faults(self) -> None:
        """Forget every armed error, drop and delay."""
        with self._cond:
            self._errors.clear()
            self._delays.clear()

    def drop_next(self, n: int = 1, *, method: str | None = None, path_contains: str | None = None) -> None:
        """Close the connection of the next ``n`` matching requests without answering (not acting on them)."""
        with self._cond:
            self._errors.append(_Fault(n, status=DROP, method=method, path_contains=path_contains))

    def delay_next(self, n: int = 1, seconds: float = 1.0, *, method: str | None = None,
                   path_contains: str | None = None) -> None:
        """Hold the answer to the next ``n`` matching requests for ``seconds`` (the request still takes
        effect, like a real timeout where the server acted but the answer came too late)."""
        with self._cond:
            self._delays.append(_Fault(n, seconds=seconds, method=method, path_contains=path_contains))

    def wait_for(self, predicate: Callable[[Request], bool], timeout: float = 5.0, *,
                 count: int = 1) -> Request:
        """Block until ``count`` recorded requests match; return the ``count``-th. Raises ``TimeoutError``."""
        with self._cond:
            if self._cond.wait_for(lambda: sum(map(predicate, self.requests)) >= count, timeout):
                return [r for r in self.requests if predicate(r)][count - 1]
            seen = [f"{r.method} {r.path}" for r in self.requests]
        raise TimeoutError(f"expected {count} matching request(s) within {timeout}s; recorded: {seen}")

    def requests_matching(self, predicate: Callable[[Request], bool]) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if predicate(r)]

    # ------------------------------------------------------------------ seeding and inspection
    def add_deployment(self, namespace: str, name: str, image: str, replicas: int = 3, *,
                       container: str | None = None, labels: dict[str, str] | None = None) -> Json:
        """A Deployment already rolled out (revision 1, all replicas available); returns it."""
        labels = dict(labels or {"app": name})
        body = {
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)},
                                  "spec": {"containers": [{"name": container or name, "image": image}]}}},
        }
        with self.store.lock:
            self.api.create("deployments", namespace, body)
            stored = self.store.find("deployments", namespace, name)
            assert stored is not None
            self.controller.seed_rolled_out(stored)
            return self.deployment(namespace, name)

    def add_service(self, namespace: str, name: str, selector: dict[str, str], *, port: int = 8080) -> Json:
        body = {"metadata": {"name": name, "namespace": namespace},
                "spec": {"selector": dict(selector),
                         "ports": [{"name": "http", "port": port, "targetPort": port}]}}
        return self.api.create("services", namespace, body)[1]

    def add_virtual_service(self, namespace: str, name: str, host: str, *,
                            http: list[Json] | None = None) -> Json:
        """A VirtualService; by default one http route sending everything to subset ``stable`` of ``host``."""
        if http is None:
            http = [{"route": [{"destination": {"host": host, "subset": "stable"}, "weight": 100}]}]
        body = {"metadata": {"name": name, "namespace": namespace},
                "spec": {"hosts": [host], "http": copy.deepcopy(http)}}
        return self.api.create("virtualservices", namespace, body)[1]

    def deployment(self, namespace: str, name: str) -> Json:
        return self.store.get("deployments", namespace, name)

    def replicasets(self, namespace: str, deployment: str | None = None) -> list[Json]:
        """ReplicaSets (of ``deployment``, if given), oldest revision first."""
        with self.store.lock:
            found = [rs for rs in self.store.items("replicasets", namespace)
                     if deployment is None or any(ref["name"] == deployment
                                                  for ref in rs["metadata"].get("ownerReferences", []))]
            found.sort(key=lambda rs: int(rs["metadata"]["annotations"].get(REVISION, 0)))
            return copy.deepcopy(found)

    def service(self, namespace: str, name: str) -> Json:
        return self.store.get("services", namespace, name)

    def virtual_service(self, namespace: str, name: str) -> Json:
        return self.store.get("virtualservices", namespace, name)

    def job(self, namespace: str, name: str) -> Json:
        return self.store.get("jobs", namespace, name)

    def pods(self, namespace: str, selector: str | None = None) -> list[Json]:
        return copy.deepcopy(self.store.items("pods", namespace, selector))

    # ------------------------------------------------------------------ request handling (server threads)
    def _handle(self, method: str, target: str, headers: dict[str, str],
                raw: bytes) -> tuple[int, Any, str, float]:
        at, mono = time.time(), time.monotonic()
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        with self._cond:
            fault = _take(self._errors, method, split.path)
            delay = _take(self._delays, method, split.path)
        out_type = "application/json"
        if self.token is not None and auth != f"Bearer {self.token}":
            status, payload = 401, ApiError(401, "Unauthorized", "Unauthorized").status()
        elif fault is not None and fault.status == DROP:
            status, payload = DROP, ""
        elif fault is not None:
            status = fault.status
            reason, message = _FAULT_REASONS.get(status, ("InternalError", "an error on the server"))
            payload = ApiError(status, reason, message).status()
        else:
            try:
                with self.store.lock:  # the handler mutates what it stores; the record keeps what was sent
                    status, payload = self.api.handle(method, split.path, query, copy.deepcopy(body),
                                                      content_type)
                if isinstance(payload, str):
                    out_type = "text/plain"
            except ApiError as exc:
                status, payload = exc.code, exc.status()
        record = Request(method, split.path, query, headers, body, at, mono, status, fault is not None)
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()
        return status, payload, out_type, delay.seconds if delay else 0.0


def _take(faults: list[_Fault], method: str, path: str) -> _Fault | None:
    for fault in faults:
        if fault.matches(method, path):
            fault.remaining -= 1
            if fault.remaining <= 0:
                faults.remove(fault)
            return fault
    return None
