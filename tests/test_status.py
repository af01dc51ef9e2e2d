"""/status and the App Home tab, live, with real parts over real HTTP.

The real bot (uvicorn) answers signed slash commands; production points at the Kubernetes API stand-in
(official client), a REAL Prometheus scraping an exporter, and the trading API stand-in. Each backend is
made down or hanging in turn: the reply still arrives, its part says "unavailable: <reason>" and every
other part is there. A hang lasts longer than the status deadline but shorter than the test's own wait,
so a /status that waited for the hang would show the part as available and fail the assertion, not
time out. The read model, the Kubernetes and simulated reads and the KPI settings are tested too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from sqlalchemy import event, select

from bot.config import KubernetesTarget, StatusSettings, parse_config
from bot.core.ports import WorkloadRef, image_tag
from bot.errors import BackendUnavailable, ConfigError
from bot.ids import ActionId, encode_value
from bot.persistence.models import AuditRecord, Run
from integrations.kubernetes import cluster_from_target
from integrations.prometheus import PrometheusMetrics
from integrations.simulated import SimCluster, SimTrading
from tests.bot_server import SECRET, RunningBot, free_port, start_bot
from tests.harness.exporter import MetricsExporter
from tests.harness.k8s_api import FakeKubernetes
from tests.harness.prometheus import PrometheusServer, require_prometheus
from tests.harness.signing import event_body, signed_headers
from tests.harness.slack_api import FakeSlack
from tests.harness.trading_api import DEFAULT_API_KEY, FakeTradingApi

REPO = Path(__file__).resolve().parents[1]
NAMESPACE, DEPLOYMENT = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
ALICE, BOB, DAVE, ERIN = "U0ALICE01", "U0BOB0002", "U0DAVE004", "U0ERIN005"
KEY_ENV = "CHATOPS_TEST_STATUS_TRADING_KEY"
DEADLINE = 1.0  # status.timeout_seconds in these tests
HANG = 6.0  # longer than DEADLINE, shorter than WAIT
WAIT = 10.0  # how long a test waits for the reply
REF = WorkloadRef(NAMESPACE, DEPLOYMENT, DEPLOYMENT)


# --- the world ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    """A real Prometheus scraping an exporter of trading-prod's metrics (stable only: 100 req/s)."""
    require_prometheus()
    with MetricsExporter(namespace=NAMESPACE, versions=("stable",)) as exporter, \
            PrometheusServer([exporter.target]) as prom:
        metrics = PrometheusMetrics(prom.url)
        rate = f'sum(rate(http_requests_total{{namespace="{NAMESPACE}"}}[5m]))'
        deadline = time.monotonic() + 20
        while metrics.query(rate) is None:  # two scrapes are needed for a rate
            assert time.monotonic() < deadline, "Prometheus has no request rate yet"
            time.sleep(0.2)
        metrics.close()
        yield prom


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(rollout_ticks=2) as fake:
        fake.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
        fake.add_service(NAMESPACE, DEPLOYMENT, {"app": DEPLOYMENT})
        yield fake


