"""How long does a rollback take, per strategy, against the runbook's 15 minutes (900 s)?

The real bot (uvicorn, real sockets, SQLite) with production pointed at the Kubernetes API stand-in
(official client; its controller rolls a Deployment of `--replicas` pods out over `--rollout-ticks` ticks
of 50 ms, 1 s by default) and the
trading API stand-in, on 127.0.0.1. For each strategy — rolling, canary with the replicas router, canary
with the Istio router, blue-green — each run deploys a new version, waits until the change is half
done (rolling: the new image patched; canary: 50 % of traffic on the canary; blue-green: the Service
switched to green), then an approver clicks *Abort*, and the run rolls back. Measured:

* `rollback`: from the engine's `rollback.start` record until the run is `rolled_back` — the
  compensation proper: restore by strategy, health, maintenance off, trading resumed gradually;
* `abort → rolled back`: from the click until the run ended (adds noticing the abort in the step).

And `/rollback` (runbook 8.2 as its own run: stop trading, maintenance on, roll back, verify,
maintenance off, resume trading gradually) after a finished deploy, from the command to `succeeded`.

Baseline in the same run: the least any rollback that re-rolls pods can take — the previous image set
through the bot's own Kubernetes client and waited for until the rollout completes. The trading
resume's pause between stages is `--pause-s` (default 1 s; production configs use 60 s, which adds
two minutes to every figure that resumes trading).

Last line: `rolling_s=… canary_replicas_s=… canary_istio_s=… blue_green_s=… slash_rollback_s=… target_s=900`
(medians of the rollback phase; `/rollback` command → succeeded).
Usage: .venv/bin/python benchmarks/rollback_duration.py [--runs N] [--rollout-ticks T] [--pause-s S]
"""

from __future__ import annotations

import argparse
import json
import os
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
from sqlalchemy import select  # noqa: E402

from bot.core.ports import WorkloadRef  # noqa: E402
from bot.persistence.models import AuditRecord, Run, RunStep  # noqa: E402
from bot.timeutil import aware  # noqa: E402
from tests.bot_server import start_bot  # noqa: E402
from tests.harness.k8s_api import FakeKubernetes  # noqa: E402
from tests.harness.slack_api import FakeSlack  # noqa: E402
from tests.harness.trading_api import DEFAULT_API_KEY, FakeTradingApi  # noqa: E402
from tests.test_deploy_support import Deployer  # noqa: E402

NAMESPACE, DEPLOYMENT = "trading-prod", "trading-bot-swarm"
IMAGE = "registry.example.com/trading-bot-swarm"
KEY_ENV = "CHATOPS_BENCH_TRADING_KEY"
ALICE, BOB, CHANNEL = "U0ALICE01", "U0BOB0002", "C0PRODDEP1"
TARGET = 900.0
STRATEGIES = {"rolling": "", "canary (replicas)": "--canary", "canary (istio)": "--canary",
              "blue-green": "--blue-green"}


