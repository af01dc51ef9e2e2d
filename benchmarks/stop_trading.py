"""How fast does `/stop-trading` reach a verified halt, with the trading API healthy and with it lying?

The real bot (uvicorn, real sockets, SQLite) with production pointed at the Kubernetes API stand-in
(official client, simulated controller) and the trading API stand-in, on 127.0.0.1; the trading API
answers after `--api-ms` (default 50 ms per request). Measured per run, from just before the signed
`/stop-trading --env production` POST:

* **healthy**: the API halts on the stop. `halt` = from the trading API's answer to the stop (it has
  confirmed) until the run's `trading HALTED` post reaches the incident channel (the fake Slack): the
  bot's verification poll, the run's bookkeeping and the outbox. Also reported: command → post.
* **lying** (kill switch): the API answers the stop with 200 and keeps trading. `killswitch_halt` =
  command → the `trading HALTED by the kill switch` post, after `stop_verify_seconds` of failed
  verification, the scale-down to 0 and the wait for no pod left.

Baselines in the same run, through the same clients the bot uses: the stop call plus one status read
(the least a verified halt can take after the command), and `stop_verify_seconds` + a scale to 0 + the
wait for its pods (the least a kill switch can take).

Last line: `halt_s=<healthy p50> killswitch_halt_s=<lying p50>`.
Targets: halt <= 2 s after the API confirms; kill switch <= verify timeout + 5 s.
Usage: .venv/bin/python benchmarks/stop_trading.py [--runs N] [--api-ms MS] [--verify-s S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as c  # noqa: E402

from bot.core.ports import WorkloadRef  # noqa: E402
from tests.bot_server import RunningBot, start_bot  # noqa: E402
from tests.harness.k8s_api import FakeKubernetes  # noqa: E402
from tests.harness.slack_api import FakeSlack  # noqa: E402
from tests.harness.trading_api import DEFAULT_API_KEY, FakeTradingApi  # noqa: E402

NAMESPACE, DEPLOYMENT = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
KEY_ENV = "CHATOPS_BENCH_TRADING_KEY"
ERIN, INCIDENT = "U0ERIN005", "C0PRODINC1"
REPLICAS = 4


def write_config(path: Path, kube_url: str, trading_url: str, verify_s: float) -> Path:
    data: dict[str, Any] = yaml.safe_load(c.EXAMPLE_CONFIG.read_text())
    prod = data["environments"]["production"]
    prod.update(kubernetes={"host": kube_url}, trading_api={"base_url": trading_url, "api_key_env": KEY_ENV},
                stop_verify_seconds=verify_s)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Bench:
    def __init__(self, bot: RunningBot, fake: FakeSlack, kube: FakeKubernetes, trading: FakeTradingApi,
                 api_delay: float) -> None:
        self.bot, self.fake, self.kube, self.trading, self.n = bot, fake, kube, trading, 0
        self.api_delay = api_delay
        backends = bot.container.core.env_backends
        assert backends is not None
        self.backends = backends("production")
        self.wall_minus_mono = time.time() - time.monotonic()  # the trading stand-in records monotonic times

    def halted_post(self, after: float, marker: str, timeout: float = 60) -> float:
        """Wall time at which a post containing `marker` reached the incident channel after `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for call in self.fake.calls_to("chat.postMessage"):
                if call.at >= after and call.params.get("channel") == INCIDENT and marker in str(
                        call.params.get("text", "")):
                    return call.at
            time.sleep(0.01)
        raise SystemExit(f"no {marker!r} post in the incident channel within {timeout} s")

    def stop(self, marker: str) -> tuple[float, float]:
        """One /stop-trading: (wall time of the command, wall time of the HALTED post)."""
        self.n += 1
        started = time.time()
        response = self.bot.command("/stop-trading", "--env production --reason bench", ERIN, name=f"s{self.n}",
                                    channel="C0PRODDEP1")
        assert response.status_code == 200, response.text
        return started, self.halted_post(started, marker)

    def api_stop_answered(self, after: float) -> float:
        """Wall time of the trading stand-in's answer to the first stop after `after` (it answers at once
        after its delay: arrival + the configured delay is when the bot got the confirmation)."""
        calls = [x for x in list(self.trading.calls) if x.path == "/admin/trading/stop"
                 and x.at + self.wall_minus_mono >= after]
        assert calls, "the trading API was not asked to stop"
        return calls[0].at + self.wall_minus_mono + self.api_delay

    def reset(self) -> None:
        """Trading on again, the Deployment back at REPLICAS pods, no run active."""
        self.trading.set_mode("slow", seconds=self.api_delay)
        self.backends.trading.start(1.0)
        if self.backends.cluster.replicas(NAMESPACE, DEPLOYMENT) != REPLICAS:
            self.backends.cluster.scale(NAMESPACE, DEPLOYMENT, REPLICAS)
        ref = WorkloadRef(NAMESPACE, DEPLOYMENT, DEPLOYMENT)
        self.kube.until(lambda: self.backends.cluster.rollout_status(ref).complete, timeout=30)


def baseline_halt(bench: Bench) -> float:
    """The stop call and one status read through the bot's own trading client: seconds."""
    t0 = time.perf_counter()
    bench.backends.trading.stop("baseline", mode="graceful")
    status = bench.backends.trading.status()
    took = time.perf_counter() - t0
    assert not status.trading
    return took


def baseline_killswitch(bench: Bench, verify_s: float) -> float:
    """verify_s (the bot must give the API that long) + scale to 0 + wait for no pod, through the bot's
    cluster client: seconds."""
    ref = WorkloadRef(NAMESPACE, DEPLOYMENT, DEPLOYMENT)
    t0 = time.perf_counter()
    bench.backends.cluster.scale(NAMESPACE, DEPLOYMENT, 0)
    while True:
        st = bench.backends.cluster.rollout_status(ref)
        if not st.available and not st.desired:
            break
        time.sleep(0.05)
    return verify_s + time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="stops per phase (default 10)")
    parser.add_argument("--api-ms", type=float, default=50.0, help="trading stand-in delay per request")
    parser.add_argument("--verify-s", type=float, default=5.0, help="stop_verify_seconds (default 5)")
    args = parser.parse_args()
    os.environ[KEY_ENV] = DEFAULT_API_KEY
    halt_after_api: list[float] = []
    halt_total: list[float] = []
    kill_total: list[float] = []
    base_halt: list[float] = []
    base_kill: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, FakeKubernetes() as kube, FakeTradingApi() as trading, \
            FakeSlack() as fake:
        kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=REPLICAS)
        config = write_config(Path(tmp) / "chatops.yml", kube.url, trading.base_url, args.verify_s)
        bot = start_bot(fake, f"sqlite:///{tmp}/bench.db", config=config)
        bench = Bench(bot, fake, kube, trading, args.api_ms / 1000)
        trading.set_mode("slow", seconds=args.api_ms / 1000)
        try:
            for i in range(args.runs + 1):  # healthy API; the first is a warm-up
                bench.reset()
                started, posted = bench.stop("trading HALTED: ")
                confirmed = bench.api_stop_answered(started)
                if i:
                    halt_after_api.append(posted - confirmed)
                    halt_total.append(posted - started)
                bench.reset()
                base_halt.append(baseline_halt(bench))
            print(f"healthy API: halt after the API confirmed p50 {c.median(halt_after_api):.2f} s, max "
                  f"{max(halt_after_api):.2f} s; command → HALTED post p50 {c.median(halt_total):.2f} s "
                  f"(baseline stop + status p50 {c.median(base_halt):.3f} s)", flush=True)
            for _ in range(args.runs):  # the API lies: the kill switch
                bench.reset()
                trading.set_mode("lie")
                started, posted = bench.stop("trading HALTED by the kill switch")
                kill_total.append(posted - started)
                bench.reset()
                base_kill.append(baseline_killswitch(bench, args.verify_s))
            print(f"lying API: command → kill-switch HALTED post p50 {c.median(kill_total):.2f} s, max "
                  f"{max(kill_total):.2f} s (baseline verify + scale + pods gone p50 {c.median(base_kill):.2f} s)",
                  flush=True)
        finally:
            bot.stop()
    halt50, kill50 = c.median(halt_after_api), c.median(kill_total)
    print(f"trading API delay {args.api_ms:g} ms per request; stop_verify_seconds {args.verify_s:g}; "
          f"{args.runs} runs per phase")
    print(f"ratios: command→halt / baseline = {c.median(halt_total) / c.median(base_halt):.1f}; "
          f"kill switch / baseline = {kill50 / c.median(base_kill):.2f}")
    print(f"target halt <= 2 s after the API confirms: {'met' if max(halt_after_api) <= 2 else 'MISSED'} "
          f"(max {max(halt_after_api):.2f} s); target kill switch <= verify timeout + 5 s = "
          f"{args.verify_s + 5:g} s: {'met' if max(kill_total) <= args.verify_s + 5 else 'MISSED'} "
          f"(max {max(kill_total):.2f} s)")
    print(f"halt_s={halt50:.2f} killswitch_halt_s={kill50:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
