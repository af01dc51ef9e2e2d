"""kill -9 in the middle of a safety run, then a restart: the run continues and nothing is done twice.

Real `chatops serve` processes (SQLite and PostgreSQL) with production pointed at the Kubernetes API
stand-in and the trading API stand-in, both over HTTP; signed slash commands; SIGKILL at a moment read
from the database (a step's durable progress) and the stand-ins' request logs; a second `serve` on the
same database takes the run over once the dead one's lease expires. What is checked is what the
stand-ins were asked to do, counted from their call logs:

* mid-rollback (`/rollback`, runbook 8.2, killed while the application rolls back): the trading stop and
  maintenance-on are called once, the image is patched once, trading resumes stage by stage once;
* mid-kill-switch (`/stop-trading` with a trading API that lies): the API stop is asked once, the
  scale-down to 0 is sent once;
* mid-resume-window (`/resume-trading --gradual`, killed inside the KPI window of the second stage):
  each stage is started once, in order, the window continues where it was saved (no jump to 100 %),
  and the replicas the kill switch removed are restored once.

The Kubernetes controller only advances while the test lets it (`tick_interval=None` plus a ticker
thread), so a rollout or a scale-down is still in flight at the kill whatever the machine's speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from sqlalchemy import select

from bot.persistence.audit import verify
from bot.persistence.db import Database
from bot.persistence.models import AuditRecord, Run, RunStep
from tests.bot_server import REPO, SECRET, free_port
from tests.harness.k8s_api import FakeKubernetes, Request
from tests.harness.signing import signed_headers, slash_command_body
from tests.harness.slack_api import FakeSlack
from tests.harness.trading_api import DEFAULT_API_KEY, Call, FakeTradingApi
from tests.test_durable_ack import start_serve
from tests.test_serve import serve_env

T = TypeVar("T")
NAMESPACE, DEPLOYMENT = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
ALICE, ERIN = "U0ALICE01", "U0ERIN005"  # production deployer, production operator
DEPLOY_CHANNEL = "C0PRODDEP1"
KEY_ENV = "CHATOPS_TEST_TRADING_KEY"
ROLLBACK_FRACTIONS = [0.5, 1.0]
RESUME_FRACTIONS = [0.25, 0.5, 1.0]
WINDOW, INTERVAL = 8.0, 5.0  # the resume's KPI window between stages, checked every INTERVAL
LEASE = "2"  # seconds: the restarted process takes the dead one's run over soon


def write_config(path: Path, kube_url: str, trading_url: str) -> Path:
    data: dict[str, Any] = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    prod = data["environments"]["production"]
    prod.pop("jobs", None)
    prod.update(kubernetes={"host": kube_url}, trading_api={"base_url": trading_url, "api_key_env": KEY_ENV},
                rollback_approvals_required=0, resume_approvals_required=0, stop_verify_seconds=2,
                resume_fractions=RESUME_FRACTIONS, resume_window_seconds=WINDOW,
                canary={"router": "replicas", "steps": [50, 100], "interval_seconds": INTERVAL},
                monitor_seconds=0, rollout_timeout_seconds=120,
                procedure=[{"kind": "precheck"}, {"kind": "rollout", "name": "Roll out"},
                           {"kind": "trading_resume", "name": "Resume trading", "fractions": ROLLBACK_FRACTIONS,
                            "pause_seconds": 1}])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Stand:
    """The stand-ins, the config and the database one test's bots share, and the bots it started."""

    kube: FakeKubernetes
    trading: FakeTradingApi
    slack: FakeSlack
    db_url: str
    tmp: Path
    config: Path
    ticking: threading.Event = field(default_factory=threading.Event)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    n: int = 0

    # -- bots --------------------------------------------------------------------------------------
    def serve(self) -> None:
        self.port = free_port()
        env = serve_env(self.slack, self.db_url, CHATOPS_CONFIG=str(self.config), CHATOPS_DEPLOY_LEASE_SECONDS=LEASE,
                        **{KEY_ENV: DEFAULT_API_KEY})
        self.procs.append(start_serve(env, self.port, self.tmp / "serve.log"))

    def kill9(self) -> None:
        proc = self.procs[-1]
        proc.kill()  # SIGKILL: no shutdown hook, no lease handed back
        proc.wait(10)

    def command(self, command: str, text: str, user: str) -> str:
        """A signed slash command; the reply's text at its response_url."""
        self.n += 1
        name = f"k{self.n}"
        body = slash_command_body(command, text, user, "someone", DEPLOY_CHANNEL, self.slack.response_url(name))
        ack = httpx.post(f"http://127.0.0.1:{self.port}/slack/events", content=body,
                         headers=signed_headers(body, SECRET), timeout=10)
        assert ack.status_code == 200, ack.text
        return str(self.slack.wait_for_response(name, timeout=30)[0].body.get("text", ""))

    # -- the database ------------------------------------------------------------------------------
    def read(self, fn: Callable[[Any], T]) -> T:
        db = Database(self.db_url)
        try:
            with db.read() as session:
                return fn(session)
        finally:
            db.dispose()

    def run(self, kind: str) -> Run:
        run: Run | None = self.read(lambda s: s.execute(select(Run).where(Run.kind == kind)
                                                        .order_by(Run.created_at.desc())).scalars().first())
        assert run is not None, f"no {kind} run"
        return run

    def has_ended(self, kind: str, states: tuple[str, ...]) -> bool:
        run: Run | None = self.read(lambda s: s.execute(select(Run).where(Run.kind == kind)
                                                        .order_by(Run.created_at.desc())).scalars().first())
        return run is not None and run.state in states

    def step(self, run_id: str, kind: str) -> RunStep:
        query = select(RunStep).where(RunStep.run_id == run_id, RunStep.kind == kind, RunStep.phase == "main")
        step: RunStep = self.read(lambda s: s.execute(query).scalar_one())
        return step

    def audit(self, run_id: str, action: str) -> list[dict[str, Any]]:
        rows = self.read(lambda s: s.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars().all())
        found = [json.loads(r.args) if isinstance(r.args, str) else r.args for r in rows if r.action == action]
        return [a for a in found if a.get("run") == run_id]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n"
                                     + (self.tmp / "serve.log").read_text()[-3000:])
            time.sleep(0.1)

    def wait_state(self, kind: str, states: tuple[str, ...] = ("succeeded", "rolled_back", "failed"),
                   timeout: float = 90.0) -> Run:
        self.wait(f"the {kind} run to end", lambda: self.has_ended(kind, states), timeout)
        return self.run(kind)

    # -- the stand-ins' logs -------------------------------------------------------------------------
    def api_calls(self, path: str) -> list[Call]:
        return [c for c in list(self.trading.calls) if c.method == "POST" and c.path == path and c.status == 200]

    def kube_calls(self, predicate: Callable[[Request], bool]) -> list[Request]:
        return self.kube.requests_matching(lambda r: not r.faulted and predicate(r))

    def image(self) -> str:
        return str(self.kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]["image"])