@pytest.fixture
def trading() -> Iterator[FakeTradingApi]:
    with FakeTradingApi() as fake:
        yield fake


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def write_config(tmp_path: Path, kube_url: str, prometheus_url: str, trading_url: str) -> Path:
    data: dict[str, Any] = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    prod = data["environments"]["production"]
    prod.update(kubernetes={"host": kube_url}, prometheus={"url": prometheus_url},
                trading_api={"base_url": trading_url, "api_key_env": KEY_ENV}, approvals_required=0,
                procedure=[{"kind": "rollout", "name": "Roll out"}], rollout_timeout_seconds=30,
                status={"timeout_seconds": DEADLINE})
    prod.pop("jobs", None)
    path = tmp_path / "chatops.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def make_bot(tmp_path: Path, fake_slack: FakeSlack, kube: FakeKubernetes, trading: FakeTradingApi,
             prometheus: PrometheusServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start the bot; `prometheus_url` replaces the real one (e.g. a port nothing listens on)."""
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)
    bots: list[RunningBot] = []

    def make(prometheus_url: str | None = None) -> RunningBot:
        config = write_config(tmp_path, kube.url, prometheus_url or prometheus.url, trading.base_url)
        bot = start_bot(fake_slack, f"sqlite:///{tmp_path}/status.db", config=config)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.stop()


_names = iter(range(1, 1_000_000))


def status(bot: RunningBot, user: str = BOB, env: str = "production") -> str:
    """/swarm-status --env ENV as `user`; the text of the reply at response_url."""
    name = f"s{next(_names)}"
    assert bot.command("/swarm-status", f"--env {env}", user, name=name, channel="C0PRODDEP1").status_code == 200
    return str(bot.fake.wait_for_response(name, timeout=WAIT)[0].body["text"])


def line(text: str, label: str) -> str:
    """The line of the reply that starts with `label:`."""
    found = [ln for ln in text.splitlines() if ln.startswith(label + ":")]
    assert found, f"no {label!r} line in:\n{text}"
    return found[0]


def assert_kube_ok(text: str, tag: str = "v2.2.0") -> None:
    running = line(text, "Running")
    assert f"`{tag}`" in running and "rollout complete" in running and "4/4 ready" in running


def assert_trading_ok(text: str) -> None:
    assert line(text, "Trading").startswith("Trading: :large_green_circle: trading — 20/20 bots, 20 open orders")
    assert "PnL +1,234.50" in line(text, "Trading")
    assert line(text, "Maintenance") == "Maintenance: off"
    health = line(text, "Health")
    assert health.startswith("Health: :white_check_mark: healthy")
    for component in ("database OK", "cache OK", "message_queue OK", "external_apis OK"):
        assert component in health


def assert_kpis_ok(text: str) -> None:
    kpis = line(text, "KPIs")
    assert "requests " in kpis and "/s" in kpis and "errors 0.20 %" in kpis
    assert "p95 latency 120 ms" in kpis and "order success 99.80 %" in kpis


# --- /status over real HTTP ------------------------------------------------------------------------------
def test_all_up_shows_the_tag_a_deploy_put_there(make_bot: Any, kube: FakeKubernetes) -> None:
    """After /deploy v2.3 changed the Deployment, /status shows v2.3 read from the stand-in (revision 2),
    trading, maintenance, the health components, the KPIs from Prometheus, and the run among the last runs."""
    bot = make_bot()
    before = status(bot)
    assert_kube_ok(before)
    assert_trading_ok(before)
    assert "revision 1" in line(before, "Running")
    assert bot.command("/deploy", "v2.3 --env production --reason status-test", ALICE, name="d",
                       channel="C0PRODDEP1").status_code == 200
    deadline = time.monotonic() + 30
    while not _run_done(bot):
        assert time.monotonic() < deadline, "the deploy did not finish"
        time.sleep(0.1)
    assert kube.deployment(NAMESPACE, DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"{IMAGE}:v2.3"
    text = status(bot)
    assert_kube_ok(text, "v2.3")
    assert "revision 2" in line(text, "Running")
    assert_trading_ok(text)
    assert_kpis_ok(text)
    assert "Lock: free" in text and "Active run: none" in text
    assert "deploy v2.3 (rolling) by <@U0ALICE01>" in text and "✅ Succeeded" in text


def _run_done(bot: RunningBot) -> bool:
    with bot.container.db.read() as session:
        states = [r.state for r in session.execute(select(Run)).scalars()]
    return bool(states) and all(s in ("succeeded", "rolled_back", "failed", "aborted") for s in states)


def test_kubernetes_down(make_bot: Any, kube: FakeKubernetes) -> None:
    """The Kubernetes API answers 503: Running is unavailable with the reason; the rest is there."""
    bot = make_bot()
    kube.error_next(100, status=503)
    text = status(bot)
    running = line(text, "Running")
    assert running.startswith("Running: unavailable: kubernetes: deployment trading-prod/trading-bot-swarm")
    assert "503" in running
    assert_trading_ok(text)
    assert_kpis_ok(text)


def test_kubernetes_hanging(make_bot: Any, kube: FakeKubernetes) -> None:
    """The Kubernetes API holds its answers longer than the deadline: Running says it did not answer in
    time; a second /status while it still hangs joins the call in flight instead of asking again."""
    bot = make_bot()
    kube.delay_next(100, seconds=HANG, method="GET")
    text = status(bot)
    assert line(text, "Running") == f"Running: unavailable: kubernetes did not answer within {DEADLINE:g} s"
    assert_trading_ok(text)
    assert_kpis_ok(text)
    again = status(bot)
    assert line(again, "Running").startswith("Running: unavailable: kubernetes did not answer")
    reads = kube.requests_matching(lambda r: r.method == "GET" and r.path.endswith(f"/deployments/{DEPLOYMENT}"))
    assert len(reads) == 1  # the hung read was joined, not repeated


def test_trading_api_down(make_bot: Any, trading: FakeTradingApi) -> None:
    """The trading API answers 503 to everything: trading, maintenance and health are unavailable with the
    reason; Kubernetes and the KPIs are there."""
    bot = make_bot()
    trading.set_mode("fail", status=503)
    text = status(bot)
    for label in ("Trading", "Maintenance", "Health"):
        part = line(text, label)
        assert part.startswith(f"{label}: unavailable: trading API: GET") and "503" in part
    assert_kube_ok(text)
    assert_kpis_ok(text)


def test_trading_api_hanging(make_bot: Any, trading: FakeTradingApi) -> None:
    """The trading API holds every answer: its parts say it did not answer in time; the rest is there."""
    bot = make_bot()
    trading.set_mode("hang", seconds=HANG)
    try:
        text = status(bot)
    finally:
        trading.set_mode("ok")
    for label in ("Trading", "Maintenance", "Health"):
        assert line(text, label) == f"{label}: unavailable: trading API did not answer within {DEADLINE:g} s"
    assert_kube_ok(text)
    assert_kpis_ok(text)


def test_trading_api_lying_about_a_stop_shows_bots_still_trading(make_bot: Any, trading: FakeTradingApi) -> None:
    """An API that answered 200 to a stop but kept trading: /status shows what it reports, bots trading."""
    bot = make_bot()
    trading.set_mode("lie")
    from integrations.trading_api import TradingApiClient

    with TradingApiClient(trading.base_url, DEFAULT_API_KEY) as client:
        client.stop("incident", mode="emergency")
    assert_trading_ok(status(bot))


def test_prometheus_down(make_bot: Any) -> None:
    """Nothing listens where Prometheus should be: the KPIs are unavailable, once, with the reason."""
    bot = make_bot(prometheus_url=f"http://127.0.0.1:{free_port()}")
    text = status(bot)
    kpis = line(text, "KPIs")
    assert kpis.startswith("KPIs: unavailable: prometheus") and "requests" not in kpis
    assert_kube_ok(text)
    assert_trading_ok(text)


def test_prometheus_hanging(make_bot: Any, prometheus: PrometheusServer) -> None:
    """The real Prometheus is frozen (SIGSTOP): the KPIs say it did not answer in time; the rest is there."""
    bot = make_bot()
    assert prometheus.process is not None
    os.kill(prometheus.process.pid, signal.SIGSTOP)
    try:
        text = status(bot)
    finally:
        os.kill(prometheus.process.pid, signal.SIGCONT)
    assert line(text, "KPIs") == f"KPIs: unavailable: prometheus did not answer within {DEADLINE:g} s"
    assert_kube_ok(text)
    assert_trading_ok(text)


def test_everything_hanging_still_answers_with_the_database_parts(make_bot: Any, kube: FakeKubernetes,
                                                                  trading: FakeTradingApi,
                                                                  prometheus: PrometheusServer) -> None:
    """Every backend hangs at once: each part is unavailable, the lock and runs (database) are still shown,
    and the command is audited as ok."""
    bot = make_bot()
    kube.delay_next(100, seconds=HANG, method="GET")
    trading.set_mode("hang", seconds=HANG)
    assert prometheus.process is not None
    os.kill(prometheus.process.pid, signal.SIGSTOP)
    try:
        text = status(bot)
    finally:
        os.kill(prometheus.process.pid, signal.SIGCONT)
        trading.set_mode("ok")
    for label in ("Running", "Trading", "Maintenance", "Health", "KPIs"):
        assert "unavailable:" in line(text, label)
    assert "Lock: free" in text and "Last runs: none" in text
    bot.settle()
    with bot.container.db.read() as session:
        record = session.execute(select(AuditRecord).where(AuditRecord.action == "command.status")).scalars().one()
    assert record.outcome == "ok" and record.environment == "production"


def test_status_shows_lock_and_active_run_with_its_step(make_bot: Any, kube: FakeKubernetes) -> None:
    """A rollout stuck in progress: /status names the lock holder, the run, its step, and the rollout
    (Running: rolling out) read from the stand-in."""
    bot = make_bot()
    kube.fail_rollouts(DEPLOYMENT, image=f"{IMAGE}:v2.4")
    assert bot.command("/deploy", "v2.4 --env production --reason stuck", ALICE, name="d",
                       channel="C0PRODDEP1").status_code == 200
    deadline = time.monotonic() + 20
    while True:
        text = status(bot)
        if "step 1/1: Roll out" in text and "rolling out" in line(text, "Running"):
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert "`production` is locked by <@U0ALICE01> for run `r-" in text
    assert "v2.4 (rolling) — 🔄 Running, requested by <@U0ALICE01> — step 1/1: Roll out" in text
    assert "`v2.4`" in line(text, "Running")


def test_viewer_without_access_is_refused_and_audited(make_bot: Any) -> None:
    """Someone with no role anywhere gets the refusal (ephemeral) and an audit record."""
    bot = make_bot()
    resp = bot.command("/swarm-status", "--env production", "U0NOBODY9", name="n", channel="C0PRODDEP1")
    body = resp.json()
    assert body["response_type"] == "ephemeral" and "viewer" in body["text"]
    bot.settle()
    with bot.container.db.read() as session:
        outcomes = [r.outcome for r in session.execute(select(AuditRecord)).scalars()]
    assert outcomes == ["denied"]


# --- App Home -------------------------------------------------------------------------------------------
def open_home(bot: RunningBot, user: str, event_id: str) -> dict[str, Any]:
    body = event_body({"type": "app_home_opened", "user": user, "tab": "home", "event_ts": "1.2"},
                      event_id=event_id)
    before = len(bot.fake.calls_to("views.publish"))
    assert bot.post(body, signed_headers(body, SECRET, content_type="application/json")).status_code == 200
    call = bot.fake.wait_for("views.publish", count=before + 1, timeout=WAIT)[-1]
    view = call.params["view"]
    return json.loads(view) if isinstance(view, str) else view


def buttons(view: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["text"]["text"], e["action_id"], e["value"]) for b in view["blocks"] if b["type"] == "actions"
            for e in b["elements"]]


def test_home_shows_live_status_and_the_buttons_the_viewer_may_use(make_bot: Any, kube: FakeKubernetes) -> None:
    """erin (operator in production) sees the live production status with Stop trading; alice (deployer)
    sees Roll back; dave (viewer) sees the status and no buttons. A hanging backend is unavailable there too."""
    bot = make_bot()
    kube.delay_next(100, seconds=HANG, method="GET")
    erin = open_home(bot, ERIN, "Ev0HOME01")
    text = json.dumps(erin)
    assert "Running: unavailable: kubernetes did not answer" in text
    assert "Trading: :large_green_circle: trading" in text and "order success 99.80 %" in text
    assert ("Stop trading", ActionId.stop_trading, encode_value({"env": "production"})) in buttons(erin)
    assert all(label != "Roll back" for label, _, _ in buttons(erin))
    alice = open_home(bot, ALICE, "Ev0HOME02")
    assert {(label, json.loads(value)["env"]) for label, _, value in buttons(alice)} >= {("Roll back", "production")}
    dave = open_home(bot, DAVE, "Ev0HOME03")
    assert "*production*" in json.dumps(dave) and buttons(dave) == []


def test_home_stop_trading_button_stops_trading_answers_in_the_dm_and_is_audited(make_bot: Any) -> None:
    """A click on Stop trading in the Home tab (no channel, no response_url) is authorized, starts the same
    run as /stop-trading (answered in the app's DM), and is audited; a viewer's click is refused."""
    bot = make_bot()
    value = encode_value({"env": "production"})

    def click(user: str) -> None:
        payload = {"type": "block_actions", "user": {"id": user, "username": "x"}, "api_app_id": "A0TEST",
                   "team": {"id": "T0TEST"}, "container": {"type": "view", "view_id": "V1"},
                   "trigger_id": f"{user}.{time.time()}", "view": {"id": "V1", "type": "home"},
                   "actions": [{"type": "button", "action_id": ActionId.stop_trading, "block_id": "home:production",
                                "value": value, "action_ts": f"{time.time():.6f}"}]}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        assert bot.post(body).status_code == 200

    click(ERIN)
    bot.settle()
    assert any("Stopping trading in production (graceful)" in m.get("text", "")
               for m in bot.fake.messages_in(ERIN))
    with bot.container.db.read() as session:
        runs = [r.kind for r in session.execute(select(Run)).scalars()]
    assert runs == ["stop_trading"]
    click(DAVE)
    bot.settle()
    with bot.container.db.read() as session:
        rows = [(r.actor_id, r.outcome, r.environment) for r in session.execute(
            select(AuditRecord).where(AuditRecord.action == "action.stop_trading.start")).scalars()]
    assert rows == [(ERIN, "ok", "production"), (DAVE, "denied", "production")]


def test_refresh_home_publishes_for_each_user(make_bot: Any) -> None:
    """refresh_home(core, users) publishes a fresh Home tab to each (what the engine calls on a run change)."""
    from commands.home import refresh_home

    bot = make_bot()
    assert refresh_home(bot.container.core, [ERIN, DAVE]) == 2
    bot.fake.wait_for("views.publish", count=2, timeout=WAIT)
    published = {c.params["user_id"] for c in bot.fake.calls_to("views.publish")}
    assert published == {ERIN, DAVE}


# --- the reads behind it -----------------------------------------------------------------------------------
def test_kubernetes_workload_status_after_a_rollout_and_a_rollback(kube: FakeKubernetes) -> None:
    """workload_status reads image, revision, rollout, ready/desired; after going back to the old version
    (its old ReplicaSet comes back as revision 3) `since` is the rollout's time, not that ReplicaSet's birth."""
    cluster = cluster_from_target(KubernetesTarget(host=kube.url), timeout=5)
    first = cluster.workload_status(REF)
    assert (first.tag, first.revision, first.ready, first.desired) == ("v2.2.0", 1, 4, 4)
    assert first.rollout.complete and first.since is not None
    cluster.set_image(REF, f"{IMAGE}:v2.3")
    kube.until(lambda: cluster.workload_status(REF).rollout.complete)
    second = cluster.workload_status(REF)
    assert (second.tag, second.revision) == ("v2.3", 2) and second.since >= first.since
    old_rs_born = min(datetime.fromisoformat(rs["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                      for rs in kube.replicasets(NAMESPACE, DEPLOYMENT))
    while int(time.time()) <= int(old_rs_born.timestamp()):  # the API's timestamps have whole seconds
        time.sleep(0.05)
    cluster.set_image(REF, f"{IMAGE}:v2.2.0")
    kube.until(lambda: cluster.workload_status(REF).rollout.complete)
    third = cluster.workload_status(REF)
    assert (third.tag, third.revision) == ("v2.2.0", 3)
    assert third.since > old_rs_born and third.since_source.startswith("rollout")


def test_kubernetes_workload_status_errors_are_from_the_tree(kube: FakeKubernetes) -> None:
    """A 503 while reading is BackendUnavailable (transient), as for every other call."""
    cluster = cluster_from_target(KubernetesTarget(host=kube.url), timeout=5)
    kube.error_next(1, status=503)
    with pytest.raises(BackendUnavailable):
        cluster.workload_status(REF)


def test_kubernetes_workload_status_without_replicaset_access(kube: FakeKubernetes) -> None:
    """The Role has no `list` on replicasets (least privilege): the image, rollout and revision come from the
    Deployment, `since` from its Progressing condition, and no ReplicaSet is ever read."""
    cluster = cluster_from_target(KubernetesTarget(host=kube.url), timeout=5)
    status = cluster.workload_status(REF)
    assert (status.tag, status.revision, status.ready, status.desired) == ("v2.2.0", 1, 4, 4)
    assert status.since is not None and status.since_source.startswith("rollout (")
    assert not [r for r in kube.requests if "/replicasets" in r.path]


def test_simulated_workload_status_follows_a_rollout() -> None:
    """The simulated cluster reports rolling out, then complete with the new tag and revision."""
    now = [0.0]
    cluster = SimCluster(rollout_seconds=1.0, clock=lambda: now[0])
    cluster.add_deployment(NAMESPACE, DEPLOYMENT, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
    cluster.set_image(REF, f"{IMAGE}:v2.3")
    rolling = cluster.workload_status(REF)
    assert rolling.tag == "v2.3" and not rolling.rollout.complete and rolling.ready < 4
    now[0] = 2.0
    done = cluster.workload_status(REF)
    assert done.rollout.complete and (done.ready, done.desired, done.revision) == (4, 4, 2)
    assert done.since is not None and done.since.tzinfo is UTC


def test_simulated_trading_modes() -> None:
    """SimTrading: graceful stop keeps positions; lie accepts a stop and keeps trading; fail raises
    BackendUnavailable; hang waits hang_seconds then raises, and "ok" releases it."""
    sim = SimTrading(hang_seconds=0.2)
    sim.stop("x")
    after = sim.status()
    assert (after.trading, after.open_orders, after.open_positions, after.halt) == (False, 0, 7, "graceful")
    sim.start(1.0)
    sim.set_mode("lie")
    sim.stop("incident", mode="emergency")
    assert sim.status().trading and sim.status().open_orders == 20 and sim.stop_modes == ["graceful", "emergency"]
    sim.set_mode("fail")
    with pytest.raises(BackendUnavailable, match="503"):
        sim.health_detailed()
    sim.set_mode("hang")
    with pytest.raises(BackendUnavailable, match="timed out"):
        sim.status()
    sim.set_mode("ok")
    assert sim.health_detailed().healthy
    with pytest.raises(ValueError, match="ok, fail, hang, lie"):
        sim.set_mode("sleep")


def test_console_sim_trading_hang_makes_status_say_unavailable(tmp_path: Path) -> None:
    """`sim trading hang` in the console: /status still answers, trading unavailable, the rest simulated."""
    import io

    from bot.console import run_console
    from bot.settings import Settings

    settings = Settings(config=REPO / "chatops.example.yml", database_url=f"sqlite:///{tmp_path}/c.db")
    out = io.StringIO()
    code = run_console(settings, script=["sim trading hang", "/status --env staging", "sim trading ok"], out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "Trading: unavailable: trading API did not answer within 2 s" in text
    assert "Running: `v2.2.0`" in text and "KPIs: requests 100.0/s" in text


@pytest.mark.parametrize(("image", "tag"), [(f"{IMAGE}:v2.3", "v2.3"), ("reg:5000/app:v1", "v1"),
                                            ("reg:5000/app", None), ("app@sha256:abc", "sha256:abc")])
def test_image_tag(image: str, tag: str | None) -> None:
    """The version part of an image reference (a registry port is not a tag)."""
    assert image_tag(image) == tag


def test_kpi_queries_are_validated_at_config_time(example_config: Any) -> None:
    """A KPI query using {version} (there is none in /status) or an unbalanced bracket is a config error."""
    data = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    data["environments"]["staging"]["status"] = {"kpis": [
        {"name": "bad", "query": 'sum(rate(x{version="{version}"}[5m]))'},
        {"name": "worse", "query": "sum(rate(x[5m])"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    problems = "\n".join(info.value.problems)
    assert "kpis.0.query: only {namespace} and {deployment} can be used here, not {version}" in problems
    assert "kpis.1.query: unclosed bracket" in problems
    assert [k.name for k in StatusSettings().effective_kpis()] == ["request_rate", "error_rate", "p95_latency_ms",
                                                                  "order_success"]


def test_read_runs_on_sqlite_and_postgresql(database: Any) -> None:
    """read_runs: the live lock (an expired one is free), the active run with the step it is at, and the
    last three finished runs newest first, dry runs and other environments left out."""
    from datetime import timedelta

    from bot.core.status import read_runs
    from bot.persistence.models import EnvLock, RunStep
    from bot.timeutil import utcnow

    now = utcnow()

    def run(run_id: str, state: str, minutes_ago: int, env: str = "production", dry: bool = False) -> Run:
        at = now - timedelta(minutes=minutes_ago)
        return Run(id=run_id, kind="deploy", environment=env, subject={
                       "v": 1, "version": f"v{minutes_ago}", "image": f"{IMAGE}:x", "previous_image": None,
                       "strategy": "rolling"}, dry_run=dry, requested_by=ALICE, requested_name="alice",
                         channel="C0PRODDEP1", plan={}, plan_hash="0" * 64, approvals_required=0, state=state,
                         created_at=at, finished_at=None if state == "running" else at, outcome=None,
                         correlation_id=run_id)

    with database.transaction() as session:
        session.add_all([run("r-old", "succeeded", 50), run("r-a", "rolled_back", 40), run("r-b", "failed", 30),
                         run("r-c", "aborted", 20), run("r-dry", "dry_run", 10, dry=True),
                         run("r-stg", "succeeded", 5, env="staging"), run("r-live", "running", 1)])
        session.add_all([RunStep(run_id="r-live", idx=i, phase="main", kind="x", name=f"step {i}", status=status,
                                 attempts=0, data={}) for i, status in enumerate(["done", "running", "pending"])])
        session.add(EnvLock(environment="production", kind="run", run_id="r-live", held_by=ALICE, held_by_name="alice",
                            reason="deploy", acquired_at=now, expires_at=now + timedelta(hours=1)))
        session.add(EnvLock(environment="staging", kind="freeze", run_id=None, held_by=ALICE, held_by_name="alice",
                            reason="old", acquired_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1)))
    with database.read() as session:
        prod, staging = read_runs(session, "production"), read_runs(session, "staging")
    assert prod.lock is not None and prod.lock.run_id == "r-live" and staging.lock is None
    assert [(r.id, r.step, r.step_no, r.steps) for r in prod.active] == [("r-live", "step 1", 2, 3)]
    assert [r.id for r in prod.recent] == ["r-c", "r-b", "r-a"]
    assert [r.id for r in staging.recent] == ["r-stg"] and staging.active == []


def test_a_hanging_backend_does_not_hold_the_database(make_bot: Any, kube: FakeKubernetes, tmp_path: Path) -> None:
    """While the status waits for a hung Kubernetes read, the database stays writable: on SQLite every
    transaction takes the write lock, so the runs are read in a session closed before the wait. (The
    deadline is raised to 10 s here so that the wait lasts exactly as long as the hang.)"""
    import dataclasses
    import sqlite3
    import threading

    from bot.core.status import FLIGHTS, environment_statuses

    bot = make_bot()
    core = bot.container.core
    prod = core.config.environments["production"].model_copy(update={"status": StatusSettings(timeout_seconds=10)})
    patient = dataclasses.replace(core, config=core.config.model_copy(
        update={"environments": {**core.config.environments, "production": prod}}))
    kube.delay_next(100, seconds=3.0, method="GET")
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.extend(environment_statuses(patient, ["production"])),
                              daemon=True)
    began = threading.Event()  # the worker opened its database transaction (the runs and locks read)

    def on_begin(_conn: Any) -> None:
        if threading.get_ident() == worker.ident:
            began.set()

    event.listen(core.db.engine, "begin", on_begin)
    try:
        worker.start()
        assert began.wait(WAIT)
    finally:
        event.remove(core.db.engine, "begin", on_begin)
    wrote_while_kubernetes_hung = False
    conn = sqlite3.connect(str(tmp_path / "status.db"), timeout=0, isolation_level=None)
    try:
        while worker.is_alive() and not wrote_while_kubernetes_hung:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                wrote_while_kubernetes_hung = ("production", "kubernetes", "") in FLIGHTS.pending()
            except sqlite3.OperationalError:  # locked just now (a short read or write)
                pass
            time.sleep(0.01)
    finally:
        conn.close()
    worker.join(WAIT)
    assert wrote_while_kubernetes_hung
    assert result[0].workload.tag == "v2.2.0"  # the answer came, after the hang, within the 10 s deadline
