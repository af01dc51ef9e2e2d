"""How fast does `/status` answer, with every backend up and with one hanging?

The real bot (uvicorn, real sockets, SQLite) with production pointed at the Kubernetes API stand-in
(official client), a REAL Prometheus scraping an exporter, and the trading API stand-in, all on 127.0.0.1.
The stand-ins answer after a realistic delay (`--backend-ms`, default 100 ms per HTTP request), so that
doing the reads one after the other or all at once makes a difference. Measured: from just before the
signed `/swarm-status --env production` POST until its reply reaches the fake Slack's response_url.

* all up: `--runs` commands, one at a time;
* one hanging: `--runs` commands each with Kubernetes, the trading API and Prometheus (SIGSTOP) hanging
  in turn, for longer than the status deadline (2 s);
* baseline, in the same run: the same backend calls /status makes (workload status, trading status,
  detailed health, the four KPI queries) made one after the other through the same clients, and the
  slowest single one of them.

Last line: `status_p50_ms=<all up> status_hang_p99_ms=<one hanging> serial_p50_ms=<baseline>`.
Targets: hanging p99 < 3000 ms; all-up p50 <= the slowest single backend call (p50) + 50 ms.
Usage: .venv/bin/python benchmarks/status_latency.py [--runs N] [--backend-ms MS]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as c  # noqa: E402

from bot.config import default_kpis  # noqa: E402
from bot.core.analysis import render  # noqa: E402
from bot.core.ports import WorkloadRef  # noqa: E402
from bot.core.status import FLIGHTS  # noqa: E402
from tests.bot_server import RunningBot, start_bot  # noqa: E402
from tests.harness.exporter import MetricsExporter  # noqa: E402
from tests.harness.k8s_api import FakeKubernetes  # noqa: E402
from tests.harness.prometheus import PrometheusServer  # noqa: E402
from tests.harness.slack_api import FakeSlack  # noqa: E402
from tests.harness.trading_api import DEFAULT_API_KEY, FakeTradingApi  # noqa: E402

NAMESPACE, DEPLOYMENT = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
KEY_ENV = "CHATOPS_BENCH_TRADING_KEY"
DEADLINE = 2.0
HANG = 30.0  # longer than the deadline and than the clients' own timeouts (10 s, 5 s): a hang ends in an error
BOB = "U0BOB0002"


def write_config(path: Path, kube_url: str, prometheus_url: str, trading_url: str) -> Path:
    data: dict[str, Any] = yaml.safe_load(c.EXAMPLE_CONFIG.read_text())
    prod = data["environments"]["production"]
    prod.update(kubernetes={"host": kube_url}, prometheus={"url": prometheus_url},
                trading_api={"base_url": trading_url, "api_key_env": KEY_ENV},
                status={"timeout_seconds": DEADLINE})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Bench:
    def __init__(self, bot: RunningBot, fake: FakeSlack) -> None:
        self.bot, self.fake, self.n = bot, fake, 0

    def status_ms(self) -> tuple[float, str]:
        """One /status: ms from the POST to the reply at response_url, and the reply's text."""
        self.n += 1
        name = f"b{self.n}"
        started = time.time()
        response = self.bot.command("/swarm-status", "--env production", BOB, name=name, channel="C0PRODDEP1")
        assert response.status_code == 200, response.text
        reply = self.fake.wait_for_response(name, timeout=30)[0]
        return (reply.at - started) * 1000, str(reply.body.get("text", ""))


def serial_calls(bot: RunningBot) -> list[tuple[str, Callable[[], Any]]]:
    backends = bot.container.core.env_backends("production")
    ref = WorkloadRef(NAMESPACE, DEPLOYMENT, DEPLOYMENT)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("kubernetes.workload_status", lambda: backends.cluster.workload_status(ref)),
        ("trading.status", backends.trading.status),
        ("trading.health_detailed", backends.trading.health_detailed)]
    for kpi in default_kpis():
        query = render(kpi.query, {"namespace": NAMESPACE, "deployment": DEPLOYMENT})
        calls.append((f"prometheus.{kpi.name}", lambda q=query: backends.metrics.query(q)))
    return calls