@pytest.fixture
def stand(database_url: str, tmp_path: Path) -> Iterator[Stand]:
    with FakeKubernetes(tick_interval=None, rollout_ticks=4) as kube, FakeTradingApi() as trading, \
            FakeSlack() as slack:
        st = Stand(kube, trading, slack, database_url, tmp_path,
                   write_config(tmp_path / "chatops.yml", kube.url, trading.base_url))
        st.ticking.set()
        done = threading.Event()

        def ticker() -> None:  # the Kubernetes controller advances only while the test lets it
            while not done.wait(0.05):
                if st.ticking.is_set():
                    kube.tick()

        thread = threading.Thread(target=ticker, name="k8s-ticker", daemon=True)
        thread.start()
        try:
            yield st
        finally:
            done.set()
            for proc in st.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            thread.join(5)


def image_patches(st: Stand) -> list[Request]:
    return st.kube_calls(lambda r: r.method == "PATCH" and r.path.endswith(f"/deployments/{DEPLOYMENT}"))


def scale_patches(st: Stand, replicas: int) -> list[Request]:
    return st.kube_calls(lambda r: r.method in ("PATCH", "PUT") and r.path.endswith(f"/{DEPLOYMENT}/scale")
                         and (r.body or {}).get("spec", {}).get("replicas") == replicas)


def main_step_starts(st: Stand, prefix: str, run_id: str) -> list[str]:
    return [a["step"] for a in st.audit(run_id, f"{prefix}.step.start") if a.get("phase", "main") == "main"]


def assert_chain_intact(st: Stand) -> None:
    assert st.read(verify).ok


# --- mid-rollback ------------------------------------------------------------------------------------------
def test_kill9_mid_rollback_continues_and_repeats_nothing(stand: Stand) -> None:
    st = stand
    st.kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.3.0", replicas=4)
    st.serve()
    st.ticking.clear()  # the rollout will not progress: the kill lands while the application rolls back
    reply = st.command("/rollback", "--env production --to v2.2.0 --reason 'bad fills'", ALICE)
    assert "Rolling production back to v2.2.0" in reply, reply
    run = st.run("rollback")
    st.wait("the rollback's image patch to be recorded",
            lambda: bool(st.step(run.id, "rollout").data.get("patched")) and bool(image_patches(st)))
    st.kill9()
    killed_at = {s: st.step(run.id, s).status for s in ("trading_stop", "maintenance_on", "rollout")}
    assert killed_at == {"trading_stop": "done", "maintenance_on": "done", "rollout": "running"}
    assert st.api_calls("/admin/trading/start") == []  # killed before anything was resumed

    st.ticking.set()
    st.serve()
    run = st.wait_state("rollback")
    assert run.state == "succeeded", run.outcome
    # what the stand-ins were asked to do: everything once
    assert len(st.api_calls("/admin/trading/stop")) == 1
    maintenance = [c.body.get("enabled") for c in st.api_calls("/admin/maintenance")]
    assert maintenance == [True, False]
    assert len(image_patches(st)) == 1  # the restarted step found v2.2.0 already set and did not patch again
    assert [c.body.get("fraction") for c in st.api_calls("/admin/trading/start")] == ROLLBACK_FRACTIONS
    # and what the run says it did matches the stand-ins
    assert st.image() == f"{IMAGE}:v2.2.0"
    assert st.trading.trading and not st.trading.maintenance
    assert (run.outcome or "").startswith("rolled back to v2.2.0") and "still changed" not in (run.outcome or "")
    # the interrupted step was resumed, no step was started twice
    assert [a["step"] for a in st.audit(run.id, "rollback.step.resume")] == [st.step(run.id, "rollout").name]
    assert main_step_starts(st, "rollback", run.id) == [st.step(run.id, k).name for k in
                                                         ("precheck", "trading_stop", "maintenance_on", "rollout",
                                                          "health", "maintenance_off", "trading_resume")]
    assert len(st.audit(run.id, "rollback.start")) == 1
    assert_chain_intact(st)