def write_config(path: Path, kube_url: str, trading_url: str, *, router: str, pause: float) -> Path:
    data: dict[str, Any] = yaml.safe_load(c.EXAMPLE_CONFIG.read_text())
    prod = data["environments"]["production"]
    prod.pop("jobs", None)
    both = ["rolling", "blue-green"]
    prod.update(kubernetes={"host": kube_url}, trading_api={"base_url": trading_url, "api_key_env": KEY_ENV},
                approvals_required=0, rollback_approvals_required=0, monitor_seconds=0,
                canary={"router": router, "steps": [50, 100], "interval_seconds": 5},
                blue_green={"monitor_seconds": 30},
                procedure=[{"kind": "precheck"},
                           {"kind": "trading_stop", "name": "Stop trading", "strategies": both},
                           {"kind": "maintenance_on", "name": "Maintenance on", "strategies": both},
                           {"kind": "rollout", "name": "Roll out"},
                           {"kind": "health", "name": "Health checks"},
                           {"kind": "maintenance_off", "name": "Maintenance off", "strategies": both},
                           {"kind": "trading_resume", "name": "Resume trading", "strategies": both,
                            "fractions": [0.25, 0.5, 1.0], "pause_seconds": pause}])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Bench:
    def __init__(self, d: Deployer, kube: FakeKubernetes) -> None:
        self.d, self.kube, self.n = d, kube, 0
        backends = d.container.core.env_backends
        assert backends is not None
        self.cluster = backends("production").cluster
        self.ref = WorkloadRef(NAMESPACE, DEPLOYMENT, DEPLOYMENT)

    def latest(self) -> Run:
        with self.d.container.db.read() as session:
            run = session.execute(select(Run).order_by(Run.created_at.desc())).scalars().first()
            assert run is not None
            return run

    def step_data(self, run_id: str, kind: str) -> dict[str, Any]:
        with self.d.container.db.read() as session:
            row = session.execute(select(RunStep).where(RunStep.run_id == run_id, RunStep.kind == kind,
                                                        RunStep.phase == "main")).scalar_one()
            return dict(row.data or {})

    def rollback_started(self, run_id: str) -> float:
        with self.d.container.db.read() as session:
            rows = session.execute(select(AuditRecord).where(AuditRecord.action.like("%.rollback.start"))
                                   .order_by(AuditRecord.seq)).scalars().all()
            for row in rows:
                if json.loads(row.args).get("run") == run_id:
                    return _epoch(row.ts)
        raise SystemExit(f"run {run_id} never started its rollback")

    def finish(self, run_id: str, timeout: float = 300) -> Run:
        c_wait(lambda: self.d.run(run_id).state in ("succeeded", "rolled_back", "failed"), timeout, "the run")
        return self.d.run(run_id)

    def command(self, command: str, text: str, user: str) -> str:
        self.n += 1
        name = f"b{self.n}"
        resp = self.d.bot.command(command, text, user, name=name, channel=CHANNEL)
        assert resp.status_code == 200, resp.text
        return str(self.d.fake.wait_for_response(name, timeout=30)[0].body.get("text", ""))

    def deploy(self, version: str, flags: str) -> str:
        reply = self.command("/deploy", f"{version} --env production {flags}".strip(), ALICE)
        assert "run `" in reply, reply
        return self.latest().id

    def baseline(self, image: str) -> float:
        """Set `image` and wait for the rollout, through the bot's client: seconds."""
        t0 = time.perf_counter()
        self.cluster.set_image(self.ref, image)
        while not self.cluster.rollout_status(self.ref).complete:
            time.sleep(0.02)
        return time.perf_counter() - t0


def _epoch(ts: Any) -> float:
    from datetime import datetime

    value = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    return float(aware(value).timestamp())  # type: ignore[union-attr]


def c_wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def half_done(bench: Bench, run_id: str, strategy: str) -> Callable[[], bool]:
    def check() -> bool:
        data = bench.step_data(run_id, "rollout")
        if strategy == "rolling":
            return bool(data.get("patched"))
        if strategy.startswith("canary"):
            return data.get("applied") == 50
        return bool(data.get("switched"))
    return check


