"""deploy/rbac.yaml against what the bot really asks Kubernetes for.

Real deploys — canary by replicas, canary through an Istio VirtualService, blue-green, a canary that
fails its analysis and rolls back, a `/rollback --with-db` (its database rollback Job), a database Job
that fails — run through the console (the real
dispatcher, deploy engine and `KubernetesCluster` with the official client) against the Kubernetes API
stand-in, which records every request as RBAC sees it: (apiGroup, resource, verb, name). The Role must
allow each of those requests, as the API server's authorizer would (resourceNames included), and each
of its rules must be needed by them, except the few granted for a known, documented reason.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.console import run_console
from bot.settings import Settings
from tests.harness.k8s_api import FakeKubernetes

REPO = Path(__file__).resolve().parents[1]
NS, APP = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
Attr = tuple[str, str, str, str | None]  # apiGroup, resource, verb, name (None: no name in the request)

#: granted although no deploy makes the request yet, and why
FORTHCOMING: dict[Attr, str] = {
    ("apps", "deployments/scale", "get", APP): "the kill switch reads the scale before setting 0",
}
#: (apiGroup, resource, verb) that cannot be limited by resourceNames, and why
UNNAMEABLE: dict[tuple[str, str, str], str] = {
    ("apps", "deployments", "create"): "a create request carries no name in its URL",
    ("batch", "jobs", "create"): "a create request carries no name in its URL",
    ("batch", "jobs", "get"): "Jobs are named <run id>-<job>, new for every run",
    ("", "pods", "list"): "list cannot be limited by name",
    ("", "pods/log", "get"): "pods are named by their Job's controller",
}


@dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str] | None  # None: any object

    def allows(self, attr: Attr) -> bool:
        """RBAC's rule match: a rule with resourceNames only matches a request that names one of them."""
        group, resource, verb, name = attr
        return (group in self.groups and resource in self.resources and verb in self.verbs
                and (self.names is None or (name is not None and name in self.names)))


def role_rules() -> list[Rule]:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text(encoding="utf-8")) if d]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    return [Rule(frozenset(r["apiGroups"]), frozenset(r["resources"]), frozenset(r["verbs"]),
                 frozenset(r["resourceNames"]) if "resourceNames" in r else None) for r in role["rules"]]


def allowed(attr: Attr, rules: list[Rule] | None = None) -> bool:
    return any(rule.allows(attr) for rule in (rules if rules is not None else role_rules()))


# --- the deploys ------------------------------------------------------------------------------------------
def write_config(path: Path, kube_url: str, strategy_settings: dict[str, Any]) -> Path:
    """chatops.example.yml with production on the Kubernetes stand-in, fast, without approvals."""
    data: dict[str, Any] = yaml.safe_load((REPO / "chatops.example.yml").read_text(encoding="utf-8"))
    prod = data["environments"]["production"]
    prod.update(kubernetes={"host": kube_url}, approvals_required=0, monitor_seconds=0,
                stop_trading=False,  # /rollback's procedure without the trading steps (and their pauses)
                rollout_timeout_seconds=60, blue_green={"monitor_seconds": 0},
                procedure=[{"kind": "precheck", "name": "Pre-checks"},
                           {"kind": "job", "name": "Database backup", "job": "backup"},
                           {"kind": "rollout", "name": "Roll out"},
                           {"kind": "health", "name": "Health checks"}])
    prod["canary"] = {"steps": [50, 100], "interval_seconds": 5, "failure_limit": 1, **strategy_settings}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Deploys:
    requests: list[Attr]
    outputs: dict[str, str]


SCENARIOS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("canary", {"router": "replicas"}, ["/deploy v2.3 --env production --canary --reason rbac", "wait"]),
    ("canary rolled back", {"router": "replicas"},
     ["/deploy v2.4 --env production --canary --reason rbac", "sim error-rate 0.2 production", "wait",
      "sim error-rate 0.002 production"]),
    ("istio canary", {"router": "istio", "virtual_service": APP, "host": APP},
     ["/deploy v2.5 --env production --canary --reason rbac", "wait"]),
    ("blue-green", {}, ["/deploy v2.6 --env production --blue-green --reason rbac", "wait"]),
    ("db rollback", {}, ["as root", "/rollback --env production --to v2.1.0 --with-db --reason rbac", "as bob",
                         "click Approve", "wait"]),
    ("failed job", {}, ["/deploy v2.7 --env production --reason rbac", "wait"]),
]


