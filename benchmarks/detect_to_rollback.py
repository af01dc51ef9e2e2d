"""How fast does a bad canary get rolled back? Real Prometheus, analysis every 5 s.

Each run: the real bot (uvicorn, real sockets) deploys a new version to production as a canary against
the Kubernetes API stand-in; once the canary Deployment is up, the exporter flips the canary to 20 %
errors; we measure from that flip to the rollback's DELETE of the canary Deployment reaching the
Kubernetes API. Baseline, measured in the same run: how long Prometheus itself takes to show an error
rate above the 5 % threshold after the flip (no bot can detect it sooner).

Last line: `detect_to_rollback_s=<median> interval_s=5`. Target: <= interval + 5 s.
Usage: .venv/bin/python benchmarks/detect_to_rollback.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from integrations.prometheus import PrometheusMetrics  # noqa: E402
from tests.bot_server import start_bot  # noqa: E402
from tests.harness.slack_api import FakeSlack  # noqa: E402
from tests.real_world import ALICE, DEPLOY_CHANNEL, DEPLOYMENT, NAMESPACE, real_world, wait_until  # noqa: E402

INTERVAL = 5.0
THRESHOLD = 0.05


def error_rate_query() -> str:
    sel = f'namespace="{NAMESPACE}",version="canary"'
    return f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[5s])) / sum(rate(http_requests_total{{{sel}}}[5s]))'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    detect: list[float] = []
    floor: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, real_world(Path(tmp), steps=[50, 100], interval=INTERVAL,
                                                          approvals=0) as world, FakeSlack() as fake:
        bot = start_bot(fake, f"sqlite:///{tmp}/bench.db", config=world.config)
        metrics = PrometheusMetrics(world.prometheus.url)
        try:
            for run in range(args.runs):
                world.exporter.set(version="canary", error_rate=0.002)
                wait_until(lambda: (metrics.query(error_rate_query()) or 0) < THRESHOLD / 5, 30, "healthy numbers")
                before = len(world.kube.requests)
                bot.command("/deploy", f"v2.{4 + run} --env production --canary", ALICE, name=f"r{run}",
                            channel=DEPLOY_CHANNEL)
                wait_until(world.has_canary, 60, "the canary Deployment")
                time.sleep(run * 0.9 % INTERVAL)  # spread the flip over the analysis cycle
                flip = world.exporter.set(version="canary", error_rate=0.2)
                canary_path = f"/deployments/{DEPLOYMENT}-canary"
                seen_floor = None
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if seen_floor is None and (metrics.query(error_rate_query()) or 0) > THRESHOLD:
                        seen_floor = time.monotonic() - flip.monotonic
                    deleted = [r for r in world.kube.requests[before:]
                               if r.method == "DELETE" and r.path.endswith(canary_path)
                               and r.monotonic > flip.monotonic]
                    if deleted:
                        break
                    time.sleep(0.05)
                else:
                    raise SystemExit(f"run {run}: no rollback within 60 s")
                took = deleted[0].monotonic - flip.monotonic
                detect.append(took)
                floor.append(seen_floor if seen_floor is not None else took)
                print(f"run {run + 1}: flip -> rollback request {took:.2f}s "
                      f"(Prometheus showed >5% after {floor[-1]:.2f}s)", flush=True)
                wait_until(lambda: "Rolled back" in str(fake.messages_in(DEPLOY_CHANNEL)[-1]) or not world.has_canary(),
                           60, "the rollback to finish")
                bot.settle()
                wait_until(lambda: not bot.container.executor.busy(), 60, "the run to end")
        finally:
            metrics.close()
            bot.stop()
    med, base = statistics.median(detect), statistics.median(floor)
    print(f"runs={len(detect)} detect median={med:.2f}s min={min(detect):.2f}s max={max(detect):.2f}s")
    print(f"baseline (Prometheus shows the breach) median={base:.2f}s; bot overhead over baseline "
          f"{med - base:.2f}s = {med / base:.2f}x baseline; ratio to interval {med / INTERVAL:.2f}")
    print(f"target <= interval + 5 s = {INTERVAL + 5:.0f}s: {'met' if med <= INTERVAL + 5 else 'MISSED'}")
    print(f"detect_to_rollback_s={med:.2f} interval_s={INTERVAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