def measure(strategy: str, args: argparse.Namespace, tmp: Path, out: dict[str, list[float]]) -> None:
    router = "istio" if "istio" in strategy else "replicas"
    with FakeKubernetes(rollout_ticks=args.rollout_ticks) as kube, FakeTradingApi() as trading, FakeSlack() as fake:
        kube.add_deployment(NAMESPACE, DEPLOYMENT, f"{IMAGE}:v2.2.0", replicas=args.replicas)
        kube.add_service(NAMESPACE, DEPLOYMENT, {"app": DEPLOYMENT})
        kube.add_virtual_service(NAMESPACE, DEPLOYMENT, DEPLOYMENT)
        config = write_config(tmp / f"{router}.yml", kube.url, trading.base_url, router=router, pause=args.pause_s)
        d = Deployer(start_bot(fake, f"sqlite:///{tmp}/{strategy.replace(' ', '_')}.db", config=config))
        bench = Bench(d, kube)
        try:
            version = 3
            for _ in range(args.runs):
                version += 1
                run_id = bench.deploy(f"v2.{version}", STRATEGIES[strategy])
                c_wait(half_done(bench, run_id, strategy), 120, f"the {strategy} deploy half done")
                clicked = time.time()
                reply = d.click(run_id, "Abort", BOB)
                assert "Aborting" in reply or "abort" in reply.lower(), reply
                run = bench.finish(run_id)
                assert run.state == "rolled_back", (strategy, run.state, run.outcome)
                ended = _epoch(run.finished_at)
                out[strategy].append(ended - bench.rollback_started(run_id))
                out[f"{strategy} abort"].append(ended - clicked)
                out["baseline"].append(bench.baseline(f"{IMAGE}:v2.{version}"))
                out["baseline"].append(bench.baseline(f"{IMAGE}:v2.2.0"))
            # /rollback after a finished deploy of this strategy (runbook 8.2 as its own run)
            version += 1
            run_id = bench.deploy(f"v2.{version}", STRATEGIES[strategy])
            assert bench.finish(run_id).state == "succeeded"
            started = time.time()
            reply = bench.command("/rollback", "--env production --to v2.2.0 --reason bench", ALICE)
            assert "Rolling production back" in reply, reply
            run = bench.finish(bench.latest().id)
            assert run.state == "succeeded", run.outcome
            out["/rollback"].append(_epoch(run.finished_at) - started)
        finally:
            d.stop()
        print(f"{strategy}: rollback p50 {c.median(out[strategy]):.2f} s, abort → rolled back p50 "
              f"{c.median(out[f'{strategy} abort']):.1f} s; /rollback after it {out['/rollback'][-1]:.1f} s",
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="aborted deploys per strategy (default 3)")
    parser.add_argument("--rollout-ticks", type=int, default=20, help="stand-in ticks (50 ms) per rollout")
    parser.add_argument("--replicas", type=int, default=20, help="pods of the Deployment (default 20)")
    parser.add_argument("--pause-s", type=float, default=1.0, help="pause between trading resume stages")
    args = parser.parse_args()
    os.environ[KEY_ENV] = DEFAULT_API_KEY
    out: dict[str, list[float]] = {"baseline": [], "/rollback": []}
    for s in STRATEGIES:
        out[s], out[f"{s} abort"] = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            measure(strategy, args, Path(tmp), out)
    base = c.median(out["baseline"])
    print(f"stand-in rollout: {args.replicas} pods over {args.rollout_ticks} ticks of 50 ms; trading resume pause "
          f"{args.pause_s:g} s; {args.runs} aborted deploys per strategy")
    print(f"baseline (set the previous image and wait for the rollout, same client) p50 {base:.2f} s")
    for s in STRATEGIES:
        med = c.median(out[s])
        print(f"  {s:18} rollback p50 {med:6.2f} s  max {max(out[s]):6.2f} s  ({med / base:.1f}× baseline, "
              f"{med / TARGET:.1%} of the 900 s target)")
    slash = c.median(out["/rollback"])
    print(f"  /rollback (8.2)    command → succeeded p50 {slash:6.1f} s  max {max(out['/rollback']):6.1f} s "
          f"({slash / TARGET:.1%} of the 900 s target)")
    worst = max(max(v) for k, v in out.items() if k != "baseline")
    print(f"target every rollback <= 900 s: {'met' if worst <= TARGET else 'MISSED'} (worst {worst:.1f} s)")
    keys = {"rolling": "rolling_s", "canary (replicas)": "canary_replicas_s", "canary (istio)": "canary_istio_s",
            "blue-green": "blue_green_s"}
    print(" ".join(f"{keys[s]}={c.median(out[s]):.2f}" for s in STRATEGIES)
          + f" slash_rollback_s={slash:.1f} target_s=900")
    return 0


if __name__ == "__main__":
    sys.exit(main())