@pytest.fixture(scope="module")
def deploys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deploys]:
    """Every scenario above, one after the other, on one Kubernetes stand-in."""
    tmp = tmp_path_factory.mktemp("rbac")
    with pytest.MonkeyPatch.context() as mp, FakeKubernetes(rollout_ticks=2) as kube:
        for name in list(os.environ):
            if name.upper().startswith("CHATOPS_"):
                mp.delenv(name)
        mp.chdir(tmp)
        kube.add_deployment(NS, APP, f"{IMAGE}:v2.2.0", replicas=4)
        kube.add_service(NS, APP, {"app": APP})
        kube.add_virtual_service(NS, APP, APP)
        outputs: dict[str, str] = {}
        for i, (label, canary, lines) in enumerate(SCENARIOS):
            if label == "failed job":
                kube.fail_jobs("r-", "Error: backup target unreachable\n")
            config = write_config(tmp / f"chatops-{i}.yml", kube.url, canary)
            out = io.StringIO()
            code = run_console(Settings(config=config, database_url=f"sqlite:///{tmp}/rbac.db"),
                               script=lines, out=out)
            outputs[label] = out.getvalue()
            assert code == 0, out.getvalue()
        yield Deploys([r.rbac for r in kube.requests if not r.faulted], outputs)


def test_the_deploys_ran_their_course(deploys: Deploys) -> None:
    """Each scenario reached the outcome it is there for (so its requests are in the record)."""
    expected = {"canary": "✅ Succeeded", "canary rolled back": "⏪ Rolled back", "istio canary": "✅ Succeeded",
                "blue-green": "✅ Succeeded", "failed job": "Error: backup target unreachable",
                "db rollback": "database rolled back: job"}
    for label, text in expected.items():
        assert text in deploys.outputs[label], f"{label}: {text!r} not in the console output"


def test_the_role_allows_every_request_the_deploys_make(deploys: Deploys) -> None:
    """No deploy would be refused with a 403: every recorded request matches a rule of the Role."""
    refused = sorted({a for a in deploys.requests if not allowed(a)}, key=str)
    assert not refused, f"deploy/rbac.yaml does not allow: {refused}"


def test_every_rule_of_the_role_is_needed(deploys: Deploys) -> None:
    """Each verb and each name of each rule is used by some request (or granted for a documented reason)."""
    used = set(deploys.requests) | set(FORTHCOMING)
    for rule in role_rules():
        matched = [a for a in used if rule.allows(a)]
        unused_verbs = rule.verbs - {a[2] for a in matched}
        assert not unused_verbs, f"rule {rule}: verbs never used: {sorted(unused_verbs)}"
        if rule.names is not None:
            unused_names = rule.names - {a[3] for a in matched}
            assert not unused_names, f"rule {rule}: names never used: {sorted(unused_names)}"


def test_unnamed_rules_are_only_those_that_cannot_be_named() -> None:
    """A rule without resourceNames grants only what Kubernetes cannot limit by name (create, list) or
    objects whose names are new for every run."""
    for rule in role_rules():
        if rule.names is None:
            grants = {(g, r, v) for g in rule.groups for r in rule.resources for v in rule.verbs}
            assert grants <= set(UNNAMEABLE), f"rule {rule} should name its objects: {grants - set(UNNAMEABLE)}"


@pytest.mark.parametrize("attr", [
    ("apps", "deployments", "delete", APP),           # the environment's own Deployment
    ("apps", "deployments", "update", APP),
    ("apps", "deployments", "patch", "order-gateway"),  # any other Deployment in the namespace
    ("apps", "deployments", "delete", "order-gateway"),
    ("", "services", "patch", "order-gateway"),        # any other Service
    ("apps", "replicasets", "list", None),             # the rollout history only `undo()` needed
    ("apps", "deployments", "list", None),
    ("", "secrets", "get", "trading-api-key"),
])
def test_the_role_refuses_what_the_bot_never_needs(attr: Attr) -> None:
    """Deleting or rewriting the live Deployment, touching other objects, reading Secrets: refused."""
    assert not allowed(attr)


def test_forthcoming_grants_are_in_the_role() -> None:
    """What is granted ahead of the code (the kill switch) is really granted, and only by name."""
    for attr in FORTHCOMING:
        assert allowed(attr)
        assert not allowed((*attr[:3], "order-gateway"))
