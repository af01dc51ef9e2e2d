"""The simulated controllers behind the Kubernetes API stand-in (tests/harness/k8s_api.py).

`admit` defaults and validates writes the way the API server does for the shapes the bot uses
(generation, selector/template agreement, immutable selectors, Job selectors and labels).
`tick` plays the Deployment and Job controllers one step:

* A Deployment whose generation is ahead of status.observedGeneration gets the ReplicaSet for its
  template: an existing one with an identical template (minus pod-template-hash) is reused and given
  the next revision, as on `kubectl rollout undo`; otherwise a new one is created with the next revision.
* The newest ReplicaSet becomes ready over `rollout_ticks` ticks while the older ones scale down; a
  ReplicaSet created under `fail_rollouts` never gets ready, and after `progress_deadline` seconds
  without progress the Deployment's Progressing condition turns False / ProgressDeadlineExceeded.
* A Job runs one pod at a time; each pod ends after `job_ticks` ticks, failing for names under
  `fail_jobs` (until backoffLimit is exceeded: condition Failed) or succeeding (condition Complete).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ._k8s_store import Json, Store, invalid, now_iso

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
JOB_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid",
              "batch.kubernetes.io/job-name", "job-name")


@dataclass
class Settings:
    """Pacing of the simulated controllers."""

    rollout_ticks: int = 4
    job_ticks: int = 3
    progress_deadline: float = 1.0


@dataclass
class _JobRun:
    pod: str | None = None
    ticks: int = 0


@dataclass
class Controller:
    store: Store
    settings: Settings
    #: deployment name -> image whose ReplicaSets never get ready (None: any new ReplicaSet)
    failing_rollouts: dict[str, str | None] = field(default_factory=dict)
    #: job name prefix -> log text of its failed pods
    failing_jobs: dict[str, str] = field(default_factory=dict)
    #: job name prefix -> log text of its succeeded pods
    job_logs: dict[str, str] = field(default_factory=dict)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    ticks: int = 0
    _unhealthy: set[tuple[str, str]] = field(default_factory=set)
    _progress: dict[tuple[str, str], float] = field(default_factory=dict)
    _jobs: dict[tuple[str, str], _JobRun] = field(default_factory=dict)

    # ------------------------------------------------------------------ admission (API writes)
    def admit(self, resource: str, old: Json | None, new: Json) -> Json:
        """Default and validate a create (old None) or update; raises `ApiError` 422."""
        if resource == "deployments":
            self._admit_deployment(old, new)
        elif resource == "jobs":
            self._admit_job(new)
        elif resource == "services":
            spec = new.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec["clusterIP"] = (old or {}).get("spec", {}).get("clusterIP") or "10.96.0.10"
            new["status"] = (old or {}).get("status", {"loadBalancer": {}})
        elif resource == "virtualservices":
            changed = old is None or old.get("spec") != new.get("spec")
            new["metadata"]["generation"] = (old or {}).get("metadata", {}).get("generation", 0) + changed
        return new

    def _admit_deployment(self, old: Json | None, new: Json) -> None:
        name = new["metadata"]["name"]
        spec = new.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        causes = _template_problems(spec.get("template"))
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append(("spec.selector", "Required value"))
        elif any(labels.get(k) != v for k, v in selector.items()):
            problem = f"Invalid value: {json.dumps(labels)}: `selector` does not match template `labels`"
            causes.append(("spec.template.metadata.labels", problem))
        if not isinstance(spec["replicas"], int) or spec["replicas"] < 0:
            causes.append(("spec.replicas", f"Invalid value: {spec['replicas']!r}: must be >= 0"))
        if old is not None and old["spec"].get("selector") != spec.get("selector"):
            causes.append(("spec.selector", f"Invalid value: {json.dumps(spec.get('selector'))}: "
                                            "field is immutable"))
        if causes:
            raise invalid("deployments", name, causes)
        if old is None:
            new["metadata"]["generation"] = 1
            new["status"] = {}
        else:
            new["metadata"]["generation"] = old["metadata"]["generation"] + (old["spec"] != spec)
            new["status"] = copy.deepcopy(old.get("status", {}))  # status is a subresource

    def _admit_job(self, new: Json) -> None:
        meta, spec = new["metadata"], new.setdefault("spec", {})
        template = spec.get("template") or {}
        causes = _template_problems(template)
        if (template.get("spec") or {}).get("restartPolicy") not in ("Never", "OnFailure"):
            causes.append(("spec.template.spec.restartPolicy",
                           'Required value: valid values: "OnFailure", "Never"'))
        if causes:
            raise invalid("jobs", meta["name"], causes)
        uid = meta["uid"] = str(uuid.uuid4())
        labels = dict(zip(JOB_LABELS, (uid, uid, meta["name"], meta["name"]), strict=True))
        spec.setdefault("selector", {"matchLabels": {JOB_LABELS[0]: uid}})
        template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        meta.setdefault("labels", dict(labels))
        for key, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1)):
            spec.setdefault(key, value)
        new["status"] = {}

    def deleted(self, resource: str, obj: Json) -> None:
        """Cascade a deletion to dependents (ReplicaSets of a Deployment, pods of a Job)."""
        ns, uid = obj["metadata"]["namespace"], obj["metadata"]["uid"]
        dependent = {"deployments": "replicasets", "jobs": "pods"}.get(resource)
        if dependent is None:
            return
        for child in list(self.store.items(dependent, ns)):
            if any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences", [])):
                self.store.delete(dependent, ns, child["metadata"]["name"])

    # ------------------------------------------------------------------ the control loop
    def tick(self) -> None:
        with self.store.lock:
            self.ticks += 1
            for dep in self.store.items("deployments"):
                self._reconcile_deployment(dep)
            for job in self.store.items("jobs"):
                self._reconcile_job(job)

    def owned(self, resource: str, owner: Json) -> list[Json]:
        uid = owner["metadata"]["uid"]
        return [
            obj for obj in self.store.items(resource, owner["metadata"]["namespace"])
            if any(ref.get("uid") == uid and ref.get("controller")
                   for ref in obj["metadata"].get("ownerReferences", []))
        ]

    def _reconcile_deployment(self, dep: Json) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        key = (meta["namespace"], meta["name"])
        before = copy.deepcopy(dep)
        status = dep.setdefault("status", {})
        if status.get("observedGeneration", 0) < meta["generation"]:
            self._sync_replicaset(dep)
            status["observedGeneration"] = meta["generation"]
            self._progress[key] = time.monotonic()
        sets = sorted(self.owned("replicasets", dep), key=_revision, reverse=True)
        if not sets:
            return
        current, older = sets[0], sets[1:]
        desired = spec["replicas"]
        ready = current["status"].get("readyReplicas", 0)
        surge = math.ceil(desired / 4)  # maxSurge 25 %: new pods run ahead of the ready ones by this much
        if (meta["namespace"], current["metadata"]["name"]) not in self._unhealthy:
            new_ready = min(desired, ready + max(1, math.ceil(desired / self.settings.rollout_ticks)))
        else:
            new_ready = 0
        pods = min(desired, new_ready + surge)
        if new_ready > ready:
            self._progress[key] = time.monotonic()
        self._set_replicaset(current, pods, new_ready)
        room, old_pods = max(0, desired - new_ready), 0
        for rs in older:  # old pods stay until new ones are ready (availability is kept)
            keep = min(rs["status"].get("readyReplicas", 0), room)
            room -= keep
            old_pods += keep
            self._set_replicaset(rs, keep, keep)
        available = new_ready + old_pods
        status.update(replicas=pods + old_pods, updatedReplicas=pods, readyReplicas=available,
                      availableReplicas=available, unavailableReplicas=max(0, desired - available))
        rs_name = f'ReplicaSet "{current["metadata"]["name"]}"'
        if new_ready == desired and pods == desired and old_pods == 0:
            progressing = ("True", "NewReplicaSetAvailable", f"{rs_name} has successfully progressed.")
        elif time.monotonic() - self._progress.get(key, 0.0) > self.settings.progress_deadline:
            progressing = ("False", "ProgressDeadlineExceeded", f"{rs_name} has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", f"{rs_name} is progressing.")
        enough = available >= desired
        _set_condition(status, "Available", "True" if enough else "False",
                       "MinimumReplicasAvailable" if enough else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if enough
                       else "Deployment does not have minimum availability.")
        _set_condition(status, "Progressing", *progressing)
        if dep != before:
            self.store.save("deployments", dep)

    def _sync_replicaset(self, dep: Json) -> None:
        """Find (or create) the ReplicaSet for the Deployment's template and make it the newest revision."""
        meta, spec = dep["metadata"], dep["spec"]
        template = _without_hash(spec["template"])
        sets = self.owned("replicasets", dep)
        top = max((_revision(rs) for rs in sets), default=0)
        match = next((rs for rs in sets if _without_hash(rs["spec"]["template"]) == template), None)
        if match is None:
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            name = f"{meta['name']}-{digest}"
            labelled = copy.deepcopy(template)
            labelled.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
            match = {
                "metadata": {
                    "name": name, "namespace": meta["namespace"],
                    "labels": labelled["metadata"]["labels"],
                    "annotations": {"deployment.kubernetes.io/desired-replicas": str(spec["replicas"])},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                         "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
                },
                "spec": {"replicas": 0, "selector": selector, "template": labelled},
                "status": {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0},
            }
            images = {c.get("image") for c in template.get("spec", {}).get("containers", [])}
            failing = meta["name"] in self.failing_rollouts
            if failing and self.failing_rollouts[meta["name"]] in images | {None}:
                self._unhealthy.add((meta["namespace"], name))
        if _revision(match) != top or top == 0:
            match["metadata"].setdefault("annotations", {})[REVISION] = str(top + 1)
        self.store.save("replicasets", match)
        meta.setdefault("annotations", {})[REVISION] = match["metadata"]["annotations"][REVISION]

    def seed_rolled_out(self, dep: Json) -> None:
        """Give a just stored Deployment its first ReplicaSet, already fully ready."""
        with self.store.lock:
            self._sync_replicaset(dep)
            for rs in self.owned("replicasets", dep):
                self._set_replicaset(rs, dep["spec"]["replicas"], dep["spec"]["replicas"])
            self._reconcile_deployment(dep)

    def heal(self, namespace: str | None, deployment: str) -> None:
        self._unhealthy = {
            (ns, rs) for ns, rs in self._unhealthy
            if not (rs.startswith(f"{deployment}-") and namespace in (None, ns))
        }

    def _set_replicaset(self, rs: Json, pods: int, ready: int) -> None:
        before = copy.deepcopy(rs)
        rs["spec"]["replicas"] = pods
        rs["status"].update(replicas=pods, fullyLabeledReplicas=pods, readyReplicas=ready,
                            availableReplicas=ready, observedGeneration=rs["metadata"].get("generation", 1))
        if rs != before:
            self.store.save("replicasets", rs)

    def _reconcile_job(self, job: Json) -> None:
        meta, spec, status = job["metadata"], job["spec"], job.setdefault("status", {})
        conditions = status.get("conditions", [])
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
            return
        run = self._jobs.setdefault((meta["namespace"], meta["name"]), _JobRun())
        if run.pod is None or self.store.find("pods", meta["namespace"], run.pod) is None:
            run.pod, run.ticks = self._start_pod(job), 0
            status.setdefault("startTime", now_iso())
            status.update(active=1, ready=0)
            self.store.save("jobs", job)
            return
        run.ticks += 1
        if run.ticks < self.settings.job_ticks:
            return
        pod = self.store.find("pods", meta["namespace"], run.pod)
        assert pod is not None
        fail_log = _by_prefix(self.failing_jobs, meta["name"])
        ok_log = _by_prefix(self.job_logs, meta["name"]) or f"{meta['name']}: done\n"
        self.logs[(meta["namespace"], run.pod)] = ok_log if fail_log is None else fail_log
        _finish_pod(pod, succeeded=fail_log is None)
        self.store.save("pods", pod)
        run.pod = None
        status.update(active=0, ready=0)
        if fail_log is None:
            status["succeeded"] = status.get("succeeded", 0) + 1
            status["completionTime"] = now_iso()
            for kind in ("SuccessCriteriaMet", "Complete"):
                _set_condition(status, kind, "True", "CompletionsReached",
                               "Reached expected number of succeeded pods", "lastProbeTime")
        else:
            status["failed"] = status.get("failed", 0) + 1
            if status["failed"] > spec["backoffLimit"]:
                for kind in ("FailureTarget", "Failed"):
                    _set_condition(status, kind, "True", "BackoffLimitExceeded",
                                   "Job has reached the specified backoff limit", "lastProbeTime")
        self.store.save("jobs", job)

    def _start_pod(self, job: Json) -> str:
        meta, template = job["metadata"], job["spec"]["template"]
        name = f"{meta['name']}-{uuid.uuid4().hex[:5]}"
        containers = template["spec"]["containers"]
        pod = {
            "metadata": {
                "name": name, "namespace": meta["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {
                "phase": "Running", "startTime": now_iso(),
                "containerStatuses": [
                    {"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
                     "state": {"running": {"startedAt": now_iso()}}}
                    for c in containers
                ],
            },
        }
        self.store.save("pods", pod)
        self.logs[(meta["namespace"], name)] = ""
        return name


def _by_prefix(logs: dict[str, str], name: str) -> str | None:
    return next((log for prefix, log in logs.items() if name.startswith(prefix)), None)


def _template_problems(template: Any) -> list[tuple[str, str]]:
    containers = ((template or {}).get("spec") or {}).get("containers") or []
    if not containers:
        return [("spec.template.spec.containers", "Required value")]
    causes = []
    for i, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                causes.append((f"spec.template.spec.containers[{i}].{key}", "Required value"))
    return causes


def _finish_pod(pod: Json, *, succeeded: bool) -> None:
    code, reason = (0, "Completed") if succeeded else (1, "Error")
    pod["status"]["phase"] = "Succeeded" if succeeded else "Failed"
    for cs in pod["status"]["containerStatuses"]:
        cs["ready"] = False
        cs["state"] = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now_iso()}}


def _revision(rs: Json) -> int:
    try:
        return int(rs["metadata"].get("annotations", {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _without_hash(template: Json) -> Json:
    """The template without pod-template-hash and without nulls (as a client round trip drops them)."""
    clean = _drop_nulls(template)
    labels = clean.get("metadata", {}).get("labels")
    if labels is not None:
        labels.pop(HASH_LABEL, None)
    return clean


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _set_condition(status: Json, kind: str, state: str, reason: str, message: str,
                   stamp_field: str = "lastUpdateTime") -> None:
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == kind), None)
    if old is not None and (old["status"], old["reason"], old["message"]) == (state, reason, message):
        return
    stamp = now_iso()
    entry = {"type": kind, "status": state, "reason": reason, "message": message,
             stamp_field: stamp, "lastTransitionTime": stamp}
    if old is not None:
        if old["status"] == state:
            entry["lastTransitionTime"] = old["lastTransitionTime"]
        conditions[conditions.index(old)] = entry
    else:
        conditions.append(entry)