# --- mid-kill-switch -----------------------------------------------------------------------------------------
def test_kill9_mid_kill_switch_scales_down_once(stand: Stand) -> None:
    st = stand
    st.kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
    st.trading.set_mode("lie")  # the API claims the stop and keeps trading: the kill switch must act
    st.serve()
    st.ticking.clear()  # the scale-down is sent but its pods do not go away before the kill
    reply = st.command("/stop-trading", "--env production --reason 'runaway orders'", ERIN)
    assert "Stopping trading in production" in reply, reply
    run = st.run("stop_trading")
    st.wait("the kill switch's scale-down", lambda: DEPLOYMENT in (st.step(run.id, "kill_switch").data.get("scaled")
                                                                   or []))
    st.kill9()
    assert st.step(run.id, "kill_switch").status == "running"
    assert len(scale_patches(st, 0)) == 1

    st.ticking.set()
    st.serve()
    run = st.wait_state("stop_trading")
    assert run.state == "succeeded", run.outcome
    assert len(st.api_calls("/admin/trading/stop")) == 1  # the API stop was not asked again
    assert len(scale_patches(st, 0)) == 1  # nor the scale-down sent again
    assert st.kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["replicas"] == 0
    assert st.step(run.id, "kill_switch").data.get("previous") == {DEPLOYMENT: 4}  # the count before, not 0
    assert (run.outcome or "").startswith("trading HALTED by the kill switch"), run.outcome
    assert f"{DEPLOYMENT} scaled 4 → 0" in (run.outcome or "")
    assert [a["step"] for a in st.audit(run.id, "stop_trading.step.resume")] == [
        st.step(run.id, "kill_switch").name]
    assert len(st.audit(run.id, "kubernetes.kill_switch.scale")) == 1
    assert_chain_intact(st)


# --- mid-resume-window ---------------------------------------------------------------------------------------
def test_kill9_mid_resume_window_continues_the_window(stand: Stand) -> None:
    st = stand
    st.kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
    st.trading.set_mode("lie")
    st.serve()
    stop = st.command("/stop-trading", "--env production --reason 'runaway orders'", ERIN)
    assert "Stopping trading" in stop, stop
    assert st.wait_state("stop_trading").state == "succeeded"
    assert st.kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["replicas"] == 0  # the kill switch acted
    st.trading.set_mode("ok")

    reply = st.command("/resume-trading", "--env production --gradual --reason 'fixed'", ERIN)
    assert "Resuming trading in production" in reply, reply
    run = st.run("resume_trading")

    def in_second_window() -> bool:
        data = st.step(run.id, "stages").data
        return data.get("started") == 1 and float(data.get("elapsed", 0)) > 0

    st.wait("the second stage's KPI window to be under way", in_second_window)
    st.kill9()
    saved = st.step(run.id, "stages").data
    analyses_before = [a for a in st.audit(run.id, "trading.resume.analysis") if a["fraction"] == 0.5]
    assert [c.body.get("fraction") for c in st.api_calls("/admin/trading/start")] == RESUME_FRACTIONS[:2]
    assert float(saved["elapsed"]) < WINDOW

    st.serve()
    run = st.wait_state("resume_trading")
    assert run.state == "succeeded", run.outcome
    # each stage started once, in order: no stage repeated, no jump to 100 % at the restart
    assert [c.body.get("fraction") for c in st.api_calls("/admin/trading/start")] == RESUME_FRACTIONS
    # the window went on from what was saved: only the rest of it was watched after the restart
    at_half = [a for a in st.audit(run.id, "trading.resume.analysis") if a["fraction"] == 0.5]
    rest = math.ceil((WINDOW - float(saved["elapsed"])) / INTERVAL)
    assert len(at_half) == len(analyses_before) + rest
    # the replicas the kill switch removed came back once
    assert len(scale_patches(st, 4)) == 1
    assert st.kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["replicas"] == 4
    assert st.trading.trading
    assert [a["step"] for a in st.audit(run.id, "resume_trading.step.resume")] == [st.step(run.id, "stages").name]
    assert_chain_intact(st)