def wait_flights(limit: float) -> None:
    deadline = time.monotonic() + limit
    while FLIGHTS.in_flight() and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="commands per phase (default 30)")
    parser.add_argument("--backend-ms", type=float, default=100.0, help="stand-in delay per HTTP request")
    args = parser.parse_args()
    delay = args.backend_ms / 1000
    os.environ[KEY_ENV] = DEFAULT_API_KEY
    up: list[float] = []
    hang: dict[str, list[float]] = {"kubernetes": [], "trading API": [], "prometheus": []}
    serial: list[float] = []
    slowest: list[float] = []
    per_call: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeKubernetes() as kube, FakeTradingApi() as trading, \
            MetricsExporter(namespace=NAMESPACE, versions=("stable",)) as exporter, \
            PrometheusServer([exporter.target]) as prom, FakeSlack() as fake:
        kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=4)
        config = write_config(Path(tmp) / "chatops.yml", kube.url, prom.url, trading.base_url)
        bot = start_bot(fake, f"sqlite:///{tmp}/bench.db", config=config)
        bench = Bench(bot, fake)
        calls = serial_calls(bot)

        def slow_kube() -> None:
            kube.delay_next(10**6, seconds=delay, method="GET")

        try:
            trading.set_mode("slow", seconds=delay)
            slow_kube()
            deadline = time.monotonic() + 30  # until Prometheus has two scrapes (a rate)
            while "requests no data" in (text := bench.status_ms()[1]) or "KPIs: unavailable" in text:
                if time.monotonic() > deadline:
                    raise SystemExit("Prometheus has no data after 30 s")
                time.sleep(0.5)
            for _ in range(3):  # warm-up
                bench.status_ms()
            for _ in range(args.runs):  # all up, alternating with the serial baseline
                took, text = bench.status_ms()
                assert "unavailable" not in text, text
                up.append(took)
                times = []
                for label, call in calls:
                    t0 = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - t0) * 1000)
                    per_call.setdefault(label, []).append(times[-1])
                serial.append(sum(times))
                slowest.append(max(times))
            for backend in hang:  # one hanging at a time, for a whole phase (its hung calls are joined)
                if backend == "kubernetes":
                    kube.clear_faults()  # the slow answers become hung ones
                    kube.delay_next(10**6, seconds=HANG, method="GET")
                elif backend == "trading API":
                    trading.set_mode("hang", seconds=HANG)
                else:
                    assert prom.process is not None
                    os.kill(prom.process.pid, signal.SIGSTOP)
                try:
                    for _ in range(args.runs):
                        took, text = bench.status_ms()
                        assert f"unavailable: {backend}" in text, (backend, text)
                        hang[backend].append(took)
                finally:
                    if backend == "kubernetes":
                        kube.clear_faults()
                        slow_kube()
                    elif backend == "trading API":
                        trading.set_mode("slow", seconds=delay)
                    elif prom.process is not None:
                        os.kill(prom.process.pid, signal.SIGCONT)
                wait_flights(HANG + 10)  # the next phase starts with no hung call still in flight
                print(f"{backend} hanging: p50 {c.median(hang[backend]):.0f} ms, "
                      f"p99 {c.percentile(hang[backend], 99):.0f} ms", flush=True)
        finally:
            if prom.process is not None and prom.process.poll() is None:
                os.kill(prom.process.pid, signal.SIGCONT)
            bot.stop()
    all_hang = [x for values in hang.values() for x in values]
    up50, hang99, serial50 = c.median(up), c.percentile(all_hang, 99), c.median(serial)
    slow50 = c.median(slowest)
    print(f"backend delay per HTTP request: {args.backend_ms:g} ms; status deadline {DEADLINE:g} s; "
          f"{args.runs} runs per phase")
    for label, values in per_call.items():
        print(f"  serial call {label}: p50 {statistics.median(values):.1f} ms")
    print(f"all up: p50 {up50:.0f} ms, p99 {c.percentile(up, 99):.0f} ms; serial baseline p50 {serial50:.0f} ms "
          f"(all-up / serial = {up50 / serial50:.2f}); slowest single call p50 {slow50:.0f} ms")
    print(f"one hanging: p50 {c.median(all_hang):.0f} ms, p99 {hang99:.0f} ms, max {max(all_hang):.0f} ms")
    print(f"target hanging p99 < 3000 ms: {'met' if hang99 < 3000 else 'MISSED'}; target all-up p50 <= slowest "
          f"call + 50 ms = {slow50 + 50:.0f} ms: {'met' if up50 <= slow50 + 50 else 'MISSED'}")
    print(f"status_p50_ms={up50:.0f} status_hang_p99_ms={hang99:.0f} serial_p50_ms={serial50:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
